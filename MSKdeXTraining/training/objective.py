"""One optimisation step of the full objective (paper Eq. 5) for G, F and the critics.

Units: DRRs enter the losses in G's scaled units (physical / scale constant); the virtual
radiograph of GC-alpha sums physical WVDRRs. Unpaired targets: the cycle and adversarial
terms use ``drr_unpaired``, the DRRs of another training case (a seeded permutation per
epoch, :meth:`PreparedDataset.set_epoch`); OWIS and the bone loss use the DRRs of the
radiograph's own patient.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .. import losses
from .config import TrainConfig
from .distributed import DistInfo, average_gradients
from .pool import ImagePool

#: Columns of log.csv, in order (weighted sums ``g_total``/``d_total`` plus every raw term).
LOSS_NAMES = ("g_total", "gan_g", "gan_f", "cycle", "gc_alpha", "gc_beta", "owis",
              "owis_wvdrr", "owis_vdrr", "owis_mdrr", "bone", "bone_wvdrr", "bone_vdrr",
              "bone_mdrr", "d_total", "d_x", "d_drr")


@dataclass
class Networks:
    """G, F and the two critics (F and critics are None when their losses are off)."""

    G: nn.Module
    F: nn.Module | None
    DX: nn.Module | None
    DD: nn.Module | None

    def generators(self) -> list[nn.Module]:
        return [m for m in (self.G, self.F) if m is not None]

    def critics(self) -> list[nn.Module]:
        return [m for m in (self.DX, self.DD) if m is not None]


@dataclass
class Normalisation:
    """Radiograph normalisation (``(x - mean) / std``) and the (3, N) scale constants."""

    x_mean: float
    x_std: float
    scale: torch.Tensor  # (3, N), physical units per network unit

    def xin(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def scaled(self, drr: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Physical (B, 3, n, H, W) -> scaled units (``index``: the n object channels)."""
        s = self.scale if index is None else self.scale[:, index]
        return drr / s[None, :, :, None, None]


class Objective:
    """Computes the losses of one batch and steps the optimisers."""

    def __init__(self, config: TrainConfig, nets: Networks, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer | None, *, pools: tuple[ImagePool, ImagePool],
                 norm: Normalisation | None, bone_index: list[int], info: DistInfo) -> None:
        self.c, self.nets, self.opt_g, self.opt_d = config, nets, opt_g, opt_d
        self.pools = pools
        self.pool_x, self.pool_d = pools
        self.norm, self.bone_index, self.info = norm, bone_index, info
        cuda = info.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) \
            if cuda and config.amp_bf16 else nullcontext
        self.channels_last = config.channels_last

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            y = net(x)
        return [v.float() for v in y] if isinstance(y, list) else y.float()

    def step(self, batch: dict[str, torch.Tensor], lambda_is: float) -> dict[str, float]:
        """One step for G/F and one for the critics; returns the raw loss values."""
        c, nets, norm, dev = self.c, self.nets, self.norm, self.info.device
        x = batch["xray"].to(dev)
        drr = norm.scaled(batch["drr"].to(dev))
        aligned = norm.scaled(batch["aligned"].to(dev), self.bone_index)
        drr_u = norm.scaled(batch["drr_unpaired"].to(dev))
        for d in nets.critics():
            d.requires_grad_(False)

        t: dict[str, torch.Tensor] = {}
        pred = self._run(nets.G, norm.xin(x))
        if c.uses_f:
            x_fake = self._run(nets.F, drr_u.flatten(1, 2))
        if c.gan:
            t["gan_g"] = losses.gan_loss(self._run(nets.DD, pred.flatten(1, 2)), True, c.gan_mode)
            t["gan_f"] = losses.gan_loss(self._run(nets.DX, x_fake), True, c.gan_mode)
        if c.lambda_cyc > 0:
            x_rec = self._run(nets.F, pred.flatten(1, 2))
            drr_rec = self._run(nets.G, norm.xin(x_fake))
            t["cycle"] = losses.cycle_loss(x, x_rec, drr_u, drr_rec)
        if c.lambda_gca > 0:
            t["gc_alpha"] = losses.gc_alpha_loss(x, pred, norm.scale)
        if c.lambda_gcb > 0:
            t["gc_beta"] = losses.gc_beta_loss(pred)
        owis = losses.owis_terms(pred, drr)  # logged always: the quantitative error
        t["owis"] = owis.sum()
        t["owis_wvdrr"], t["owis_vdrr"], t["owis_mdrr"] = owis
        if c.bone_loss:
            bone = losses.bone_terms(pred[:, :, self.bone_index], aligned, c.lambda_l1,
                                     batch["aligned_ok"].to(dev))
            t["bone"] = bone.sum()
            t["bone_wvdrr"], t["bone_vdrr"], t["bone_mdrr"] = bone
        weights = {"gan_g": c.lambda_gan, "gan_f": c.lambda_gan, "cycle": c.lambda_cyc,
                   "gc_alpha": c.lambda_gca, "gc_beta": c.lambda_gcb, "owis": lambda_is,
                   "bone": c.lambda_bone}
        total = sum(w * t[k] for k, w in weights.items() if k in t and w > 0)
        t["g_total"] = total
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        for net in nets.generators():
            average_gradients(net, self.info)
        self.opt_g.step()

        if c.gan:
            for d in nets.critics():
                d.requires_grad_(True)
            fake_d = self.pool_d.query(pred.detach().flatten(1, 2))
            fake_x = self.pool_x.query(x_fake.detach())
            t["d_drr"] = 0.5 * (losses.gan_loss(self._run(nets.DD, drr_u.flatten(1, 2)), True, c.gan_mode)
                                + losses.gan_loss(self._run(nets.DD, fake_d), False, c.gan_mode))
            t["d_x"] = 0.5 * (losses.gan_loss(self._run(nets.DX, x), True, c.gan_mode)
                              + losses.gan_loss(self._run(nets.DX, fake_x), False, c.gan_mode))
            t["d_total"] = t["d_drr"] + t["d_x"]
            self.opt_d.zero_grad(set_to_none=True)
            t["d_total"].backward()
            for net in nets.critics():
                average_gradients(net, self.info)
            self.opt_d.step()
        return {k: float(v.detach()) for k, v in t.items()}
