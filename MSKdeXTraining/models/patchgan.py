"""PatchGAN discriminators (Isola et al. 2017), optionally at several scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import norm


def _patch_net(in_channels: int, width: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    c = width
    for k in range(1, n_layers + 1):
        c_out = width * min(2 ** k, 8)
        stride = 2 if k < n_layers else 1
        layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), norm(c_out), nn.LeakyReLU(0.2, True)]
        c = c_out
    layers.append(nn.Conv2d(c, 1, 4, 1, 1))
    return nn.Sequential(*layers)


class PatchGAN(nn.Module):
    """Critic of ``(B, in_channels, H, W)`` images; returns one logit map per scale.

    ``n_layers`` strided layers give a receptive field of 70 px for 3 (CycleGAN's default);
    ``scales`` > 1 adds critics on 2x, 4x ... average-pooled copies of the input.
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 3, scales: int = 1) -> None:
        super().__init__()
        if width < 1 or n_layers < 1 or scales < 1:
            raise ValueError(f"PatchGAN needs width, n_layers, scales >= 1, got {width}, {n_layers}, {scales}")
        self.nets = nn.ModuleList(_patch_net(in_channels, width, n_layers) for _ in range(scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, net in enumerate(self.nets):
            out.append(net(x if k == 0 else F.avg_pool2d(x, 2 ** k)))
        return out
