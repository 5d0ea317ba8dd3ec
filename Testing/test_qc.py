"""Segmentation QC: volumes, components, holes and the flags that exclude a case."""

from __future__ import annotations

import numpy as np
import pytest

from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.volume import Volume, read_ct, read_labels
from MSKdeXTraining.objects import ObjectMap, ObjectSpec, load_object_map
from MSKdeXTraining.qc import (FACES, FAT_OR_AIR_HU, METAL_HU, METAL_MARGIN_MM, METAL_MIN_CM3, MUSCLE_HU_RANGE, check_hu,
                               segmentation_qc, volume_flag)


def _volume(array: np.ndarray, background: int = 0, pad: int = 1) -> Volume:
    """``array`` on a 5 mm grid, padded with ``background`` so that no object touches a face."""
    return Volume(np.pad(array, pad, constant_values=background), (5.0,) * 3, (0.0, 0.0, 0.0), np.eye(3))


def _labels(array: np.ndarray, pad: int = 1) -> Volume:
    return _volume(array.astype(np.uint8), pad=pad)


def _ct(hu: np.ndarray) -> Volume:
    return _volume(hu.astype(np.int16), -1000)


def _tissue(labels: np.ndarray) -> np.ndarray:
    """Soft tissue (40 HU) in the objects, air around."""
    return np.where(labels > 0, 40, -1000)


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


def test_progress_is_reported_after_each_object():
    """So that a long QC (Slicer: a full TotalSegmentator segmentation) shows how far it is and
    can be cancelled between objects."""
    objects = load_object_map("synthetic")
    calls = []
    segmentation_qc(_labels(_healthy()), objects, progress=lambda f, m: calls.append((f, m)))
    n = len(objects.objects)
    assert [f for f, _ in calls] == [k / n for k in range(1, n + 1)]
    assert calls[0][1] == f"checked {objects.objects[0].name} (1 of {n})"


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
    spec = load_object_map("synthetic").to_json()
    for o in spec["objects"]:
        o.pop("sides", None)
    a = _healthy()
    a[18] = 0  # a gap between the left and the right femur
    qc = segmentation_qc(_labels(a), ObjectMap.from_json(spec, "no sides"))
    assert qc.objects["femur"].components == 2 and qc.warnings == [], qc.warnings


