"""Gradient correlation (GC), the image similarity of registration and of the GC losses.

GC (Penney et al., IEEE TMI 17:586, 1998) is the mean of the normalised cross-correlations
of the Sobel x- and y-gradients of two images. It lies in [-1, 1], is 1 for images equal up
to a positive gain and offset, and ignores low-frequency differences (scatter, heel effect).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_EPS = 1e-8


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients (d/dx along columns, d/dy along rows) of ``(..., H, W)`` images.

    Returns two tensors of shape ``(..., H-2, W-2)`` (valid region, no padding artefacts).
    """
    shape = images.shape
    x = images.reshape(-1, 1, shape[-2], shape[-1])
    kx = _SOBEL_X.to(x)[None, None]
    gx = F.conv2d(x, kx)
    gy = F.conv2d(x, kx.transpose(-1, -2))
    out = shape[:-2] + gx.shape[-2:]
    return gx.reshape(out), gy.reshape(out)


def ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised cross-correlation over the last two dims; ``weight`` (broadcastable) >= 0."""
    if weight is None:
        weight = torch.ones_like(a)
    weight = weight.expand_as(a)
    wsum = weight.sum(dim=(-1, -2), keepdim=True).clamp_min(_EPS)
    am = a - (weight * a).sum(dim=(-1, -2), keepdim=True) / wsum
    bm = b - (weight * b).sum(dim=(-1, -2), keepdim=True) / wsum
    num = (weight * am * bm).sum(dim=(-1, -2))
    # eps inside the root keeps the gradient finite for a flat image (variance 0)
    den = torch.sqrt((weight * am * am).sum(dim=(-1, -2)) * (weight * bm * bm).sum(dim=(-1, -2))
                     + _EPS ** 2)
    return num / den


def gradient_correlation(a: torch.Tensor, b: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """GC of images ``a`` and ``b`` of shape ``(..., H, W)``; returns shape ``(...)``.

    ``mask`` (broadcastable to ``(..., H, W)``, values >= 0) restricts the correlation to a
    region, e.g. around a bone. Differentiable in both arguments; a flat image gives 0.
    """
    ax, ay = sobel(a)
    bx, by = sobel(b)
    w = None if mask is None else mask[..., 1:-1, 1:-1]
    return 0.5 * (ncc(ax, bx, w) + ncc(ay, by, w))
