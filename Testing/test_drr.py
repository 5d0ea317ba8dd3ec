"""mskdex drr: the real CT (sums = voxel values), output files, union of masks, bad input."""

import json

import numpy as np
import pytest
from conftest import write_image
import SimpleITK as sitk

from MSKdeXTraining.commands import drr as drr_command
from MSKdeXTraining.ct_input import read_ct_and_labels
from MSKdeXTraining.drr import drr_from_files, read_drr_stack, render_drr, view_center
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose
from MSKdeXTraining.imaging.volume import RESAMPLE_FIX, InputError, Volume
from MSKdeXTraining.objects import ObjectMap, ObjectMapError, ObjectSpec, load_object_map

WIDE = Geometry(rows=200, cols=160, pixel_spacing=(3.0, 3.0))  # holds every object of the example CT


@pytest.fixture(scope="module")
def example(shared_data):
    d = shared_data / "totalsegmentator-example"
    return d / "example_ct.nii.gz", d / "example_seg_fast_force_split.nii.gz"


@pytest.fixture(scope="module")
def example_result(example):
    objects = load_object_map("totalsegmentator")
    ct, labels = read_ct_and_labels(*example, objects)
    return ct, labels, render_drr(ct, labels, objects, WIDE)


def test_real_ct_drr_sums_equal_voxel_volume_and_mass(example_result):
    _, _, result = example_result
    rows = result.metrics["objects"]
    assert [r["name"] for r in rows] == list(load_object_map("totalsegmentator").names)
    for r in rows:
        assert not r["absent"] and r["voxels"] > 1000 and r["implausible_volume"] is None
        assert r["lost_fraction"] == {"wvdrr": 0.0, "vdrr": 0.0, "mdrr": 0.0}
        assert r["volume_cm3_drr"] == pytest.approx(r["volume_cm3_3d"], rel=1e-3)
        assert r["mass_g_drr"] == pytest.approx(r["mass_g_3d"], rel=1e-3)
    assert result.metrics["sums_within_tolerance"]


def test_sum_of_object_wvdrrs_is_the_drr_of_the_union(example_result):
    ct, labels, result = example_result
    omap = load_object_map("totalsegmentator")
    union = ObjectMap("union", (ObjectSpec("all", "muscle", tuple(v for o in omap.objects for v in o.labels)),),
                      "ignore")
    whole = render_drr(ct, labels, union, WIDE, result.pose).stack.data  # the same view
    summed = result.stack.data.sum(dim=1)
    np.testing.assert_allclose(summed[:2].numpy(), whole[:2, 0].numpy(), rtol=1e-4, atol=1e-6)
    assert float(whole[0].max()) > 1.0  # a real line integral through the pelvis


