"""F: the twin generator DRRs -> radiograph, a CycleGAN-style ResNet translator."""

from __future__ import annotations

import torch
from torch import nn

from .layers import BasicBlock, conv_norm_act, resize_bilinear


class ResnetTranslator(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` in [0, 1] (sigmoid).

    7x7 stem, ``n_down`` stride-2 convs (width doubling), ``n_blocks`` residual blocks,
    bilinear upsampling back to the input size (any H, W), 7x7 output conv. Used as F,
    which maps the scaled DRR stack (3N channels) to the radiograph (1 channel, [0, 1]).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, n_down: int = 2,
                 n_blocks: int = 6) -> None:
        super().__init__()
        if width < 1 or n_down < 0 or n_blocks < 0:
            raise ValueError(f"ResnetTranslator needs width >= 1, n_down >= 0, n_blocks >= 0, "
                             f"got {width}, {n_down}, {n_blocks}")
        self.stem = conv_norm_act(in_channels, width, kernel=7)
        downs, c = [], width
        for _ in range(n_down):
            downs.append(conv_norm_act(c, 2 * c, stride=2))
            c *= 2
        self.downs = nn.ModuleList(downs)
        self.blocks = nn.Sequential(*[BasicBlock(c) for _ in range(n_blocks)])
        ups = []
        for _ in range(n_down):
            ups.append(conv_norm_act(c, c // 2))
            c //= 2
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(c, out_channels, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        sizes = []
        for d in self.downs:
            sizes.append(y.shape[-2:])
            y = d(y)
        y = self.blocks(y)
        for u, size in zip(self.ups, reversed(sizes)):
            y = u(resize_bilinear(y, size))
        return torch.sigmoid(self.out(y))
