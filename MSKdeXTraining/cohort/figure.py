"""Overview figure of cohort cases: CT slice with labels, radiograph, per-muscle DRRs.

``python -m MSKdeXTraining.cohort.figure COHORT OUT.png [N]`` draws the first N cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from ..imaging.geometry import Geometry  # noqa: E402
from ..imaging.projector import project_objects  # noqa: E402
from ..imaging.volume import read_ct, read_labels  # noqa: E402
from ..objects import DEFAULT_MUSCLES, DISPLAY_NAMES  # noqa: E402
from .anatomy import synthetic_map  # noqa: E402


def cohort_figure(cohort: Path, out: Path, n_cases: int = 3) -> Path:
    """Write a PNG with one row per case: coronal CT + labels, radiograph, muscle MDRRs."""
    cases = sorted(p for p in Path(cohort).glob("case_*") if (p / "truth.json").is_file())[:n_cases]
    if not cases:
        raise FileNotFoundError(f"{cohort}: no complete case_* folders")
    muscles = synthetic_map().select(list(DEFAULT_MUSCLES))
    cols = 2 + len(DEFAULT_MUSCLES)
    fig, axes = plt.subplots(len(cases), cols, figsize=(2.2 * cols, 2.75 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        ct = read_ct(case / "ct.nii.gz")
        labels = read_labels(case / "labels.nii.gz")
        truth = json.loads((case / "truth.json").read_text(encoding="utf-8"))
        xray_meta = json.loads((case / "xray.json").read_text(encoding="utf-8"))
        geometry = Geometry.from_json(xray_meta["geometry"])
        xray = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "xray.mha")))
        hip = np.array(truth["derived"]["hip_centres_mm"]["left"])
        j = int(round((np.linalg.inv(ct.affine) @ np.r_[hip, 1.0])[1]))
        j = int(np.clip(j, 0, ct.array.shape[1] - 1))
        # coronal slice through the hip centres, patient's right on the image left
        sl = ct.array[::-1, j, :]
        lab = labels.array[::-1, j, :]
        aspect = ct.spacing[2] / ct.spacing[0]
        row[0].imshow(sl, cmap="gray", vmin=-250, vmax=600, aspect=aspect)
        row[0].imshow(np.ma.masked_where((lab == 0) | (lab >= 30), lab), cmap="tab20",
                      alpha=0.45, vmin=0, vmax=22, aspect=aspect, interpolation="nearest")
        row[0].set_title(f"{case.name}: CT + labels", fontsize=8)
        row[1].imshow(xray, cmap="gray", vmin=0, vmax=1)
        row[1].set_title("radiograph (R | L)", fontsize=8)
        poses = {3: np.array(truth["poses"]["femur_left"]), 4: np.array(truth["poses"]["femur_right"])}
        stack = project_objects(ct, labels, muscles, geometry, np.array(truth["poses"]["pelvis"]),
                                label_poses=poses)
        mdrr = stack.data[2].numpy()
        for k, name in enumerate(DEFAULT_MUSCLES):
            ax = row[2 + k]
            ax.imshow(mdrr[k], cmap="magma")
            mass = truth["objects"][name]["mass_g"]
            ax.set_title(f"{DISPLAY_NAMES[name]} MDRR\n{mass:.0f} g", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print("usage: python -m MSKdeXTraining.cohort.figure COHORT OUT.png [N]", file=sys.stderr)
        sys.exit(2)
    cohort_figure(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 3)
