"""Evaluation figures (PNG, matplotlib's object API: no pyplot state, no GUI backend).

* :func:`scatter_figure` - predicted vs ground-truth value per object (paper Fig. 3);
* :func:`decomposition_figure` - a radiograph with its predicted and reference DRRs
  (paper Fig. 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..drr_types import DRR_TYPES
from ..fileio import write_atomic
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
    panel per object with the identity line, PCC and ICC(2,1) of the cases where both are
    finite (the others are not drawn; the title counts them); ``groups`` (M,), the
    cross-validation folds, colour the points, named in a legend (colours repeat from
    fold 10 on). Writes a PNG atomically and returns its path."""
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    rows, cols = _grid(len(names))
    fig = Figure(figsize=(3.1 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, name in enumerate(names):
        ax = axes[i]
        ok = np.isfinite(truth[:, i]) & np.isfinite(pred[:, i])
        t, p = truth[ok, i], pred[ok, i]
        lo, hi = (min(t.min(), p.min()), max(t.max(), p.max())) if ok.any() else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=1)
        colour = {} if groups is None else {"c": np.asarray(groups)[ok] % 10, "cmap": "tab10", "vmin": 0, "vmax": 9}
        ax.scatter(t, p, s=14, alpha=0.8, edgecolors="none", zorder=2, **colour)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        dropped = f"\n{int((~ok).sum())} not finite, not shown" if not ok.all() else ""
        ax.set_title(f"{DISPLAY_NAMES.get(name, name)}  PCC {pcc(p, t):.3f}  ICC {icc(p, t):.3f}{dropped}",
                     fontsize=9)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel(f"predicted ({unit})", fontsize=8)
        if i // cols == rows - 1:
            ax.set_xlabel(f"ground truth ({unit})", fontsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if groups is not None:
        tab10 = colormaps["tab10"]
        labels = sorted({int(g) for g in np.asarray(groups)})
        fig.legend(handles=[Line2D([], [], ls="", marker="o", color=tab10(g % 10 / 9), label=f"fold {g}")
                            for g in labels], loc="outside lower center", ncols=min(len(labels), 8), fontsize=8)
    fig.suptitle(f"{quantity}: prediction vs ground truth (3D CT), n = {len(truth)}", fontsize=11)
    return _save(fig, Path(path), dpi)


def decomposition_figure(xray: np.ndarray, pred: np.ndarray, ref: np.ndarray, names: list[str],
                         path: str | Path, show: list[str] | None = None,
                         drr_types: tuple[str, ...] = ("mdrr", "vdrr"), title: str = "",
                         dpi: int = 110) -> Path:
    """Radiograph (H, W) beside predicted and reference DRRs ((3, N, H, W), physical units)
    of the objects ``show`` (default: up to four, paper Fig. 4). Each prediction/reference
    pair shares one grey scale, so intensity errors are visible. A panel without finite values
    (a reference NaN where the registration failed, a diverged prediction) is left empty and
    says so."""
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
            finite = [a[np.isfinite(a)] for a in (pred[c, i], ref[c, i])]
            vmax = max([1e-9] + [float(a.max()) for a in finite if a.size])
            for r, (img, label, none) in enumerate(((pred, "predicted", "not finite"),
                                                    (ref, "reference", "registration failed"))):
                ax = axes[2 * t + r, j + 1]
                if finite[r].size:
                    ax.imshow(img[c, i], cmap="gray", vmin=0.0, vmax=vmax)
                else:
                    label = f"{label}: {none}"
                ax.set_title(f"{DISPLAY_NAMES.get(names[i], names[i])} {dtype.upper()}\n{label}",
                             fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path), dpi)
