"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation: GroupNorm with up to 8 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


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
