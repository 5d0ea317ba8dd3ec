"""Losses of MSKdeX (Gu et al. 2023, Sec. 2.2, Eq. 1-5, and supplement Eq. 1-2).

Tensors: radiograph ``x`` (B, 1, H, W) in [0, 1]; DRR stacks (B, 3, N, H, W) in the
network's *scaled units* (physical value / per-channel scale constant, see
:mod:`MSKdeXTraining.modelio`), types in the order WVDRR, VDRR, MDRR. Every loss returns a
scalar averaged over the batch (the expectation E of the paper), so data-parallel averaging
over processes gives the same value as one process with the global batch.

Units of the OWIS loss: S is the image sum in scaled units, so ``S / (N H W)`` is a mean
pixel value in multiples of the training-set mean of the channel - O(1) whatever the image
size or the physical unit of the DRR type (paper: H W "served as temperatures").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .imaging.similarity import gradient_correlation

GAN_MODES = ("lsgan", "bce")


def gan_loss(logits: Sequence[torch.Tensor], real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of critic outputs (one logit map per scale), averaged over scales.

    ``lsgan`` (CycleGAN's code default): mean (D - target)^2; ``bce``: the log form of the
    supplement's Eq. 1, ``-log D`` for real and ``-log(1 - D)`` for fake, D = sigmoid(logit).
    """
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
    total = 0.0
    for out in logits:
        target = torch.full_like(out, 1.0 if real else 0.0)
        total = total + (F.mse_loss(out, target) if mode == "lsgan"
                         else F.binary_cross_entropy_with_logits(out, target))
    return total / len(logits)


def cycle_loss(x: torch.Tensor, x_rec: torch.Tensor, drr: torch.Tensor,
               drr_rec: torch.Tensor) -> torch.Tensor:
    """Supplement Eq. 2: ||F(G(x)) - x||_1 + ||G(F(d)) - d||_1 (mean absolute values)."""
    return F.l1_loss(x_rec, x) + F.l1_loss(drr_rec, drr)


def virtual_xray(wvdrr_physical: torch.Tensor) -> torch.Tensor:
    """V(.) of Sec. 2.2: sum over objects of a WVDRR (B, N, H, W) -> (B, H, W)."""
    return wvdrr_physical.sum(dim=1)


def gc_alpha_loss(x: torch.Tensor, pred: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Eq. 1: -GC(x, V(G(x)^WVDRR)), V summing the *physical* WVDRRs (pred x scale).

    ``scale`` is the (3, N) scale constant; GC ignores a global gain, not per-object gains,
    so the virtual radiograph must be summed in physical units.
    """
    wv = pred[:, 0] * scale[0][None, :, None, None]
    return -gradient_correlation(x[:, 0], virtual_xray(wv)).mean()


def gc_beta_loss(pred: torch.Tensor) -> torch.Tensor:
    """Eq. 2: -(1/N) sum_i [GC(st(WV_i), V_i) + GC(st(WV_i), M_i)], st = stop-gradient.

    Gradients reach the VDRR and MDRR channels only; the WVDRR side is detached.
    """
    wv = pred[:, 0].detach()
    gc = gradient_correlation(wv, pred[:, 1]) + gradient_correlation(wv, pred[:, 2])  # (B, N)
    return -gc.mean(dim=1).mean()


def owis_terms(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per DRR type: (1/(N H W)) sum_i |S(pred_i) - S(true_i)|, batch mean -> (3,).

    ``pred`` is G's output for a radiograph and ``true`` the DRRs of the *same patient*'s
    CT: paired in image sums, not in pixels (any pose or deformation of the muscles). The sum
    of the three is the paper's L_IS^all.
    """
    n, h, w = pred.shape[-3:]
    diff = (pred.sum(dim=(-1, -2)) - true.sum(dim=(-1, -2))).abs()  # (B, 3, N)
    return diff.sum(dim=-1).mean(dim=0) / (n * h * w)


def bone_terms(pred_bones: torch.Tensor, aligned: torch.Tensor, lambda_l1: float,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4 per DRR type: (1/N_b) sum_{i in K} [lambda_l1 ||pred_i - a_i||_1 - GC(pred_i, a_i)].

    ``pred_bones`` and ``aligned`` are (B, 3, N_b, H, W): G's output at the aligned-bone
    channels and the bones' DRRs at their registered poses. ||.||_1 is the mean absolute
    difference over pixels (as CycleGAN's L1). ``valid`` (B, N_b) bool, optional: bones whose
    registration failed contribute nothing (the mean still counts them, so the weight of a
    batch does not depend on its neighbours). Returns the batch mean per type, shape (3,);
    their sum is the paper's L_B^all.
    """
    l1 = (pred_bones - aligned).abs().mean(dim=(-1, -2))  # (B, 3, Nb)
    gc = gradient_correlation(pred_bones, aligned)        # (B, 3, Nb)
    terms = lambda_l1 * l1 - gc
    if valid is not None:
        terms = terms * valid[:, None, :].to(terms.dtype)
    return terms.mean(dim=-1).mean(dim=0)
