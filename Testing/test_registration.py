"""Bone 2D/3D registration: known poses recovered from simulated radiographs, inputs checked."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from MSKdeXTraining.cli import main
from MSKdeXTraining.cohort import RigidBody, XraySettings, simulate_radiograph
from MSKdeXTraining.cohort.generate import generate_case
from MSKdeXTraining.dicom_radiograph import HIP_ABOVE_TABLE_MM
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.geometry import (Geometry, apply, default_ap_pose, project, resample_image,
                                             rigid)
from MSKdeXTraining.imaging.qc_images import overlay_image, write_qc_figure
from MSKdeXTraining.imaging.registration import (
    GC_THRESHOLD, PRESETS, Level, RegistrationResult, RegistrationSettings, body_centroid,
    default_isocenter, femoral_head_center, read_xray, register_bodies, register_body, register_bone,
    pose_from_params, registration_errors, render_body, rigid_bodies, surface_points)
from MSKdeXTraining.imaging.projector import project_objects
import MSKdeXTraining.imaging.registration.optimise as optimise
import MSKdeXTraining.imaging.registration.sequence as sequence
from MSKdeXTraining.imaging.registration.optimise import _FixedGC, _grid_search
from MSKdeXTraining.imaging.registration.settings import binned
from MSKdeXTraining.imaging.similarity import gradient_correlation
from MSKdeXTraining.imaging.volume import Volume, read_ct, read_labels
from MSKdeXTraining.objects import ObjectMap, ObjectMapError, load_object_map

#: A cheap optimiser for small phantoms (accuracy is checked, not speed); the box-like
#: phantom bone says little about depth, so its translation has a prior (5 mm SD).
QUICK = RegistrationSettings(levels=(Level(8.0, "cma", 15, 1.0), Level(0.0, "powell", 80)),
                             scale=(5.0, 5.0, 5.0, 8.0, 8.0, 8.0), translation_sd_mm=5.0)


def _phantom() -> tuple[Volume, Volume]:
    """A 4 mm CT: soft-tissue ellipsoid holding an asymmetric bone (label 1): a bar + a knob."""
    k, j, i = np.mgrid[:40, :40, :40].astype(float)
    body = ((i - 20) / 18) ** 2 + ((j - 20) / 14) ** 2 + ((k - 20) / 19) ** 2 <= 1
    bone = (np.abs(i - 17) <= 3) & (np.abs(j - 20) <= 3) & (np.abs(k - 20) <= 11)
    bone |= (np.abs(i - 23) <= 4) & (np.abs(j - 19) <= 2) & (np.abs(k - 27) <= 3)
    bone |= ((i - 16) ** 2 + (j - 22) ** 2 + (k - 10) ** 2) <= 16
    hu = np.where(body, 40, -1000).astype(np.int16)
    hu[bone] = 900
    hu[bone & ~np.pad(bone[1:-1, 1:-1, 1:-1], 1)] = 1400
    spacing, origin, direction = (4.0, 4.0, 4.0), (-78.0, -78.0, -78.0), np.eye(3)
    return (Volume(hu, spacing, origin, direction),
            Volume(bone.astype(np.uint8), spacing, origin, direction))


@pytest.fixture(scope="module")
def phantom_case():
    ct, labels = _phantom()
    g = Geometry(rows=96, cols=96, pixel_spacing=(2.5, 2.5), sdd=1000.0, sod=800.0)
    base = default_ap_pose(body_centroid(labels, (1,)), g)
    centre = apply(base, body_centroid(labels, (1,)))
    truth = rigid((3.0, -2.0, 4.0), (4.0, -3.0, 2.0), centre) @ base
    xray = simulate_radiograph(ct, labels, g, base, {"bone": RigidBody((1,), truth)},
                               XraySettings(noise_seed=3)).image
    return ct, labels, g, base, truth, xray


def test_rigid_bodies_of_builtin_maps_and_a_map_without_sides():
    assert rigid_bodies(load_object_map("synthetic")) == {
        "pelvis": (1, 2), "femur_left": (3,), "femur_right": (4,)}
    ts = rigid_bodies(load_object_map("totalsegmentator"))
    assert set(ts["pelvis"]) == {77, 78, 25} and ts["femur_left"] == (75,)
    no_sides = ObjectMap.from_json({"format": "mskdex-object-map", "version": 1, "objects": [
        {"name": "pelvis", "kind": "bone", "labels": [1]},
        {"name": "femur", "kind": "bone", "labels": [2, 3]}]})
    with pytest.raises(ObjectMapError, match="sides"):
        rigid_bodies(no_sides)


def test_registration_errors_of_known_shift():
    g = Geometry(rows=100, cols=100, pixel_spacing=(1.0, 1.0), sdd=1000.0, sod=800.0)
    pose = default_ap_pose((0.0, 0.0, 0.0), g)
    pts = np.random.default_rng(0).normal(scale=20.0, size=(200, 3))
    assert registration_errors(pose, pose, pts, g) == {"projected_mm": 0.0, "mtre_mm": 0.0, "depth_mm": 0.0}
    shifted = rigid((0, 0, 0), (2.0, 0.0, 0.0)) @ pose  # 2 mm along detector columns
    e = registration_errors(pose, shifted, pts, g)
    assert e["mtre_mm"] == pytest.approx(2.0) and e["depth_mm"] == pytest.approx(0.0)
    assert e["projected_mm"] == pytest.approx(2.0 * g.sdd / g.sod, rel=0.05)  # magnified


def test_fixed_gc_equals_gradient_correlation():
    """The cached-fixed-image GC of the optimiser is the GC of :mod:`.similarity`."""
    rng = np.random.default_rng(2)
    fixed = torch.from_numpy(rng.random((30, 40)).astype(np.float32))
    moving = torch.from_numpy(rng.random((5, 30, 40)).astype(np.float32))
    moving[0] = 3.0 * fixed + 1.0  # same image up to gain and offset: GC 1
    mask = torch.zeros(30, 40)
    mask[4:25, 6:33] = 1.0
    expected = gradient_correlation(moving, fixed.expand_as(moving), mask)
    got = _FixedGC(fixed, mask)(moving)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert float(got[0]) == pytest.approx(1.0, abs=1e-5)


def test_presets_end_at_full_resolution_and_unknown_name_is_refused():
    for name in PRESETS:
        levels = RegistrationSettings.preset(name).levels
        assert levels[-1].pixel_mm == 0.0 and levels[-1].optimizer == "powell"
        assert [lv.pixel_mm for lv in levels] == sorted((lv.pixel_mm for lv in levels), reverse=True)
    with pytest.raises(InputError, match=r"preset must be one of \('accurate', 'fast'\), got 'slow'"):
        RegistrationSettings.preset("slow")


def test_phantom_pose_recovered_deterministically(phantom_case):
    ct, labels, g, base, truth, xray = phantom_case
    pts = surface_points(labels, (1,))
    before = registration_errors(truth, base, pts, g)
    r = register_bone(ct, labels, (1,), xray, g, base, QUICK)
    after = registration_errors(truth, r.pose, pts, g)
    assert before["projected_mm"] > 5.0
    assert after["projected_mm"] < 1.5 and after["mtre_mm"] < 4.0, after
    assert r.ok and r.gc > 0.6
    again = register_bone(ct, labels, (1,), xray, g, base, QUICK)
    np.testing.assert_array_equal(again.pose, r.pose)
    other_seed = register_bone(ct, labels, (1,), xray, g, base, replace(QUICK, seed=7))
    assert not np.array_equal(other_seed.pose, r.pose)


def test_a_fine_film_is_registered_on_about_1_mm_pixels(phantom_case):
    """A 0.5 mm film (a clinical detector's pixels would be finer still) is binned to 1 mm
    first: the same pose as registering that binned film, and still the true one."""
    from MSKdeXTraining.imaging.registration.settings import FINEST_PIXEL_MM

    ct, labels, g, base, truth, xray = phantom_case
    fine = g.resized(g.rows * 5)  # 480 x 480 pixels of 0.5 mm
    film = np.kron(xray, np.ones((5, 5), np.float32))
    work = binned(fine, FINEST_PIXEL_MM)
    assert work.shape == (240, 240) and work.pixel_spacing == pytest.approx((1.0, 1.0))
    r = register_bone(ct, labels, (1,), film, fine, base, QUICK)
    same = register_bone(ct, labels, (1,), resample_image(film, fine, work), work, base, QUICK)
    np.testing.assert_array_equal(r.pose, same.pose)
    after = registration_errors(truth, r.pose, surface_points(labels, (1,)), g)
    assert after["projected_mm"] < 1.5 and r.ok, after
    assert binned(g, FINEST_PIXEL_MM) == g.resized(g.rows)  # 2.5 mm pixels stay as they are


def test_wrong_radiograph_is_flagged(phantom_case):
    ct, labels, g, base, _, xray = phantom_case
    noise = np.random.default_rng(1).random(xray.shape).astype(np.float32)
    r = register_bone(ct, labels, (1,), noise, g, base,
                      RegistrationSettings(levels=(Level(8.0, "cma", 5, 1.0),)))
    assert not r.ok and r.gc < RegistrationSettings().gc_threshold


def test_bad_radiograph_input(phantom_case, tmp_path):
    ct, labels, g, base, _, xray = phantom_case
    with pytest.raises(InputError, match="2D"):
        register_bone(ct, labels, (1,), np.stack([xray, xray]), g)
    with pytest.raises(InputError, match="differs from the geometry"):
        register_bone(ct, labels, (1,), xray[:-1], g)
    with pytest.raises(InputError, match="no voxels"):
        register_bone(ct, labels, (9,), xray, g)
    png = tmp_path / "x.png"
    sitk.WriteImage(sitk.GetImageFromArray((xray * 255).astype(np.uint8)), str(png))
    with pytest.raises(InputError, match="pixel spacing"):
        read_xray(png)
    array, geometry = read_xray(png, pixel_spacing=(1.0, 1.0), sdd=1000.0, sod=700.0)
    assert array.shape == (96, 96) and geometry.pixel_spacing == (1.0, 1.0) and geometry.sod == 700.0
    volume = tmp_path / "v.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32)), str(volume))
    with pytest.raises(InputError, match=r"v.mha: a radiograph must be a 2D image \(or one slice\), got size \(8, 8, 3\)"):
        read_xray(volume)


def test_read_xray_uses_cohort_sidecar(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 60)).astype(np.float32))
    image.SetSpacing((1.5, 1.5))
    sitk.WriteImage(image, str(tmp_path / "xray.mha"))
    g = Geometry(rows=40, cols=60, pixel_spacing=(1.5, 1.5), sdd=1050.0, sod=850.0)
    (tmp_path / "xray.json").write_text(json.dumps(
        {"format": "mskdex-xray", "version": 1, "geometry": g.to_json()}))
    assert read_xray(tmp_path / "xray.mha")[1] == g


def test_read_xray_takes_the_dicom_source_distances(tmp_path):
    from test_radiograph_io import write_dicom

    ramp = np.tile(np.arange(256, dtype=np.uint16) * 10, (200, 1))
    f = write_dicom(tmp_path / "d.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                    DistanceSourceToDetector=1150.0, DistanceSourceToPatient=920.0)
    g = read_xray(f)[1]
    # DistanceSourceToPatient reaches the table: the hips lie HIP_ABOVE_TABLE_MM nearer the source
    assert (g.sdd, g.sod, g.pixel_spacing) == (1150.0, pytest.approx(920.0 - HIP_ABOVE_TABLE_MM), (0.5, 0.5))
    assert read_xray(f, sod=900.0)[1].sod == 900.0  # the argument wins
    factor = write_dicom(tmp_path / "m.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5],
                         EstimatedRadiographicMagnificationFactor=1.25)
    with pytest.warns(UserWarning, match="assuming SDD 1100 mm$"):
        assert read_xray(factor)[1].sod == pytest.approx(1100.0 / 1.25)  # the default SDD
    plain = write_dicom(tmp_path / "p.dcm", ramp, ImagerPixelSpacing=[0.5, 0.5])
    with pytest.warns(UserWarning, match="not in the file or arguments; assuming SDD 1100 mm, SOD 880 mm"):
        g = read_xray(plain)[1]
    assert (g.sdd, g.sod) == (1100.0, 880.0)


def test_resample_image_identity_and_constant():
    g = Geometry(rows=40, cols=40, pixel_spacing=(1.0, 1.0))
    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_allclose(resample_image(img, g, g), img, atol=1e-6)
    flat = resample_image(np.full((40, 40), 3.0, np.float32), g, g.resized(10))
    np.testing.assert_allclose(flat[1:-1, 1:-1], 3.0, atol=1e-5)


def test_overlay_marks_bone_contours(phantom_case, tmp_path):
    """The first bone's colour traces its whole outline (DRR > 2 % of its maximum) and
    appears nowhere beyond 2 pixels of its projection."""
    ct, labels, g, _, truth, xray = phantom_case
    drr = render_body(ct, labels, (1,), truth, g)
    rgb = overlay_image(xray, drr)
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    red = np.all(rgb == (255, 60, 60), axis=-1)
    bone = drr > 0.02 * drr.max()
    outline = bone & ~ndimage.binary_erosion(bone)
    assert outline.sum() > 20 and red[outline].all()
    assert not red[~ndimage.binary_dilation(drr > 0, iterations=2)].any()
    with pytest.raises(ValueError, match=r"of the same size, got \(96, 96\) and \(95, 96\)"):
        overlay_image(xray, drr[:-1])
    path = write_qc_figure(tmp_path / "qc.png", rgb, "bone: GC 0.9 ok", flagged=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cohort_case(tmp_path_factory):
    """One `test`-size cohort case (5 mm CT, 128 x 128 detector)."""
    return generate_case(0, 5, tmp_path_factory.mktemp("cohort"), "test")


def test_register_command_writes_poses_and_qc(cohort_case, tmp_path, monkeypatch, capsys):
    """`mskdex register --preset fast --seed 3` on a cohort case: exit 0; poses.json v1 with the
    radiograph's geometry, the preset's settings and seed, each body's labels and a pose near
    its true one; the QC overlays; a rerun into the folder is refused (exit 2) and changes
    nothing, as is a CT that is not in HU. The preset's optimiser budget is cut to two short
    CMA-ES levels (its accuracy is tested above)."""
    preset = RegistrationSettings.preset
    monkeypatch.setattr(RegistrationSettings, "preset", classmethod(lambda cls, name: replace(
        preset(name), levels=(Level(8.0, "cma", 6, 1.0), Level(4.0, "cma", 4, 0.3)), popsize=6)))
    case, out = cohort_case, tmp_path / "reg"
    args = ["register", "--ct", str(case / "ct.nii.gz"), "--labels", str(case / "labels.nii.gz"),
            "--xray", str(case / "xray.mha"), "--objects", "synthetic", "--out", str(out), "--preset", "fast",
            "--seed", "3"]
    assert main(args) == 0
    assert f"wrote poses.json and qc_*.png in {out}" in capsys.readouterr().out
    poses = json.loads((out / "poses.json").read_text())
    assert (poses["format"], poses["version"], poses["object_map"]) == ("mskdex-poses", 1, "synthetic")
    geometry = Geometry.from_json(poses["geometry"])
    assert geometry == Geometry.from_json(json.loads((case / "xray.json").read_text())["geometry"])
    settings = replace(RegistrationSettings.preset("fast"), seed=3)
    assert poses["settings"] == json.loads(json.dumps(settings.to_json()))
    labels = read_labels(case / "labels.nii.gz")
    truth = json.loads((case / "truth.json").read_text())["poses"]
    bodies = poses["bodies"]
    assert {n: b["labels"] for n, b in bodies.items()} == {"pelvis": [1, 2], "femur_left": [3], "femur_right": [4]}
    for name, b in bodies.items():
        assert b["ok"] and b["gc"] >= b["gc_threshold"], (name, b["gc"])
        e = registration_errors(np.array(truth[name]), np.array(b["pose"]), surface_points(labels, b["labels"]),
                                geometry)
        assert e["projected_mm"] < 6.0, (name, e)
        assert (out / f"qc_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bodies["femur_left"]["gc_threshold"] == settings.femur_gc_threshold > bodies["pelvis"]["gc_threshold"]
    assert (out / "qc_all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = (out / "poses.json").read_bytes()
    assert main(args) == 2
    assert "poses.json: exists" in capsys.readouterr().err
    assert (out / "poses.json").read_bytes() == written
    # a label map given as the CT is refused before any registration, as drr and assemble refuse it
    args[args.index("--ct") + 1], args[args.index("--out") + 1] = str(case / "labels.nii.gz"), str(tmp_path / "r2")
    assert main(args) == 2
    assert "labels.nii.gz: its lowest value is 0, not HU" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_real_ct_hip_bones_recovered(shared_data):
    """A radiograph simulated from the real CT with the hip bones at known poses."""
    folder = shared_data / "totalsegmentator-example"
    ct = read_ct(folder / "example_ct.nii.gz")
    labels = read_labels(folder / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    bodies = rigid_bodies(objects)
    g = Geometry(rows=128, cols=128, pixel_spacing=(3.0, 3.0), sdd=1100.0, sod=880.0)
    # the film is centred on the pelvis; the search starts about the hips (default_isocenter)
    base = default_ap_pose(body_centroid(labels, bodies["pelvis"]), g)
    centre = apply(base, body_centroid(labels, bodies["pelvis"]))
    truth = {"pelvis": rigid((2.0, -3.0, 4.0), (6.0, -5.0, 8.0), centre) @ base}
    for side, angles in (("left", (8.0, -4.0, 6.0)), ("right", (-5.0, 3.0, -7.0))):
        head = femoral_head_center(labels, bodies[f"femur_{side}"])
        truth[f"femur_{side}"] = truth["pelvis"] @ rigid(angles, (0, 0, 0), head)
    rigid_set = {n: RigidBody(bodies[n], truth[n]) for n in bodies}
    xray = simulate_radiograph(ct, labels, g, truth["pelvis"], rigid_set,
                               XraySettings(noise_seed=0)).image
    # this CT ends a few cm below the lesser trochanters: its femurs are short stumps, and the
    # right one scores GC ~0.46 even at its true pose (whole femurs: 0.6-0.8), under the femur
    # threshold calibrated on the cohort; the general threshold still separates gross failures
    results = register_bodies(ct, labels, objects, xray, g,
                              settings=RegistrationSettings(femur_gc_threshold=GC_THRESHOLD))
    tolerance = {"pelvis": (1.0, 3.0), "femur_left": (3.0, 6.0), "femur_right": (3.0, 6.0)}
    for name, r in results.items():
        e = registration_errors(truth[name], r.pose, surface_points(labels, bodies[name]), g)
        start = registration_errors(truth[name], base, surface_points(labels, bodies[name]), g)
        assert start["projected_mm"] > 5.0
        assert r.ok, (name, r.gc)
        assert e["projected_mm"] < tolerance[name][0] and e["mtre_mm"] < tolerance[name][1], (name, e)
        assert len(r.level_gc) == len(RegistrationSettings().levels)


def test_one_body_registers_as_register_bodies_does(shared_data):
    """``register_body`` (Slicer's one-bone registration) is a step of ``register_bodies``:
    the pelvis from the default view with its start search, each femur from the pelvis about
    its head, with the femur prior and GC threshold."""
    folder = shared_data / "totalsegmentator-example"
    ct = read_ct(folder / "example_ct.nii.gz")
    labels = read_labels(folder / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    g = Geometry(rows=48, cols=48, pixel_spacing=(8.0, 8.0), sdd=1100.0, sod=880.0)
    centre = body_centroid(labels, rigid_bodies(objects)["pelvis"])
    pose = rigid((2.0, 0.0, 3.0), (6.0, -5.0, 0.0), apply(default_ap_pose(centre, g), centre)) @ default_ap_pose(centre, g)
    xray = project_objects(ct, labels, objects.select(["pelvis", "femur", "sacrum"]), g, pose).data[0].sum(0).numpy()
    cheap = replace(QUICK, levels=(Level(8.0, "cma", 4, 1.0),), translation_sd_mm=None)
    every = register_bodies(ct, labels, objects, xray, g, settings=cheap)
    pelvis = register_body(ct, labels, objects, "pelvis", xray, g, settings=cheap)
    femur = register_body(ct, labels, objects, "femur_left", xray, g, pelvis_pose=pelvis.pose, settings=cheap)
    np.testing.assert_array_equal(pelvis.pose, every["pelvis"].pose)
    np.testing.assert_array_equal(femur.pose, every["femur_left"].pose)
    assert femur.gc_threshold == every["femur_left"].gc_threshold > pelvis.gc_threshold
    # the per-body adaptations are settings, recorded with them (prepare.json, poses.json)
    assert {"femur_scale", "femur_gc_threshold", "start_search_mm", "prior_weight"} <= set(cheap.to_json())
    stricter = register_body(ct, labels, objects, "femur_left", xray, g, pelvis_pose=pelvis.pose,
                             settings=replace(cheap, femur_gc_threshold=0.61))
    assert stricter.gc_threshold == 0.61
    with pytest.raises(InputError, match="bone: expected one of"):
        register_body(ct, labels, objects, "tibia", xray, g, settings=cheap)


def test_search_starts_between_the_femoral_heads_or_at_the_image_centre(shared_data):
    labels = read_labels(shared_data / "totalsegmentator-example" / "example_seg_fast_force_split.nii.gz")
    objects = load_object_map("totalsegmentator")
    bodies = rigid_bodies(objects)
    heads = [femoral_head_center(labels, bodies[f"femur_{s}"]) for s in ("left", "right")]
    np.testing.assert_allclose(default_isocenter(labels, objects), (heads[0] + heads[1]) / 2)
    no_femurs = labels.with_array(np.where(np.isin(labels.array, (75, 76)), 0, labels.array))
    np.testing.assert_allclose(default_isocenter(no_femurs, objects), labels.center)


def test_femoral_head_center_is_the_head_sphere_not_the_top_centroid():
    # a proximal femur on a 2 mm grid (LPS, z superior): a 23 mm head on a neck to a shaft
    # whose greater trochanter rises as high as the head's top
    k, j, i = np.mgrid[:60, :40, :50].astype(float) * 2.0
    head = np.array([30.0, 40.0, 90.0])  # x, y, z (mm)
    femur = (i - head[0]) ** 2 + (j - head[1]) ** 2 + (k - head[2]) ** 2 <= 23.0 ** 2
    t = np.clip(((i - 30) * 1.0 + (k - 90) * -1.0) / 2.0, 0, 30)  # neck axis, down and lateral
    femur |= (i - 30 - t) ** 2 + (j - 40) ** 2 + (k - 90 + t) ** 2 <= 12.0 ** 2
    femur |= ((i - 68) ** 2 + (j - 40) ** 2 <= 14.0 ** 2) & (k <= 112)  # shaft + trochanter
    labels = Volume(femur.astype(np.uint8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    np.testing.assert_allclose(femoral_head_center(labels, (1,)), head, atol=1.0)
    top = np.argwhere(femur)[:, ::-1] * 2.0
    centroid = top[top[:, 2] >= top[:, 2].max() - 25.0].mean(axis=0)  # the old estimate
    assert np.linalg.norm(centroid - head) > 10.0
    # the same femur stored with a flipped row axis gives the same centre (no sampling order effect)
    flipped = Volume(femur[:, ::-1].astype(np.uint8), (2.0, 2.0, 2.0), (0.0, 78.0, 0.0),
                     np.diag([1.0, -1.0, 1.0]))
    np.testing.assert_allclose(femoral_head_center(flipped, (1,)), femoral_head_center(labels, (1,)), atol=1e-9)


def test_a_missing_body_is_named_before_any_work():
    objects = load_object_map("synthetic")
    a = np.zeros((20, 20, 20), np.uint8)
    a[2:8, 5:15, 5:15], a[10:18, 2:8, 5:15] = 1, 3  # pelvis and the left femur; no right femur
    labels = Volume(a, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    g = Geometry(rows=32, cols=32, pixel_spacing=(2.0, 2.0))
    with pytest.raises(InputError, match=r"labels.nii.gz: body 'femur_right' \(label values \[4\]\) has no voxels"):
        register_bodies(labels, labels, objects, np.zeros((32, 32)), g, source="labels.nii.gz")


def test_depth_runs_along_the_camera_axis_in_parallel_geometry():
    centre = np.array([100.0, -60.0, 880.0])
    for parallel in (False, True):
        g = Geometry(rows=64, cols=64, pixel_spacing=(1.0, 1.0), parallel=parallel)
        moved = pose_from_params(np.array([0, 0, 0, 0, 0, 20.0]), centre, np.eye(4), parallel)
        np.testing.assert_allclose(project(apply(moved, centre), g), project(centre, g), atol=1e-9)


def test_grid_search_finds_a_far_start(phantom_case, monkeypatch):
    # 35 mm off in-plane: beyond the local optimiser's reach, within the +-32 mm grid
    ct, labels, g, base, truth, xray = phantom_case
    start = rigid((0.0, 0.0, 0.0), (25.0, -25.0, 0.0)) @ truth
    points = surface_points(labels, (1,))
    scored = []
    call = optimise._Objective.__call__
    monkeypatch.setattr(optimise._Objective, "__call__", lambda self, xs: scored.append(len(np.atleast_2d(xs)))
                        or call(self, xs))
    r = register_bone(ct, labels, (1,), xray, g, start, replace(QUICK, grid_search_mm=(32.0, 8.0)))
    assert r.evaluations == sum(scored)  # every pose scored is counted, the grid's 81 too
    monkeypatch.undo()
    assert r.ok and registration_errors(truth, r.pose, points, g)["projected_mm"] < 4.0
    plain = register_bone(ct, labels, (1,), xray, g, start, QUICK)
    assert registration_errors(truth, plain.pose, points, g)["projected_mm"] > 20.0


def test_a_restart_reaches_the_basin_the_last_level_cannot(phantom_case):
    # 15 degrees off about the camera's x axis (a femur's flexion: an AP film hardly shows it);
    # the level may move +-5 degrees: only a restart turned back by 15 degrees finds the truth
    ct, labels, g, base, truth, xray = phantom_case
    points = surface_points(labels, (1,))
    centre = apply(truth, body_centroid(labels, (1,)))
    start = rigid((15.0, 0.0, 0.0), (0.0, 0.0, 0.0), centre) @ truth
    local = replace(QUICK, levels=(Level(0.0, "cma", 12, 0.1),), bounds=1.0)
    plain = register_bone(ct, labels, (1,), xray, g, start, local)
    turns = [(angle, 0.0, 0.0, 0.0, 0.0, 0.0) for angle in (15.0, -15.0, 8.0)]  # the right one amid others
    restarted = register_bone(ct, labels, (1,), xray, g, start, replace(local, restarts=tuple(turns)))
    assert registration_errors(truth, plain.pose, points, g)["mtre_mm"] > 5.0
    assert registration_errors(truth, restarted.pose, points, g)["mtre_mm"] < 2.0
    assert restarted.gc > plain.gc and restarted.evaluations > plain.evaluations


def test_only_the_femurs_restart_and_bad_restarts_are_refused(monkeypatch):
    from MSKdeXTraining.imaging.registration.settings import FEMUR_RESTARTS, FEMUR_SCALE

    seen = {}
    monkeypatch.setattr(sequence, "register_bone", lambda ct, labels, values, *a, **k: seen.update(
        {values: a[3]}))
    objects = load_object_map("synthetic")
    ct, labels = _phantom()
    bodies = rigid_bodies(objects)
    for name, values in bodies.items():  # the phantom's bone labelled as this body
        register_body(ct, labels.with_array(labels.array * values[0]), objects, name, np.zeros((8, 8)),
                      Geometry(rows=8, cols=8), start_pose=np.eye(4))
    assert seen[bodies["pelvis"]].restarts == ()
    for side in ("femur_left", "femur_right"):
        assert seen[bodies[side]].restarts == FEMUR_RESTARTS and seen[bodies[side]].scale == FEMUR_SCALE
    with pytest.raises(InputError, match="'femur_restarts' must list restarts of 6 values"):
        RegistrationSettings(femur_restarts=((12.0, 0.0),))
    with pytest.raises(InputError, match="'restart_iterations' must be >= 1"):
        RegistrationSettings(restart_iterations=0)


def test_ok_is_the_gc_reaching_the_settings_threshold_and_level_gc_leaves_out_the_prior(phantom_case):
    """ok is gc >= settings.gc_threshold (not the default threshold); a full-resolution last level's GC over the
    whole image equals the final GC, its translation prior's cost added back."""
    ct, labels, g, base, truth, xray = phantom_case
    settings = replace(QUICK, levels=(Level(8.0, "cma", 6, 1.0), Level(0.0, "powell", 30)), mask_margin_mm=None)
    r = register_bone(ct, labels, (1,), xray, g, base, settings)
    assert np.abs(r.params[3:]).max() > 1.0  # it moved: the prior costs something
    assert r.level_gc[-1] == pytest.approx(r.gc, abs=1e-6)
    for threshold, ok in ((r.gc - 1e-9, True), (r.gc + 1e-6, False), (GC_THRESHOLD - 1.0, True)):
        again = register_bone(ct, labels, (1,), xray, g, base, replace(settings, gc_threshold=threshold))
        assert again.gc == pytest.approx(r.gc, abs=1e-12) and (again.ok, again.gc_threshold) == (ok, threshold)


@pytest.mark.parametrize("level", [Level(8.0, "cma", 3, 1.0), Level(8.0, "powell", 40)], ids=["cma", "powell"])
def test_each_level_searches_within_its_bounds(phantom_case, monkeypatch, level):
    """Every pose a level scores lies within +-bounds (search units) of its start, for CMA-ES and Powell."""
    ct, labels, g, base, truth, xray = phantom_case
    scored = []
    call = optimise._Objective.__call__
    monkeypatch.setattr(optimise._Objective, "__call__", lambda self, xs: scored.append(np.atleast_2d(xs).copy())
                        or call(self, xs))
    register_bone(ct, labels, (1,), xray, g, base, replace(QUICK, levels=(level,), bounds=0.3))
    assert np.abs(np.concatenate(scored)).max() <= 0.3 + 1e-9  # the start is x = 0


def test_restarts_run_at_the_last_cma_level_only(phantom_case, monkeypatch):
    """The restarts run after the last CMA-ES level, for restart_iterations generations each."""
    ct, labels, g, base, truth, xray = phantom_case
    runs = []
    run_cma = optimise._run_cma
    monkeypatch.setattr(optimise, "_run_cma", lambda obj, x0, level, settings, li: runs.append((li, level.iterations))
                        or run_cma(obj, x0, level, settings, li))
    levels = (Level(8.0, "cma", 2, 1.0), Level(8.0, "cma", 3, 0.5), Level(8.0, "powell", 10))
    register_bone(ct, labels, (1,), xray, g, base, replace(QUICK, levels=levels, restarts=((5.0, 0, 0, 0, 0, 0),),
                                                          restart_iterations=1))
    assert runs == [(0, 2), (1, 3), (1, 1)]


def test_the_grid_search_reaches_both_ends_of_its_range():
    """_grid_search tries shifts from -range to +range inclusive (in mm, whatever the search scale)."""
    scale = np.array([5.0, 5.0, 5.0, 8.0, 4.0, 20.0])
    best = _grid_search(lambda xs: -xs[:, 3] * scale[3] + xs[:, 4] * scale[4], np.zeros(6), (32.0, 8.0), scale)
    np.testing.assert_allclose(best * scale, [0.0, 0.0, 0.0, 32.0, -32.0, 0.0], atol=1e-9)


def test_binning_brings_the_finer_axis_to_the_pixel_size_and_bins_rows_and_columns_alike():
    """binned: one whole factor, round(pixel_mm / the finer spacing) and at least 1, applied to rows and columns."""
    g = binned(Geometry(rows=120, cols=60, pixel_spacing=(0.5, 0.25)), 1.0)
    assert (g.rows, g.cols) == (30, 15) and g.pixel_spacing == (2.0, 1.0)
    assert binned(Geometry(rows=40, cols=30, pixel_spacing=(2.5, 2.5)), 1.0) == Geometry(40, 30, (2.5, 2.5))


def test_bodies_start_search_and_turn_as_documented(monkeypatch):
    """register_body/register_bodies: the pelvis searches in plane only from the default view, a femur starts from
    the pelvis pose, turns about its head and takes the stricter GC threshold."""
    calls = {}

    def fake(ct, labels, values, radiograph, geometry, start, settings, progress, center=None):
        calls.setdefault(values, []).append((start, settings, center))
        return RegistrationResult(rigid((0.0, 0.0, 0.0), (5.0, 0.0, 0.0)) @ start, 0.9, True, np.zeros(6), np.zeros(3),
                                  1, 0.0)

    monkeypatch.setattr(sequence, "register_bone", fake)
    objects = load_object_map("synthetic")
    k, j, i = np.mgrid[:30, :30, :30]
    array = np.zeros((30, 30, 30), np.uint8)
    array[18:26, 8:22, 6:24] = 1  # pelvis (above)
    array[(i - 8) ** 2 + (j - 15) ** 2 + (k - 10) ** 2 <= 16] = 3  # femur heads
    array[(i - 22) ** 2 + (j - 15) ** 2 + (k - 10) ** 2 <= 16] = 4
    labels = Volume(array, (4.0, 4.0, 4.0), (-60.0, -60.0, -60.0), np.eye(3))
    g = Geometry(rows=8, cols=8, pixel_spacing=(8.0, 8.0))
    ap = default_ap_pose(default_isocenter(labels, objects), g)
    given, pelvis_pose = rigid((2.0, 0.0, 0.0), (1.0, 2.0, 3.0)) @ ap, rigid((0.0, 3.0, 0.0)) @ ap
    zeros = np.zeros((8, 8))
    register_body(labels, labels, objects, "pelvis", zeros, g)
    register_body(labels, labels, objects, "pelvis", zeros, g, start_pose=given)
    register_body(labels, labels, objects, "pelvis", zeros, g, pelvis_pose=pelvis_pose)
    np.testing.assert_array_equal(calls[(1, 2)][0][0], ap)
    assert calls[(1, 2)][0][1].grid_search_mm == (48.0, 8.0)
    np.testing.assert_array_equal(calls[(1, 2)][1][0], given)
    assert calls[(1, 2)][1][1].grid_search_mm is None
    np.testing.assert_array_equal(calls[(1, 2)][2][0], ap)  # a pelvis pose is a femur's start only
    register_body(labels, labels, objects, "femur_left", zeros, g, pelvis_pose=pelvis_pose,
                  settings=RegistrationSettings(gc_threshold=0.7))
    start, settings, center = calls[(3,)][0]
    np.testing.assert_array_equal(start, pelvis_pose)
    assert settings.gc_threshold == 0.7 and settings.grid_search_mm is None
    np.testing.assert_allclose(center, femoral_head_center(labels, (3,)), atol=1e-9)
    calls.clear()
    results = register_bodies(labels, labels, objects, zeros, g, start_pose=given)
    np.testing.assert_array_equal(calls[(1, 2)][0][0], given)
    for values in ((3,), (4,)):
        np.testing.assert_array_equal(calls[values][0][0], results["pelvis"].pose)


def test_a_mirrored_film_is_flagged_by_its_mirror_fitting_better(cohort_case, tmp_path):
    """The pelvis is nearly symmetric: a film stored mirrored registers at a wrong pose with a GC
    above the threshold. With check_mirror the pelvis is registered to the mirrored film too;
    the film as simulated beats its mirror, a mirrored film does not and is not ok. Only a
    radiograph MSKdeX simulated skips the check (simulated: its sidecar names no source film)."""
    from MSKdeXTraining.sidecar import simulated

    case = cohort_case
    ct, labels = read_ct(case / "ct.nii.gz"), read_labels(case / "labels.nii.gz")
    xray, g = read_xray(case / "xray.mha")
    settings = replace(RegistrationSettings.preset("fast"), levels=(Level(8.0, "cma", 8, 1.0), Level(4.0, "cma", 6, 0.3)))
    objects = load_object_map("synthetic")
    film = register_bodies(ct, labels, objects, xray, g, settings=settings, check_mirror=True)["pelvis"]
    assert film.ok and film.mirror_gc < film.gc and film.problem() is None
    assert film.to_json()["mirror_gc"] == round(film.mirror_gc, 5)
    mirrored = register_bodies(ct, labels, objects, np.ascontiguousarray(xray[:, ::-1]), g, settings=settings,
                               check_mirror=True)["pelvis"]
    assert mirrored.gc >= mirrored.gc_threshold  # as good a fit by the threshold alone
    assert mirrored.mirrored and not mirrored.ok and "the film mirrored left-right fits better" in mirrored.problem()
    assert simulated(case / "xray.mha")
    sidecar = json.loads((case / "xray.json").read_text())
    shutil.copy(case / "xray.mha", tmp_path / "film.mha")
    assert not simulated(tmp_path / "film.mha")  # no sidecar: a film from elsewhere
    (tmp_path / "film.json").write_text(json.dumps({**sidecar, "source": {"path": "hip.dcm"}}))
    assert not simulated(tmp_path / "film.mha")  # assembled from a real film
