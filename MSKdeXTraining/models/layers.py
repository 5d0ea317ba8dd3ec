"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation: GroupNorm with up to 8 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``. On CUDA with
    deterministic algorithms on (as training runs there) it is :func:`bilinear_by_matrices`:
    PyTorch's deterministic backward of the native kernel made an H100 train the paper
    configuration 2.8x slower (session 36); matrix products are deterministic and fast."""
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return bilinear_by_matrices(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def bilinear_by_matrices(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of ``(..., H, W)`` to ``size`` (align_corners=False, PyTorch's
    convention) as ``A_h x A_w^T``, with the (out, in) interpolation matrices of each axis."""
    a_h = _interpolation_matrix(int(size[0]), x.shape[-2], x)
    a_w = _interpolation_matrix(int(size[1]), x.shape[-1], x)
    return (x @ a_w.T).transpose(-1, -2).matmul(a_h.T).transpose(-1, -2)


def _interpolation_matrix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) weights of 1D linear interpolation, half-pixel centres, clamped at the edges."""
    src = ((torch.arange(n_out, device=like.device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    w1 = (src - i0)[:, None]
    matrix = (1 - w1) * F.one_hot(i0, n_in) + w1 * F.one_hot(i1, n_in)
    return matrix.to(like.dtype)


def conv_norm_act(c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                  act: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + GroupNorm (+ ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                               norm(c_out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-norm layers plus the identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_norm_act(channels, channels),
                                  conv_norm_act(channels, channels, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))
