"""A tiny prepared dataset v2 of ellipsoid phantoms, for tests, benchmarks and smoke runs.

Each case is a small CT (HU) of a water-like body with one ellipsoid per object (size set
by a per-patient factor, so volumes and masses vary between cases), projected with the
real projector: ``drr`` in the default AP pose, the radiograph and ``aligned`` in a
slightly rotated and shifted pose (as a radiograph taken in another position), all on the
case's matched detector (each case has its own source-isocentre distance, so its own
magnification). The radiograph is the total line integral of mu windowed to [0, 1] plus a
little noise. Image sums times the case's pixel area equal the phantoms' volumes and masses.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..drr_types import DRR_TYPES, DRR_UNITS
from ..fileio import write_json
from ..imaging.geometry import Geometry, default_ap_pose, rigid
from ..imaging.projector import project_objects
from ..imaging.volume import Volume
from ..modelio import write_safetensors
from ..objects import ALIGNED_BONES, DEFAULT_OBJECTS, ObjectMap, ObjectSpec
from .data import FORMAT, VERSION

#: Line-integral window of the toy radiograph (dimensionless mu x length).
WINDOW = (0.0, 4.5)
BODY_LABEL = 50


def _phantom(rng: np.random.Generator, objects: tuple[str, ...], shape: int, spacing: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels) arrays [k, j, i] of one patient; label i+1 is object i, BODY_LABEL body."""
    template = np.random.default_rng(1234)  # the same anatomy layout for every patient
    c = (np.arange(shape) - (shape - 1) / 2) * spacing
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    size = rng.uniform(0.8, 1.25)
    hu = np.full(x.shape, -1000.0)
    labels = np.zeros(x.shape, np.uint8)
    body = (x / (0.45 * shape * spacing * size)) ** 2 + (y / (0.3 * shape * spacing)) ** 2 <= 1
    hu[body], labels[body] = rng.uniform(-60, 0), BODY_LABEL
    for i, name in enumerate(objects):
        centre = template.uniform(-0.22, 0.22, 3) * shape * spacing * size + rng.normal(0, 3, 3)
        radii = template.uniform(0.06, 0.14, 3) * shape * spacing * size * rng.uniform(0.9, 1.1, 3)
        inside = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
            + ((z - centre[2]) / radii[2]) ** 2 <= 1
        bone = name in ("pelvis", "femur", "sacrum")
        hu[inside] = rng.uniform(500, 900) if bone else rng.uniform(0, 60)
        labels[inside] = i + 1
    return hu, labels


def write_toy_dataset(out: str | Path, *, n_cases: int = 6, size: int = 32, seed: int = 0,
                      objects: tuple[str, ...] = DEFAULT_OBJECTS, excluded: int = 0) -> Path:
    """Write a prepared dataset v2 of ``n_cases`` phantom cases on a ``size``^2 detector.

    ``excluded`` extra cases are listed with status "excluded" (and no file). Two cases
    share each patient id (patients p000, p001, ...), to exercise splits by patient.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    geometry = Geometry(rows=size, cols=size, pixel_spacing=(240.0 / size, 240.0 / size))
    omap = ObjectMap("toy", tuple(
        ObjectSpec(n, "bone" if n in ("pelvis", "femur", "sacrum") else "muscle", (i + 1,))
        for i, n in enumerate(objects)) + (ObjectSpec("body", "muscle", (BODY_LABEL,)),))
    bones = [b for b in ALIGNED_BONES if b in objects]
    bone_idx = [objects.index(b) for b in bones]
    shape, spacing = 40, 200.0 / 40
    cases = []
    for n in range(n_cases):
        case_id = f"toy_{n:03d}"
        hu, labels = _phantom(rng, objects, shape, spacing)
        origin = -(shape - 1) / 2 * spacing * np.ones(3)
        ct = Volume(hu.astype(np.float32), [spacing] * 3, origin, np.eye(3))
        lab = Volume(labels, [spacing] * 3, origin, np.eye(3))
        case_geometry = replace(geometry, sod=rng.uniform(840.0, 920.0)).matched(geometry)
        pose_a = default_ap_pose(np.zeros(3), case_geometry)
        move = rigid(rng.uniform(-4, 4, 3), rng.uniform(-6, 6, 3))
        pose_b = pose_a @ move
        drr = project_objects(ct, lab, omap, case_geometry, pose_a)
        seen = project_objects(ct, lab, omap, case_geometry, pose_b)
        total = seen.data[0].sum(0)
        xray = ((total - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).clamp(0, 1)
        xray = (xray + torch.from_numpy(rng.normal(0, 0.005, xray.shape)).float()).clamp(0, 1)
        sums = drr.sums()[:, :len(objects)]
        write_safetensors(out / "cases" / f"{case_id}.safetensors", {
            "xray": xray, "drr": drr.data[:, :len(objects)], "aligned": seen.data[:, bone_idx],
            "volume_cm3": torch.from_numpy(sums[1]), "mass_g": torch.from_numpy(sums[2])})
        cases.append({"id": case_id, "patient": f"p{n // 2:03d}", "file": f"cases/{case_id}.safetensors",
                      "status": "ok", "reasons": [], "qc": {}, "registration": {},
                      "geometry": case_geometry.to_json()})
    cases += [{"id": f"toy_x{n:03d}", "patient": f"px{n:03d}", "file": None,  # as prepare excludes a QC failure
               "status": "excluded", "reasons": ["toy exclusion"], "qc": {}, "registration": {}}
              for n in range(excluded)]
    write_json(out / "manifest.json", {
        "format": FORMAT, "version": VERSION, "geometry": geometry.to_json(),
        "objects": list(objects), "kinds": [o.kind for o in omap.objects[:len(objects)]],
        "aligned_bones": bones, "drr_types": list(DRR_TYPES), "units": dict(DRR_UNITS),
        "cases": cases, "generator": {"name": "toy", "seed": seed, "window": list(WINDOW)}})
    return out