def test_cli_reports_the_real_cts_implant_and_cut_muscles(example, tmp_path, capsys):
    """The example CT's left hip stem and the muscles its scan range cuts are in metrics.json
    and in the warnings, with the sums (which hold whatever the HU)."""
    from MSKdeXTraining.cli import main

    out = tmp_path / "o"
    assert main(["drr", "--ct", str(example[0]), "--labels", str(example[1]), "--objects", "totalsegmentator",
                 "--out", str(out), "--rows", "160", "--cols", "160", "--pixel-spacing", "3.0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    qc = metrics["qc"]["objects"]
    assert qc["femur"]["flags"] == ["holes", "truncated", "metal"] and qc["femur"]["metal_cm3"] == 7.452
    assert "metal" not in qc["sacrum"]["flags"] and metrics["sums_within_tolerance"]
    captured = capsys.readouterr()
    assert "holes, truncated, metal" in captured.out
    assert captured.err.count("(segmentation QC would exclude this case from a dataset)") == 7  # 6 metal, 1 cut
    # the warnings that do not exclude a case are explained too (a bone cut by the scan range, holes)
    assert "note: femur: touches the label map's" in captured.err and "note: femur: " in captured.err
    assert "outside FOV 0.09 %, truncated, metal" in captured.out  # the iliacus reaches past the detector


def _write(path, array, spacing=(2.0, 2.0, 2.5), origin=(0.0, 0.0, 0.0)):
    return write_image(path, array, spacing, origin)


@pytest.fixture()
def phantom(tmp_path):
    """Small CT + labels in the synthetic convention: pelvis (1) and gluteus maximus L (11)."""
    k, j, i = np.mgrid[:20, :24, :28]
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[((i - 10) ** 2 + (j - 12) ** 2 + (k - 10) ** 2) < 36] = 1
    labels[((i - 19) ** 2 + (j - 12) ** 2 + (k - 9) ** 2) < 25] = 11
    ct = np.where(labels == 1, 600, np.where(labels == 11, 45, -80)).astype(np.int16)
    return _write(tmp_path / "ct.nii.gz", ct), _write(tmp_path / "labels.nrrd", labels), ct, labels


def test_cli_writes_stacks_with_geometry_metadata_and_metrics(phantom, tmp_path, capsys):
    ct_path, labels_path, _, labels = phantom
    out = tmp_path / "out"
    parser = __import__("argparse").ArgumentParser()
    drr_command.add_arguments(parser)
    args = parser.parse_args(["--ct", str(ct_path), "--labels", str(labels_path), "--objects", "synthetic", "--out", str(out),
                              "--rows", "40", "--cols", "48", "--pixel-spacing", "2.5", "2.0",
                              "--sdd", "1000", "--sod", "700"])
    assert drr_command.run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mdrr.nrrd", "metrics.json", "vdrr.nrrd", "wvdrr.nrrd"]
    metrics = json.loads((out / "metrics.json").read_text())
    names = list(load_object_map("synthetic").names)
    for t, unit in (("wvdrr", "1 (line integral of mu)"), ("vdrr", "cm (cm3/cm2)"), ("mdrr", "g/cm2")):
        array, meta = read_drr_stack(out / f"{t}.nrrd")
        image = sitk.ReadImage(str(out / f"{t}.nrrd"))
        assert array.shape == (9, 40, 48) and image.GetSize() == (48, 40, 9)
        assert image.GetSpacing() == pytest.approx((2.0, 2.5, 1.0))
        assert image.GetOrigin() == pytest.approx((-47 * 1.0, -39 * 1.25, 0.0))
        assert meta["drr_type"] == t and meta["units"] == unit and meta["objects"] == names
        assert Geometry.from_json(meta["geometry"]) == Geometry(40, 48, (2.5, 2.0), 1000, 700)
    vdrr, _ = read_drr_stack(out / "vdrr.nrrd")
    pelvis = metrics["objects"][names.index("pelvis")]
    assert vdrr[names.index("pelvis")].sum() * 0.05 == pytest.approx(pelvis["volume_cm3_drr"], rel=1e-5)
    assert pelvis["volume_cm3_3d"] == pytest.approx((labels == 1).sum() * 0.01, rel=1e-9)
    assert metrics["objects"][0]["voxels"] == (labels == 11).sum()
    absent = [r["name"] for r in metrics["objects"] if r["absent"]]
    assert absent == [n for n in names if n not in ("pelvis", "gluteus_maximus")] == metrics["absent"]
    assert all(not vdrr[names.index(n)].any() for n in absent)
    # a 9 cm3 pelvis and a 5 cm3 gluteus maximus are not a hip: flagged, and the CLI asks about the map
    assert metrics["implausible_volume"] == ["gluteus_maximus", "pelvis"]
    assert "below the plausible 150-2500 cm3" in pelvis["implausible_volume"]
    assert "is 'synthetic' (--objects) the map of" in capsys.readouterr().err
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_per_side_and_resampled_labels(phantom, tmp_path):
    ct_path, _, _, labels = phantom
    shifted = _write(tmp_path / "shifted.nii.gz", labels, spacing=(2.0, 2.0, 2.5), origin=(2.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"shifted.nii.gz.*origin.*`--resample-labels`"):
        drr_from_files(ct_path, shifted, tmp_path / "o", "synthetic", Geometry(48, 48))
    result = drr_from_files(ct_path, shifted, tmp_path / "o", "synthetic", Geometry(48, 48), resample=True,
                            per_side=True)
    names = [r["name"] for r in result.metrics["objects"]]
    assert "gluteus_maximus_left" in names and "femur_right" in names
    left = result.metrics["objects"][names.index("gluteus_maximus_left")]
    assert left["voxels"] == np.roll(labels == 11, -1, axis=2)[:, :, :-1].sum()  # shifted by one voxel
    assert "plausible 75-1500 cm3" in left["implausible_volume"]  # one side: half the range
    assert result.metrics["resampled_labels"] is True
    with pytest.raises(FileExistsError, match="wvdrr.nrrd: exists"):  # refused before any work
        drr_from_files(ct_path, shifted, tmp_path / "o", "synthetic", Geometry(48, 48), resample=True)
    # a map whose sides are swapped is caught per side too (the split objects have no sides of their own)
    k, j, i = np.mgrid[:20, :24, :28]
    both = np.where(((i - 4) ** 2 + (j - 12) ** 2 + (k - 9) ** 2) < 9, 12, labels).astype(np.uint8)  # right: -x
    swapped = ObjectMap("swapped", (ObjectSpec("gluteus_maximus", "muscle", (11, 12), {"left": (12,), "right": (11,)}),
                                    ObjectSpec("pelvis", "bone", (1,))), "ignore")
    result = drr_from_files(ct_path, _write(tmp_path / "both.nrrd", both), tmp_path / "s", swapped, Geometry(48, 48),
                            per_side=True)
    qc = result.metrics["qc"]["objects"]
    assert qc["gluteus_maximus_left"]["flags"][-1] == qc["gluteus_maximus_right"]["flags"][-1] == "sides_swapped"
    assert "pelvis" in qc and "sides_swapped" not in qc["pelvis"]["flags"]


@pytest.mark.parametrize("case, field", [
    ("grid", "spacing"), ("nan", "NaN"), ("float_labels", "non-integer"), ("unmapped", "label values [7]"),
    ("2d", "3D image"), ("missing", "file not found"), ("not_hu", "the muscles' median is 1069, not HU"),
    ("label_map_as_ct", "its lowest value is 0, not HU"), ("wrong_map", "holds none of the labels of object map"),
])
def test_bad_input_errors_name_file_and_field(phantom, tmp_path, case, field):
    ct_path, labels_path, ct, labels = phantom
    objects = "synthetic"
    if case == "grid":
        labels_path = _write(tmp_path / "bad.nii.gz", labels, spacing=(2.0, 2.0, 3.0))
    elif case == "nan":
        # NIfTI writers turn NaN into 0: MetaImage keeps them
        ct_path = _write(tmp_path / "bad.nii.gz.mha", np.where(labels == 1, np.nan, ct.astype(np.float32)))
    elif case == "float_labels":
        labels_path = _write(tmp_path / "bad.nii.gz", labels.astype(np.float32) + 0.5)
    elif case == "unmapped":
        labels_path = _write(tmp_path / "bad.nii.gz", np.where(labels == 11, 7, labels).astype(np.uint8))
        objects = tmp_path / "map.json"
        strict = ObjectMap("strict", (ObjectSpec("pelvis", "bone", (1,)),), "error")
        objects.write_text(json.dumps(strict.to_json()))
    elif case == "wrong_map":  # a map whose objects the label map does not hold: every DRR would be 0
        labels_path = _write(tmp_path / "bad.nii.gz", labels)
        objects = tmp_path / "map.json"
        other = ObjectMap("other", (ObjectSpec("pelvis", "bone", (50,)),), "ignore")
        objects.write_text(json.dumps(other.to_json()))
    elif case == "2d":
        ct_path = _write(tmp_path / "bad.nii.gz", ct[10], spacing=(2.0, 2.0), origin=(0.0, 0.0))
    elif case == "not_hu":  # stored values without their rescale intercept (-1024)
        ct_path = _write(tmp_path / "bad.nii.gz", ct + 1024)
    elif case == "label_map_as_ct":  # its muscle labels (11) lie within the muscles' HU range
        ct_path = _write(tmp_path / "bad.nii.gz", labels)
    else:
        ct_path = tmp_path / "bad.nii.gz"
    with pytest.raises((InputError, ObjectMapError)) as err:
        drr_from_files(ct_path, labels_path, tmp_path / "out", objects, Geometry(32, 32))
    assert "bad.nii.gz" in str(err.value) and field in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_main_reports_bad_input_as_one_line(phantom, tmp_path, capsys):
    from MSKdeXTraining.cli import main

    ct_path, labels_path, _, _ = phantom
    code = main(["drr", "--ct", str(tmp_path / "nope.nii.gz"), "--labels", str(labels_path), "--objects", "synthetic",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "nope.nii.gz: file not found" in capsys.readouterr().err


def test_metrics_flag_a_detector_too_small_and_match_attenuation_in_parallel(phantom):
    """A 12 mm detector cuts both spheres: outside_fov names them (also when 1-2 % of each falls
    outside a 46 mm one), their lost fractions are what the DRR sums miss of the 3D values, and
    the sums are out of tolerance. In parallel geometry the WVDRR sum is the attenuation
    integral; in perspective it is magnified by about M^2."""
    ct_path, labels_path, _, _ = phantom
    omap = load_object_map("synthetic")
    ct, labels = read_ct_and_labels(ct_path, labels_path, omap)
    small = render_drr(ct, labels, omap, Geometry(6, 6, (2.0, 2.0))).metrics
    assert small["outside_fov"] == ["gluteus_maximus", "pelvis"]
    assert small["sums_within_tolerance"] is False and small["max_rel_error"] > 0.5
    for r in (r for r in small["objects"] if not r["absent"]):
        assert all(0.5 < f < 1 for f in r["lost_fraction"].values()), r["lost_fraction"]
        assert r["volume_cm3_drr"] == pytest.approx(r["volume_cm3_3d"] * (1 - r["lost_fraction"]["vdrr"]), rel=1e-4)
        assert r["mass_g_drr"] == pytest.approx(r["mass_g_3d"] * (1 - r["lost_fraction"]["mdrr"]), rel=1e-4)
        assert r["volume_rel_error"] == pytest.approx(-r["lost_fraction"]["vdrr"], abs=1e-4)
    assert small["max_rel_error"] == max(abs(r[k]) for r in small["objects"]
                                         for k in ("volume_rel_error", "mass_rel_error"))
    sliver = render_drr(ct, labels, omap, Geometry(40, 23, (2.0, 2.0))).metrics  # 1-2 % of each outside
    assert sliver["outside_fov"] == ["gluteus_maximus", "pelvis"]
    assert all(0.01 < r["lost_fraction"]["vdrr"] < 0.02 for r in sliver["objects"] if not r["absent"])
    parallel = render_drr(ct, labels, omap, Geometry(40, 48, (2.0, 2.0), parallel=True)).metrics
    perspective = render_drr(ct, labels, omap, Geometry(40, 48, (2.0, 2.0))).metrics
    assert parallel["outside_fov"] == [] and parallel["sums_within_tolerance"] is True
    for par, per in zip(parallel["objects"], perspective["objects"]):
        if par["absent"]:
            assert par["wvdrr_sum_cm2"] == par["attenuation_cm2_3d"] == 0
            continue
        assert par["attenuation_cm2_3d"] > 0.5 and par["lost_fraction"] == {"wvdrr": 0.0, "vdrr": 0.0, "mdrr": 0.0}
        assert par["wvdrr_sum_cm2"] == pytest.approx(par["attenuation_cm2_3d"], rel=1e-5)
        assert per["attenuation_cm2_3d"] == par["attenuation_cm2_3d"]
        assert per["wvdrr_sum_cm2"] == pytest.approx(per["attenuation_cm2_3d"] * (1100 / 880) ** 2, rel=0.01)


def test_default_view_centres_the_hip_region_of_a_long_ct():
    """A CT running 400 mm above the hip is viewed centred on its hip-region objects (a femur,
    marked cut_at_region, does not pull the view down), not on the CT's centre, which would
    leave the hip off a 240 mm detector."""
    labels = np.zeros((120, 24, 28), np.uint8)
    k, j, i = np.mgrid[:120, :24, :28]
    labels[((i - 10) ** 2 + (j - 12) ** 2 + (k - 12) ** 2) < 36] = 1  # pelvis, k 7-17
    labels[((i - 19) ** 2 + (j - 12) ** 2 + (k - 10) ** 2) < 25] = 11  # gluteus maximus left, k 6-14
    labels[:5, 10:14, 6:10] = 3  # femur left, cut by the scan's lower face
    grid = dict(spacing=(4.0, 4.0, 4.0), origin=(-50.0, -40.0, -900.0), direction=np.eye(3))
    ct = Volume(np.where(labels > 0, 300, -80).astype(np.int16), **grid)
    labels = Volume(labels, **grid)
    omap = load_object_map("synthetic")
    centre = view_center(labels, omap)
    np.testing.assert_allclose(centre, (-50 + 4 * 14, -40 + 4 * 12, -900 + 4 * 11.5))  # i 5-23, j 7-17, k 6-17
    geometry = Geometry(60, 60, (4.0, 4.0))
    shown = render_drr(ct, labels, omap, geometry).metrics
    assert shown["outside_fov"] == [] and shown["sums_within_tolerance"]
    assert shown["objects"][omap.names.index("femur")]["voxels"] > 0
    ct_centred = render_drr(ct, labels, omap, geometry, default_ap_pose(ct.center, geometry)).metrics
    assert set(ct_centred["outside_fov"]) == {"gluteus_maximus", "pelvis", "femur"}
    without_region = ObjectMap("femur only", (omap.objects[omap.names.index("femur")],), "ignore")
    np.testing.assert_allclose(view_center(labels, without_region), (-50 + 4 * 7.5, -40 + 4 * 11.5, -900 + 4 * 2))
    empty = labels.with_array(np.zeros_like(labels.array))
    np.testing.assert_allclose(view_center(empty, omap), labels.center)


def test_read_ct_and_labels_default_hint_and_resample(phantom, tmp_path):
    """Without a caller's hint (register, assemble) a grid mismatch says how to fix it, naming
    both files; ``resample`` puts the labels on the CT grid instead."""
    ct_path, _, _, labels = phantom
    shifted = _write(tmp_path / "shifted.nrrd", labels, origin=(2.0, 0.0, 0.0))
    omap = load_object_map("synthetic")
    with pytest.raises(InputError, match=r"shifted.nrrd: label grid differs from CT .*ct.nii.gz: "
                                         r"origin \[2.0, 0.0, 0.0\] vs \[0.0, 0.0, 0.0\]") as err:  # labels', CT's
        read_ct_and_labels(ct_path, shifted, omap)
    assert str(err.value).endswith(f"; {RESAMPLE_FIX}")
    ct, moved = read_ct_and_labels(ct_path, shifted, omap, resample=True)
    assert not ct.grid_differences(moved)
    assert np.array_equal(moved.array[:, :, 1:], labels[:, :, :-1])  # one voxel (2 mm) along i