def test_custom_range_and_real_segmentation(shared_data):
    folder = shared_data / "totalsegmentator-example"
    labels = read_labels(folder / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    qc = segmentation_qc(labels, objects)
    # the CT ends in the thighs: gluteus maximus fails; the bones cut there and iliopsoas (the
    # map's iliacus, cut_at_region: it runs up the spine) warn
    assert {k for k, o in qc.objects.items() if "truncated" in o.flags} == {
        "gluteus_maximus", "iliacus", "pelvis", "femur"}
    assert [m.split(":")[0] for m in qc.failed] == ["gluteus_maximus"]
    assert objects["iliacus"].cut_at_region and not qc.objects["iliacus"].failing
    assert qc.objects["femur"].faces == ["first slice"] and not qc.objects["femur"].failing
    assert abs(qc.objects["pelvis"].volume_cm3 - 707.778) < 0.01
    tight = segmentation_qc(labels, objects, ranges={"sacrum": (500.0, 900.0)})
    assert tight.failed == qc.failed + [m for m in tight.failed if m.startswith("sacrum")]
    assert len(tight.failed) == 2


def test_metal_near_an_object_fails_it():
    """A femoral stem (1 cm3 at the 12-bit ceiling, 3071 HU) fails the femur, whose box holds it,
    and no object farther than the margin; one stray bright voxel (0.125 cm3) fails nothing."""
    a, objects = _healthy(), load_object_map("synthetic")
    hu = _tissue(a)
    clean = segmentation_qc(_labels(a), objects, ct=_ct(hu))
    assert clean.ok and {o.metal_cm3 for o in clean.objects.values()} == {0.0}
    assert clean.to_json()["objects"]["femur"]["metal_cm3"] == 0.0
    assert "metal_cm3" not in segmentation_qc(_labels(a), objects).to_json()["objects"]["femur"]

    hu[20:22, 10:12, 10:12] = 3071              # in the right femur (rows 18-21)
    hu[50, 50, 50] = 3071                      # a stray voxel far from every object's box
    qc = segmentation_qc(_labels(a), objects, ct=_ct(hu))
    # the left femur's box ends at row 17, 3 voxels (15 mm) away; gluteus maximus left starts
    # at row 22, its widened box at row 20
    assert METAL_MARGIN_MM == 10.0 and METAL_MIN_CM3 <= 1.0
    assert {k: (o.metal_cm3, o.metal_sides) for k, o in qc.objects.items() if "metal" in o.flags} == {
        "femur": (1.0, ["right"]), "gluteus_maximus": (1.0, ["left"])}
    assert qc.objects["pelvis"].metal_cm3 == 0.0
    assert qc.failed[-1] == (f"femur: 1.0 cm3 of CT voxels at or above {METAL_HU:g} HU within 10 mm of the "
                            "bounding box of its right side (an implant or its artefacts): its DRRs, volume "
                            "and mass would not be tissue's")
    hu[20:22, 10:12, 10:12] = 2994              # just below the threshold: dense bone, not metal
    assert segmentation_qc(_labels(a), objects, ct=_ct(hu)).ok

    ct = _ct(hu)
    shifted = Volume(ct.array, ct.spacing, (1.0, 0.0, 0.0), ct.direction)
    with pytest.raises(InputError, match=r"different grids \(origin .*expected the labels on the CT's grid"):
        segmentation_qc(_labels(a), objects, ct=shifted)


def test_the_real_ct_holds_a_left_hip_implant(shared_data):
    """The TotalSegmentator example CT has a left femoral stem (7.5 cm3 above 2995 HU, up to
    3382 HU): the left side's bones and the muscles around it fail, the sacrum does not."""
    folder = shared_data / "totalsegmentator-example"
    qc = segmentation_qc(read_labels(folder / "example_seg_fast_force_split.nii.gz"),
                         load_object_map("totalsegmentator"), ct=read_ct(folder / "example_ct.nii.gz"))
    metal = {k: o.metal_sides for k, o in qc.objects.items() if "metal" in o.flags}
    assert metal == {k: ["left"] for k in ("gluteus_maximus", "gluteus_medius", "gluteus_minimus",
                                            "iliacus", "pelvis", "femur")}
    assert abs(qc.objects["femur"].metal_cm3 - 7.452) < 1e-3 and qc.objects["sacrum"].metal_cm3 == 0.0
    assert sum("at or above 2995 HU" in m for m in qc.failed) == 6


def test_objects_cut_by_the_scan_range():
    """Without the padding the pelvis (rows 0-9) touches the first slice and every block the
    first rows and columns: a truncated muscle fails the case, a truncated bone warns."""
    qc = segmentation_qc(_labels(_healthy(), pad=0), load_object_map("synthetic"))
    assert qc.objects["pelvis"].faces == ["first slice"]  # rows 5-24 keep off the row/column faces
    assert qc.objects["pelvis"].flags == ["truncated"] and not qc.objects["pelvis"].failing
    assert "pelvis: touches the label map's first slice: cut by the scan range or field of view, its " \
           "volume and mass fall short" in qc.warnings
    a = _healthy()
    a[35, 5:25, 0:25] = 16                       # gluteus minimus right (row 35) reaches column 0
    qc = segmentation_qc(_labels(a, pad=0), load_object_map("synthetic"))
    assert qc.objects["gluteus_minimus"].faces == ["first column"] == [FACES[4]]
    assert qc.objects["gluteus_minimus"].failing and not qc.ok
    assert qc.failed == ["gluteus_minimus: touches the label map's first column: cut by the scan range or "
                         "field of view, its volume and mass fall short"]


def test_flag_thresholds_are_inclusive_where_documented():
    """Volumes at the range ends are plausible; 90 % in the main part is not fragmented;
    exactly METAL_MIN_CM3 of voxels at exactly METAL_HU is metal."""
    assert volume_flag(150.0, (150.0, 3000.0)) is None and volume_flag(3000.0, (150.0, 3000.0)) is None
    assert volume_flag(149.9, (150.0, 3000.0))[0] == "volume_low"
    assert volume_flag(3000.1, (150.0, 3000.0))[0] == "volume_high"
    one = ObjectMap("one", (ObjectSpec("thing", "bone", (1,)),), "ignore")
    a = np.zeros((12, 12, 12), np.uint8)
    a[1:9, 1:3, 1:3] = 1                        # 32 voxels and islands of 4 and 4: 90 % in the
    a[1:2, 6:8, 6:8] = a[1:2, 6:8, 9:11] = 1    # two largest (an object without sides)
    hu = _tissue(a)
    metal = round(METAL_MIN_CM3 / 0.125)        # voxels of 0.125 cm3 (5 mm grid): exactly METAL_MIN_CM3
    hu[10, 6, 6:6 + metal] = METAL_HU           # 10 mm (the margin) past the box's last slice
    qc = segmentation_qc(_labels(a), one, ct=_ct(hu))
    assert qc.objects["thing"].largest_fraction == pytest.approx(0.9)
    assert "fragmented" not in qc.objects["thing"].flags
    assert qc.objects["thing"].metal_cm3 == pytest.approx(METAL_MIN_CM3)
    assert qc.objects["thing"].flags == ["metal"]


def test_metal_margin_is_in_mm_per_axis():
    """On a (4, 5, 2) mm grid the 10 mm margin is 3 voxels along i and 5 along k (rounded up):
    metal 5 slices below the object counts, metal 3 columns past it counts, 4 columns past does not."""
    one = ObjectMap("one", (ObjectSpec("thing", "bone", (1,)),), "ignore")
    a = np.zeros((40, 20, 24), np.uint8)        # [k, j, i]
    a[15:25, 5:15, 5:15] = 1
    hu = np.where(a > 0, 40, -1000).astype(np.int16)
    hu[10, 5:15, 5:15] = 3071                   # 100 voxels, 5 slices (10 mm) below the box
    hu[15:20, 5:15, 17] = 3071                  # 50 voxels, 3 columns (12 mm) past it
    hu[15:25, 5:15, 18:20] = 3071               # 200 voxels, 4-5 columns (16 mm) past it
    grid = dict(spacing=(4.0, 5.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    labels, ct = Volume(a, **grid), Volume(hu, **grid)
    qc = segmentation_qc(labels, one, ct=ct)
    assert qc.objects["thing"].metal_cm3 == pytest.approx(150 * 0.04)


def test_enclosed_cavities_are_6_connected():
    """Background is 6-connected (the dual of the objects' 26-connectivity): cavities that touch
    the outside only at a corner are holes."""
    a = np.ones((5, 5, 5), np.uint8)
    a[0, 0, 0] = a[1, 1, 1] = a[2, 2, 2] = 0    # a diagonal chain of empty voxels from a corner
    qc = segmentation_qc(_labels(a), ObjectMap("one", (ObjectSpec("thing", "bone", (1,)),), "ignore"))
    assert qc.objects["thing"].holes == 2 and qc.objects["thing"].components == 1


def test_check_hu_refuses_muscles_below_the_hu_range_and_a_ct_without_fat_or_air():
    """The muscles' median must lie in MUSCLE_HU_RANGE on both sides; a lowest value at exactly
    FAT_OR_AIR_HU is not fat or air."""
    a, objects = _healthy(), load_object_map("synthetic")
    check_hu(_ct(_tissue(a)), _labels(a), objects, "ct.nii")
    low = np.where(a > 0, MUSCLE_HU_RANGE[0] - 100, -1000)
    with pytest.raises(InputError, match=r"ct.nii: the muscles' median is -300, not HU"):
        check_hu(_ct(low), _labels(a), objects, "ct.nii")
    no_air = _volume(np.where(a > 0, 40, FAT_OR_AIR_HU).astype(np.int16), int(FAT_OR_AIR_HU))
    with pytest.raises(InputError, match=r"ct.nii: its lowest value is -50, not HU"):
        check_hu(no_air, _labels(a), objects, "ct.nii")


def test_low_volume_fails_and_a_muscle_cut_at_region_only_warns():
    """volume_low fails the case; a muscle the map marks cut_at_region (TotalSegmentator's
    iliopsoas) may touch a face of the label map with a warning (no shared data needed)."""
    a = np.zeros((6, 6, 6), np.uint8)
    a[0:3, 1:4, 1:4] = 1                        # 27 voxels (3.375 cm3) touching the first slice
    small = segmentation_qc(_labels(a), ObjectMap("m", (ObjectSpec("thing", "bone", (1,)),), "ignore"),
                            ranges={"thing": (5.0, 100.0)})
    assert small.objects["thing"].flags == ["volume_low"] and not small.ok
    cut = ObjectMap("m", (ObjectSpec("iliacus", "muscle", (1,), cut_at_region=True),), "ignore")
    qc = segmentation_qc(_labels(a, pad=0), cut, ranges={"iliacus": (1.0, 100.0)})
    assert qc.objects["iliacus"].flags == ["truncated"] and qc.ok and len(qc.warnings) == 1


def test_swapped_sides_fail_the_case():
    """An object whose left side lies to the patient's right of its right side (LPS x, +x the
    patient's left) fails: the map's sides are swapped (or the CT's orientation is wrong)."""
    a = np.zeros((10, 10, 40), np.uint8)
    a[2:8, 2:8, 25:35] = 1  # at larger i, so larger LPS x: the patient's left
    a[2:8, 2:8, 5:15] = 2
    right_way = ObjectMap("m", (ObjectSpec("femur", "bone", (1, 2), {"left": (1,), "right": (2,)}),), "ignore")
    swapped = ObjectMap("m", (ObjectSpec("femur", "bone", (1, 2), {"left": (2,), "right": (1,)}),), "ignore")
    ranges = {"femur": (1.0, 100.0)}
    good = segmentation_qc(_labels(a), right_way, ranges)
    assert good.ok and good.objects["femur"].side_x_mm == {"left": 152.5, "right": 52.5}
    assert good.to_json()["objects"]["femur"]["side_x_mm"] == {"left": 152.5, "right": 52.5}
    bad = segmentation_qc(_labels(a), swapped, ranges)
    assert bad.objects["femur"].flags == ["sides_swapped"] and not bad.ok
    assert "left side lies to the patient's right of its right side (LPS x 52 vs 152 mm" in bad.failed[0]
    mirrored = _labels(a)  # the same labels in a CT whose x axis runs the other way: its sides are swapped
    mirrored = Volume(mirrored.array, mirrored.spacing, (195.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    assert segmentation_qc(mirrored, right_way, ranges).objects["femur"].flags == ["sides_swapped"]
