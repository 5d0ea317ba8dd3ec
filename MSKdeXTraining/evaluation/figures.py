"""Evaluation figures (PNG, matplotlib's object API: no pyplot state, no GUI backend).

* :func:`scatter_figure` - predicted vs ground-truth value per object (paper Fig. 3);
* :func:`decomposition_figure` - a radiograph with its predicted and reference DRRs
  (paper Fig. 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..fileio import write_atomic
from ..imaging.projector import DRR_TYPES
from ..objects import DISPLAY_NAMES
from .metrics import icc, pcc


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    return write_atomic(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3 if n <= 9 else 4)
    return -(-n // cols), cols


def scatter_figure(truth: np.ndarray, pred: np.ndarray, names: list[str], quantity: str,
                   unit: str, path: str | Path, groups: np.ndarray | None = None,
                   dpi: int = 110) -> Path:
    """Scatter plots of ``pred`` vs ``truth`` (both (M cases, N objects), in ``unit``), one
    panel per object with the identity line, PCC and ICC(2,1); ``groups`` (M,) colours the
    points (e.g. the cross-validation fold). Writes a PNG atomically and returns its path."""
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    rows, cols = _grid(len(names))
    fig = Figure(figsize=(3.1 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, name in enumerate(names):
        ax = axes[i]
        t, p = truth[:, i], pred[:, i]
        lo, hi = np.nanmin([t.min(), p.min()]), np.nanmax([t.max(), p.max()])
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=1)
        colour = {} if groups is None else {"c": groups, "cmap": "tab10", "vmin": 0, "vmax": 9}
        ax.scatter(t, p, s=14, alpha=0.8, edgecolors="none", zorder=2, **colour)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_title(f"{DISPLAY_NAMES.get(name, name)}  PCC {pcc(p, t):.3f}  ICC {icc(p, t):.3f}",
                     fontsize=9)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel(f"predicted ({unit})", fontsize=8)
        if i // cols == rows - 1:
            ax.set_xlabel(f"ground truth ({unit})", fontsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{quantity}: prediction vs ground truth (3D CT), n = {len(truth)}", fontsize=11)
    return _save(fig, Path(path), dpi)


def decomposition_figure(xray: np.ndarray, pred: np.ndarray, ref: np.ndarray, names: list[str],
                         path: str | Path, show: list[str] | None = None,
                         drr_types: tuple[str, ...] = ("mdrr", "vdrr"), title: str = "",
                         dpi: int = 110) -> Path:
    """Radiograph (H, W) beside predicted and reference DRRs ((3, N, H, W), physical units)
    of the objects ``show`` (default: up to four, paper Fig. 4). Each prediction/reference
    pair shares one grey scale, so intensity errors are visible."""
    show = list(show or names[:4])
    idx = [names.index(s) for s in show]
    rows = 2 * len(drr_types)
    fig = Figure(figsize=(2.2 * (len(show) + 1), 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, len(show) + 1, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(xray, cmap="gray")
    axes[0, 0].set_title("radiograph", fontsize=9)
    for t, dtype in enumerate(drr_types):
        c = DRR_TYPES.index(dtype)
        for j, i in enumerate(idx):
            vmax = float(max(pred[c, i].max(), ref[c, i].max(), 1e-9))
            for r, (img, label) in enumerate(((pred, "predicted"), (ref, "reference"))):
                ax = axes[2 * t + r, j + 1]
                ax.imshow(img[c, i], cmap="gray", vmin=0.0, vmax=vmax)
                ax.set_title(f"{DISPLAY_NAMES.get(names[i], names[i])} {dtype.upper()}\n{label}",
                             fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path), dpi)
