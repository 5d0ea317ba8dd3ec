"""QC pictures of a registration: aligned bone DRR contours over the radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage.feature import canny
from skimage.segmentation import find_boundaries

from ..fileio import atomic_path

#: Contour colours (RGB, 0-255), one per bone, cycled.
COLOURS = ((255, 60, 60), (60, 220, 60), (70, 140, 255), (255, 200, 0))


def overlay_image(radiograph: np.ndarray, bone_drr: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8: the radiograph in grey with each bone DRR's contours in colour.

    ``radiograph`` (H, W), any units (shown between its 1st and 99th percentiles);
    ``bone_drr`` (H, W) or (B, H, W) WVDRRs of the aligned bones on the same detector.
    Contours: the bone's outline (DRR > 2 % of its maximum) and its internal edges (Canny).
    """
    x = np.asarray(radiograph, np.float64)
    drr = np.asarray(bone_drr, np.float64)
    drr = drr[None] if drr.ndim == 2 else drr
    if x.ndim != 2 or drr.ndim != 3 or drr.shape[1:] != x.shape:
        raise ValueError(f"overlay_image needs a (H, W) radiograph and (H, W) or (B, H, W) DRRs "
                         f"of the same size, got {x.shape} and {np.shape(bone_drr)}")
    lo, hi = np.percentile(x, [1, 99])
    grey = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for b, image in enumerate(drr):
        top = float(image.max())
        if top <= 0:
            continue
        norm = image / top
        edges = find_boundaries(norm > 0.02, mode="inner") | canny(norm, sigma=1.0,
                                                                    low_threshold=0.08,
                                                                    high_threshold=0.16)
        rgb[edges] = COLOURS[b % len(COLOURS)]
    return rgb.round().astype(np.uint8)


def write_qc_figure(path: str | Path, overlay: np.ndarray, title: str, flagged: bool) -> Path:
    """Save an overlay as PNG with a title (red when ``flagged``), atomically."""
    h, w = overlay.shape[:2]
    fig = Figure(figsize=(max(4.5, w / 100), max(4.5, h / 100) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, h / (h + 40)))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, color="red" if flagged else "black", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
