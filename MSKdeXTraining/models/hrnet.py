"""HRNet (Wang et al., TPAMI 2021) and the decomposition generator G built on it.

The backbone keeps a full-resolution branch through the whole network and adds one branch
at half the resolution (twice the width) per stage; after every module the branches
exchange information (each output branch sums all inputs, upsampled by 1x1 conv +
bilinear interpolation or downsampled by strided 3x3 convs). The HRNetV2 head upsamples
all branches to the highest resolution and concatenates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..drr_types import DRR_TYPES
from .layers import BasicBlock, conv_norm_act, resize_bilinear


@dataclass(frozen=True)
class HRNetSpec:
    """Size of an HRNet.

    ``width``: channels of the highest-resolution branch (branch k has ``width * 2**k``);
    ``branches``: number of resolutions (1-4), one stage per branch; ``modules``: HR modules
    (blocks + fusion) per stage; ``blocks``: basic blocks per branch per module;
    ``stem_stride``: 1, 2 or 4, the stride of the stem before the first branch;
    ``head_width``: channels after the HRNetV2 concatenation (default: sum of widths).
    """

    width: int = 32
    branches: int = 4
    modules: int = 1
    blocks: int = 2
    stem_stride: int = 4
    head_width: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.branches <= 4:
            raise ValueError(f"HRNet branches must be in 1..4, got {self.branches}")
        if self.stem_stride not in (1, 2, 4):
            raise ValueError(f"HRNet stem_stride must be 1, 2 or 4, got {self.stem_stride}")
        if self.width < 1 or self.modules < 1 or self.blocks < 1:
            raise ValueError(f"HRNet width, modules and blocks must be >= 1, got {self}")

    @property
    def widths(self) -> list[int]:
        return [self.width * 2 ** k for k in range(self.branches)]


class _Fuse(nn.Module):
    """Exchange between branches: output j = ReLU(sum_i resample_i->j(x_i))."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for j, cj in enumerate(widths):
            row = nn.ModuleList()
            for i, ci in enumerate(widths):
                if i == j:
                    row.append(nn.Identity())
                elif i > j:  # lower resolution -> 1x1 conv, upsampled in forward
                    row.append(conv_norm_act(ci, cj, kernel=1, act=False))
                else:  # higher resolution -> (j - i) strided 3x3 convs
                    steps = [conv_norm_act(ci, ci, stride=2) for _ in range(j - i - 1)]
                    steps.append(conv_norm_act(ci, cj, stride=2, act=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for j, row in enumerate(self.paths):
            acc = xs[j]
            for i, path in enumerate(row):
                if i == j:
                    continue
                y = path(xs[i])
                if i > j:
                    y = resize_bilinear(y, xs[j].shape[-2:])
                acc = acc + y
            out.append(F.relu(acc))
        return out


class _HRModule(nn.Module):
    """Basic blocks on every branch, then the cross-resolution fusion."""

    def __init__(self, widths: list[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(blocks)]) for c in widths)
        self.fuse = _Fuse(widths) if len(widths) > 1 else None

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs)]
        return self.fuse(xs) if self.fuse is not None else xs


class HRNet(nn.Module):
    """HRNet backbone + HRNetV2 head: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.

    Any H, W work (odd sizes included); the output has the input's size. :meth:`features`
    returns the head's feature map (before the last 1x1 conv), used for pooled statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, spec: HRNetSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = spec.widths
        n_down = int(math.log2(spec.stem_stride))
        stem = [conv_norm_act(in_channels, widths[0], stride=2 if n_down else 1)]
        stem += [conv_norm_act(widths[0], widths[0], stride=2) for _ in range(n_down - 1)]
        self.stem = nn.Sequential(*stem)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for s in range(1, spec.branches + 1):
            if s > 1:
                self.transitions.append(conv_norm_act(widths[s - 2], widths[s - 1], stride=2))
            self.stages.append(nn.Sequential(*[_HRModule(widths[:s], spec.blocks)
                                               for _ in range(spec.modules)]))
        head = spec.head_width or sum(widths)
        self.head = conv_norm_act(sum(widths), head, kernel=1)
        self.refine = conv_norm_act(head, head) if spec.stem_stride > 1 else nn.Identity()
        self.out = nn.Conv2d(head, out_channels, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Head features ``(B, head_width, H, W)`` at the input resolution."""
        size = x.shape[-2:]
        xs = [self.stem(x)]
        for s, stage in enumerate(self.stages):
            if s > 0:
                xs = xs + [self.transitions[s - 1](xs[-1])]
            xs = stage(xs)
        top = xs[0].shape[-2:]
        cat = torch.cat([xs[0]] + [resize_bilinear(y, top) for y in xs[1:]], dim=1)
        y = self.head(cat)
        if y.shape[-2:] != size:
            y = resize_bilinear(y, size)
        return self.refine(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


#: softplus(SOFTPLUS_ONE) == 1: the output bias starts there, so an untrained G predicts
#: every channel near its scale constant (the training-set mean pixel value). The output
#: weights start small but not zero: a perfectly flat image has no gradient correlation.
SOFTPLUS_ONE = math.log(math.e - 1.0)


class Generator(nn.Module):
    """G: radiograph ``(B, 1, H, W)`` (normalised) -> DRRs ``(B, 3, N, H, W)``, scaled units
    (the three :data:`~MSKdeXTraining.drr_types.DRR_TYPES` of each of N objects).

    Output is non-negative (softplus). Scaled units: physical value = output x scale
    constant of the channel (:mod:`MSKdeXTraining.modelio`), so an output of 1 is the
    training-set mean pixel value of that channel.
    """

    def __init__(self, n_objects: int, spec: HRNetSpec) -> None:
        super().__init__()
        self.n_objects, self.n_types = n_objects, len(DRR_TYPES)
        self.net = HRNet(1, self.n_types * n_objects, spec)
        with torch.no_grad():
            self.net.out.weight.mul_(0.1)
        nn.init.constant_(self.net.out.bias, SOFTPLUS_ONE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.softplus(self.net(x))
        return y.reshape(y.shape[0], self.n_types, self.n_objects, *y.shape[-2:])

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the head features ``(B, C)``: the OOD descriptor of an image."""
        return self.net.features(x).mean(dim=(-1, -2))
