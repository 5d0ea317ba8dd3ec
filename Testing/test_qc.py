"""Segmentation QC: volumes, components, holes and the flags that exclude a case."""

from __future__ import annotations

import numpy as np

from MSKdeXTraining.imaging.volume import Volume, read_labels
from MSKdeXTraining.objects import load_object_map
from MSKdeXTraining.qc import segmentation_qc


def _labels(array: np.ndarray, spacing: float = 5.0) -> Volume:
    return Volume(array.astype(np.uint8), (spacing,) * 3, (0.0, 0.0, 0.0), np.eye(3))


def _healthy() -> np.ndarray:
    """Blocks for every object of the synthetic map, sized inside the plausible ranges."""
    a = np.zeros((60, 60, 60), np.uint8)
    blocks = {1: (0, 10), 2: (10, 14), 3: (14, 18), 4: (18, 22), 11: (22, 26), 12: (26, 30),
              13: (30, 32), 14: (32, 34), 15: (34, 35), 16: (35, 36), 17: (36, 37), 18: (37, 38),
              19: (38, 39), 20: (39, 40), 21: (40, 41), 22: (41, 42)}
    for value, (lo, hi) in blocks.items():
        a[lo:hi, 5:25, 5:25] = value
    return a


def test_healthy_segmentation_passes_with_exact_volumes():
    qc = segmentation_qc(_labels(_healthy()), load_object_map("synthetic"))
    assert qc.ok and qc.failed == [] and qc.warnings == []
    assert qc.objects["pelvis"].volume_cm3 == 10 * 20 * 20 * 0.125
    assert qc.objects["femur"].side_volumes_cm3 == {"left": 200.0, "right": 200.0}
    assert qc.objects["femur"].components == 2  # one per side, not "fragmented"
    assert qc.to_json()["objects"]["pelvis"]["flags"] == []


def test_broken_segmentation_is_flagged():
    a = _healthy()
    a[a == 4] = 0                      # right femur missing
    a[a == 13] = 0                     # gluteus medius left missing ...
    a[a == 14] = 0                     # ... and right: the whole object is missing
    a[0:10, 5:25, 5:25][:, 6:8, :] = 0   # pelvis cut in three pieces of similar size
    a[0:10, 5:25, 5:25][:, 13:15, :] = 0
    a[11:13, 12:16, 12:16] = 0         # a cavity inside the sacrum
    a[42:60, :, :] = 21                # pectineus left grossly too large
    qc = segmentation_qc(_labels(a), load_object_map("synthetic"))
    assert not qc.ok
    flags = {k: v.flags for k, v in qc.objects.items()}
    assert flags["femur"] == ["missing"] and "right side" in " ".join(qc.failed)
    assert flags["gluteus_medius"] == ["missing"]
    assert "volume_high" in flags["pectineus"]
    assert "fragmented" in flags["pelvis"] and qc.objects["pelvis"].components == 3
    assert qc.objects["sacrum"].holes == 1 and flags["sacrum"] == ["holes"]
    assert len(qc.failed) == 3 and len(qc.warnings) == 2
    assert qc.to_json()["ok"] is False


def test_bilateral_object_without_sides_is_not_fragmented():
    """A map that keeps both femurs (or muscles) under one label without "sides": two
    components are its two sides, not fragments."""
    from MSKdeXTraining.objects import ObjectMap

    spec = load_object_map("synthetic").to_json()
    for o in spec["objects"]:
        o.pop("sides", None)
    a = _healthy()
    a[18] = 0  # a gap between the left and the right femur
    qc = segmentation_qc(_labels(a), ObjectMap.from_json(spec, "no sides"))
    assert qc.objects["femur"].components == 2 and qc.warnings == [], qc.warnings


def test_custom_range_and_real_segmentation(shared_data):
    labels = read_labels(shared_data / "totalsegmentator-example" / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    qc = segmentation_qc(labels, objects)
    assert qc.ok, qc.failed
    assert abs(qc.objects["pelvis"].volume_cm3 - 707.778) < 0.01
    tight = segmentation_qc(labels, objects, ranges={"sacrum": (500.0, 900.0)})
    assert tight.failed == [m for m in tight.failed if m.startswith("sacrum")] and not tight.ok
