"""Synthetic cohort: templates, determinism and resume, HU ranges, pose deformation, radiograph pose."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from MSKdeXTraining.cohort import anatomy, deformation, generate, patient, radiograph
from MSKdeXTraining.commands import cohort as cohort_command
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging import hu as hu_conv
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose
from MSKdeXTraining.imaging.projector import Splatter, project_objects
from MSKdeXTraining.imaging.similarity import gradient_correlation
from MSKdeXTraining.imaging.volume import Volume, read_ct, read_labels
from MSKdeXTraining.objects import load_object_map
from MSKdeXTraining.prepare import read_cohort


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The cohort's torch work is many small ops: one thread avoids oversubscribing 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bodies(truth: dict) -> dict[str, deformation.RigidBody]:
    poses = {k: np.array(v) for k, v in truth["poses"].items()}
    hips = truth["derived"]["hip_centres_mm"]
    return {"pelvis": deformation.RigidBody((1, 2), poses["pelvis"]),
            "femur_left": deformation.RigidBody((3,), poses["femur_left"], tuple(hips["left"])),
            "femur_right": deformation.RigidBody((4,), poses["femur_right"], tuple(hips["right"]))}


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory) -> Path:
    """One case at the demo size (3 mm CT, 256 x 256 detector)."""
    return generate.generate_case(3, 11, tmp_path_factory.mktemp("demo"), "demo")


@pytest.fixture(scope="module")
def demo_body(demo_case):
    """``demo_case``'s whole body, rebuilt from its truth (the saved CT is its crop)."""
    p = json.loads((demo_case / "truth.json").read_text())["params"]
    template = anatomy.load_template(anatomy.find_templates()[p["index"] % 4])
    return patient.build_patient(template, p["patient"], generate.SIZES[p["size"]].ct_spacing_mm)


def test_bundled_templates_are_lps_and_split_left_right():
    dirs = anatomy.find_templates()
    assert [d.name for d in dirs] == ["Pelvic-Ref-001", "Pelvic-Ref-002", "Pelvic-Ref-004", "Pelvic-Ref-005"]
    for d in dirs:
        assert (d / "label.mhd").is_file() and (d / "mask.mhd").is_file()
    assert (dirs[0].parent / "LICENSE").is_file() and (dirs[0].parent / "ATTRIBUTION.md").is_file()
    t = anatomy.load_template(dirs[-1])
    a = t.labels.array
    world = lambda mask: anatomy._index_to_world(t.labels, np.argwhere(mask)).mean(0)  # noqa: E731
    # LPS: +x is the patient's left, +z superior (spine above the femurs)
    assert world(a == 3)[0] > t.mid_x > world(a == 4)[0]
    assert world(a == 11)[0] > t.mid_x > world(a == 12)[0]
    assert world(a == anatomy.SPINE)[2] > world(a == 1)[2] > world(a == 3)[2]
    left, right = t.hip_centres["left"], t.hip_centres["right"]
    assert 140 < left[0] - right[0] < 230 and abs(left[2] - right[2]) < 20
    # the hip centre lies inside the femoral head, near the top of the femur
    k, j, i = np.round(np.linalg.inv(t.labels.affine) @ np.r_[left, 1.0])[:3][::-1].astype(int)
    assert a[k, j, i] == 3
    assert set(np.unique(a)) <= {0, 1, 2, 3, 4, *range(11, 23), 30, 31, anatomy.BODY}


def test_user_label_map_with_object_map_is_a_template(shared_data, tmp_path):
    folder = tmp_path / "ts"
    folder.mkdir()
    shutil.copy(shared_data / "totalsegmentator-example" / "example_seg_fast_force_split.nii.gz",
                folder / "labels.nii.gz")
    (folder / "template.json").write_text(json.dumps({
        "format": "mskdex-template", "version": 1, "object_map": "totalsegmentator",
        "other_labels": "soft_tissue"}))
    t = anatomy.load_template(folder)
    a = t.labels.array
    for value in (1, 2, 3, 4, 11, 12, 13, 14, 17, 18):
        assert (a == value).any(), value
    assert t.hip_centres["left"][0] > t.hip_centres["right"][0]
    params = patient.sample_patient(np.random.default_rng(0), t)
    p = patient.build_patient(t, params, 6.0)
    ct, labels = p.ct, p.labels
    assert ct.array.dtype == np.int16 and labels.grid_differences(ct) == []
    assert (labels.array == 11).sum() > 100
    (folder / "template.json").write_text(json.dumps({"format": "mskdex-template", "version": 2}))
    with pytest.raises(InputError, match="template.json"):
        anatomy.template_settings(folder)


def test_template_files_named_in_template_json(tmp_path, monkeypatch):
    """A template whose label map has another name (``label_file``) is found, and a relative
    object-map path is read from beside the template.json, wherever the command runs."""
    folder = tmp_path / "mine"
    shutil.copytree(anatomy.find_templates()[0], folder)
    (folder / "label.mhd").rename(folder / "seg.mhd")  # its data file keeps its name
    (folder / "maps").mkdir()
    shutil.copy(Path(anatomy.__file__).parents[1] / "mappings" / "pelvic_reference.json", folder / "maps" / "p.json")
    (folder / "template.json").write_text(json.dumps({
        "format": "mskdex-template", "version": 1, "object_map": "maps/p.json", "spine_labels": [4],
        "label_file": "seg.mhd", "mask_file": "mask.mhd"}))
    monkeypatch.chdir(tmp_path)
    assert anatomy.find_templates([tmp_path]) == [folder]
    expected = anatomy.load_template(anatomy.find_templates()[0])
    assert np.array_equal(anatomy.load_template(folder).labels.array, expected.labels.array)
    # a bad 'object_map' is traced to the template.json that names it
    (folder / "maps" / "bad.json").write_text("{")
    for value, message in ((5, "must name a built-in object map or a JSON file, got 5"),
                           ("maps/none.json", "field 'object_map': object map .*none.json' is neither a file"),
                           ("maps/bad.json", "field 'object_map': .*bad.json: not valid JSON")):
        (folder / "template.json").write_text(json.dumps({
            "format": "mskdex-template", "version": 1, "object_map": value, "label_file": "seg.mhd"}))
        anatomy.load_template.cache_clear()
        with pytest.raises(InputError, match=rf"{re.escape(str(folder / 'template.json'))}: .*{message}"):
            anatomy.load_template(folder)
    for field, value in (("label_file", 5), ("mask_file", ["mask.mhd"]), ("label_file", "")):  # named, not a TypeError
        (folder / "template.json").write_text(json.dumps({
            "format": "mskdex-template", "version": 1, "label_file": "seg.mhd", field: value}))
        anatomy.load_template.cache_clear()
        with pytest.raises(InputError, match=rf"template.json: field '{field}' must name a file in the template's "
                                             rf"folder, got {re.escape(repr(value))}"):
            anatomy.load_template(folder)


def test_a_run_that_makes_no_case_binds_no_rerun(tmp_path):
    """A template that fails as the first case is built (here its object map) leaves no
    cohort.json behind, so a corrected run goes into the same folder."""
    folder = tmp_path / "bad"
    shutil.copytree(anatomy.find_templates()[0], folder)
    settings = json.loads((folder / "template.json").read_text()) if (folder / "template.json").is_file() else {}
    (folder / "template.json").write_text(json.dumps({"format": "mskdex-template", "version": 1, **settings,
                                                      "object_map": "nope"}))
    out = tmp_path / "cohort"
    with pytest.raises(InputError, match="nope"):
        generate.generate_cohort(1, 0, out, "test", workers=1, templates=[folder])
    assert not (out / "cohort.json").exists()
    generate.generate_cohort(1, 0, out, "test", workers=1)
    assert json.loads((out / "cohort.json").read_text())["complete"]


def test_a_case_is_complete_with_its_files_of_the_recorded_sizes(tmp_path):
    """What a resume keeps: the files that truth.json records, at their sizes; a case written
    before the sizes were recorded, when its files are there; nothing from an odd truth.json."""
    case = generate.generate_case(0, 3, tmp_path, "test")
    truth = json.loads((case / "truth.json").read_text())
    assert generate.complete_case_truth(case) == truth
    for files in ({}, {"": 4096}, {**truth["files"], "xray.mha": 1}, None):
        (case / "truth.json").write_text(json.dumps({**truth, "files": files}))
        assert generate.complete_case_truth(case) is None, files
    for odd in ("[]", "{", "3", '"files"'):
        (case / "truth.json").write_text(odd)
        assert generate.complete_case_truth(case) is None, odd
    (case / "truth.json").write_text(json.dumps({k: v for k, v in truth.items() if k != "files"}))  # before 0.3.7
    assert generate.complete_case_truth(case) is not None
    (case / "xray.json").unlink()
    assert generate.complete_case_truth(case) is None


def test_same_seed_same_bytes_and_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    parser = argparse.ArgumentParser()
    cohort_command.add_arguments(parser)
    assert cohort_command.run(parser.parse_args(
        ["--n", "2", "--seed", "3", "--out", str(a), "--size", "test", "--workers", "1"])) == 0
    generate.generate_cohort(2, 3, b, "test", workers=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 11
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # resume: a removed case, a half-written one and one without its truth are redone, identically
    (b / "case_0000" / "truth.json").unlink()
    shutil.rmtree(b / "case_0001")
    (b / ".case_0001.partial-999999999").mkdir()  # of a killed run (no such process)
    (b / ".case_0001.partial-999999999" / "ct.nii.gz").write_bytes(b"broken")
    generate.generate_cohort(2, 3, b, "test", workers=1)
    # a second run on the folder (e.g. a killed run's surviving worker) finishing a case that is
    # there already leaves it as it is
    assert generate.generate_case(1, 3, b, "test") == b / "case_0001"
    assert not list(b.glob(".case_*"))
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # a case whose film was cut short (a copy that stopped) is redone too: truth.json records the sizes
    truth = json.loads((b / "case_0000" / "truth.json").read_text())
    assert truth["files"] == {n: (b / "case_0000" / n).stat().st_size
                              for n in ("ct.nii.gz", "labels.nii.gz", "xray.mha", "xray.json")}
    film = b / "case_0000" / "xray.mha"
    film.write_bytes(film.read_bytes()[:-100])
    generate.generate_cohort(2, 3, b, "test", workers=1)
    assert film.read_bytes() == (a / "case_0000" / "xray.mha").read_bytes()
    meta = json.loads((b / "cohort.json").read_text())
    assert meta["complete"] and meta["cases"] == ["case_0000", "case_0001"]
    assert meta["object_map"]["name"] == "synthetic"
    with pytest.raises(InputError, match="cohort.json: field 'seed' is 3 but this run has 4"):
        generate.generate_cohort(2, 4, b, "test", workers=1)
    # another package version with the same generator version finishes or extends the cohort
    header = (b / "cohort.json").read_bytes()
    stamps = {f: (b / f).stat().st_mtime_ns for f in files if f.name != "cohort.json"}
    (b / "cohort.json").write_text(json.dumps({**meta, "generator": {**meta["generator"], "code_version": "0.0.1"}}))
    generate.generate_cohort(2, 3, b, "test", workers=1)
    assert {f: (b / f).stat().st_mtime_ns for f in stamps} == stamps  # no case redone
    assert (b / "cohort.json").read_bytes() == header  # complete, this package's version
    with pytest.raises(InputError, match="field 'generator'"):
        (b / "cohort.json").write_text(json.dumps({**meta, "generator": {**meta["generator"], "version": 1}}))
        generate.generate_cohort(2, 3, b, "test", workers=1)
    (b / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="cohort.json: the cohort has n = 2 cases; a rerun may finish or extend it, not shrink it to 1"):
        generate.generate_cohort(1, 3, b, "test", workers=1)
    with pytest.raises(InputError, match="seed must be >= 0"):
        generate.generate_cohort(2, -1, tmp_path / "neg", "test", workers=1)
    assert not (tmp_path / "neg").exists()
    # templates of the same names but other content are another cohort
    from MSKdeXTraining.cohort.anatomy import bundled_templates_dir

    changed = tmp_path / "templates"
    shutil.copytree(bundled_templates_dir(), changed)
    settings = json.loads((changed / "template.json").read_text())
    (changed / "template.json").write_text(json.dumps(settings, indent=1))
    with pytest.raises(InputError, match="field 'generator'"):
        generate.generate_cohort(2, 3, b, "test", workers=1, templates=[changed])
    # a cohort whose run did not finish is refused by prepare, with what to do
    meta["complete"] = False
    (b / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="'complete' is not true.*rerun the command that wrote it"):
        read_cohort(b)
    generate.generate_cohort(2, 3, b, "test", workers=1)  # as a killed run leaves it: resumed, complete
    assert {f: (b / f).stat().st_mtime_ns for f in stamps} == stamps
    read_cohort(b)
    (b / "cohort.json").write_text("[1]")
    with pytest.raises(InputError, match="cohort.json: expected a JSON object"):
        generate.generate_cohort(2, 3, b, "test", workers=1)


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    """A cohort writes into a new or empty folder (hidden files aside), or resumes its own: a
    folder without cohort.json that holds files is refused before any work, its ``case_0000``
    without truth.json (not a case of this cohort) left in place."""
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "case_0000").mkdir()
    (tmp_path / "case_0000" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=f"{tmp_path}: holds files but no cohort.json; expected a new or empty "
                                         "folder, or a cohort to resume"):
        generate.generate_cohort(1, 3, tmp_path, "test", workers=1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".hidden", "case_0000", "notes.txt"]


def test_hu_ranges_per_tissue():
    t = anatomy.load_template(anatomy.find_templates()[0])
    params = patient.sample_patient(np.random.default_rng(5), t)
    params["ct"]["noise_sd_hu"] = 0.0
    p = patient.build_patient(t, params, 4.0)
    ct, labels = p.ct, p.labels
    hu, lab = ct.array.astype(float), labels.array
    h = params["hu"]
    outside = ndimage.binary_erosion(lab == 0, iterations=2) & (hu < -500)
    assert np.median(hu[outside]) == pytest.approx(-1000, abs=5)
    for value in range(11, 23):  # muscles: between fat and lean muscle
        v = hu[ndimage.binary_erosion(lab == value)]
        assert h["fat"] - 10 <= np.percentile(v, 5) and np.percentile(v, 95) <= h["lean_muscle"] + 10
    lean = hu[ndimage.binary_erosion(lab == 30)]  # other muscle, little infiltration
    assert -40 < np.median(lean) < 70
    for value in (1, 3, 4):  # bones: cortical shell much denser than the interior
        bone = lab == value
        shell = bone & ~ndimage.binary_erosion(bone)
        core = ndimage.binary_erosion(bone, iterations=3)
        assert np.median(hu[shell]) > 300 and np.median(hu[core]) < 400
        assert np.median(hu[shell]) > np.median(hu[core]) + 100
    subcutaneous = (lab == 0) & (hu > -500) & ndimage.binary_dilation(lab == 0, iterations=1) \
        & ~ndimage.binary_erosion(hu > -500, iterations=2)
    assert np.median(hu[subcutaneous]) < -20  # the layer under the skin is fat


def test_pose_deformation_keeps_muscle_volume_and_mass(demo_case, demo_body):
    """On the whole body the radiograph is simulated from (the saved CT is its crop)."""
    truth = json.loads((demo_case / "truth.json").read_text())
    body = demo_body
    saved = read_ct(demo_case / "ct.nii.gz")
    assert np.array_equal(saved.array, body.body_ct.array[body.crop])
    assert saved.origin == pytest.approx(body.ct.origin)
    assert body.body_ct.array.shape[0] > saved.array.shape[0] + 80  # >= 12 cm more body
    ct, labels = body.body_ct, body.body_labels
    bodies = _bodies(truth)
    pose = bodies["pelvis"].pose
    det = deformation.jacobian_determinant(labels, pose, bodies)
    geometry = Geometry.from_json(json.loads((demo_case / "xray.json").read_text())["geometry"])
    muscles = load_object_map("synthetic").per_side().select(
        [n for n in patient.muscle_sides()])
    table = torch.from_numpy(muscles.lookup_table(labels.array))
    splat = Splatter(geometry, len(muscles), (False, False))
    hu = torch.from_numpy(ct.array.reshape(-1).astype(np.float32))
    lab = torch.from_numpy(labels.array.reshape(-1).astype(np.int64))
    select = np.isin(labels.array.reshape(-1), [o.labels[0] for o in muscles.objects])
    for batch in radiograph.moved_points(ct, labels, geometry, pose, bodies, select):
        h = hu[batch.voxels]
        amounts = torch.stack([torch.ones_like(h), hu_conv.mdrr_density(h, True)], 1)
        splat.add(batch.points, amounts * (ct.voxel_volume_cm3 / batch.points_per_voxel),
                  table[lab[batch.voxels]], batch.footprint_mm)
    images, lost = splat.result()
    sums = images.double().sum(dim=(-1, -2)).numpy() * geometry.pixel_area_cm2 + lost.numpy()
    field = deformation.soft_tissue_field(labels, pose, bodies)
    shift = np.linalg.norm(field - patient._grid_points(labels), axis=-1)  # mm, vs rigid carry
    for k, o in enumerate(muscles.objects):
        sel = labels.array == o.labels[0]
        ref = truth["objects_per_side"][o.name]
        volume_after = det[sel].sum() * ct.voxel_volume_cm3
        assert volume_after == pytest.approx(ref["volume_cm3"], rel=0.01), o.name
        assert sums[0, k] == pytest.approx(ref["volume_cm3"], rel=1e-4), o.name
        assert sums[1, k] == pytest.approx(ref["mass_g"], rel=1e-4), o.name
    # the muscles really are deformed with the femurs, not just carried with the pelvis
    assert np.percentile(shift[np.isin(labels.array, (11, 12))], 99) > 3.0
    merged = truth["objects"]["gluteus_medius"]["mass_g"]
    sides = [truth["objects_per_side"][f"gluteus_medius_{s}"]["mass_g"] for s in ("left", "right")]
    assert merged == pytest.approx(sum(sides), rel=1e-9)


def test_pose_deformation_keeps_soft_tissue_out_of_bones(demo_case, demo_body):
    """No film shows muscle inside bone: the soft tissue that the field moves into a bone's
    radiograph position carries well under 1 % of that bone's attenuation (cohort v4, whose
    volume correction ignored the bones, pushed 3-5 mm of tissue into them: up to 9 %)."""
    truth = json.loads((demo_case / "truth.json").read_text())
    ct, labels = demo_body.body_ct, demo_body.body_labels
    bodies = _bodies(truth)
    pose = bodies["pelvis"].pose
    field = deformation.soft_tissue_field(labels, pose, bodies)
    bone = np.isin(labels.array, (1, 2, 3, 4))
    tissue = (labels.array > 0) & ~bone
    mu = np.clip(ct.array.astype(float) + 1000.0, 0.0, None)  # attenuation ~ HU + 1000
    to_index = np.linalg.inv(labels.affine)
    for name, b in bodies.items():
        back = np.linalg.inv(np.linalg.inv(pose) @ b.pose)  # radiograph position -> body's CT frame
        moved = field[tissue] @ back[:3, :3].T + back[:3, 3]
        ijk = np.rint(moved @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < labels.array.shape[::-1]), axis=1)
        hit = np.zeros(len(moved), bool)
        hit[inside] = np.isin(labels.array[tuple(ijk[inside, ::-1].T)], b.labels)
        share = mu[tissue][hit].sum() / mu[np.isin(labels.array, b.labels)].sum()
        assert share < 0.01, (name, share)


def test_bones_sit_at_their_recorded_pose(demo_case):
    ct, labels = read_ct(demo_case / "ct.nii.gz"), read_labels(demo_case / "labels.nii.gz")
    truth = json.loads((demo_case / "truth.json").read_text())
    xray_meta = json.loads((demo_case / "xray.json").read_text())
    geometry = Geometry.from_json(xray_meta["geometry"])
    image = sitk.ReadImage(str(demo_case / "xray.mha"))
    assert image.GetSpacing() == pytest.approx(geometry.pixel_spacing[::-1])
    xray = torch.from_numpy(sitk.GetArrayFromImage(image))
    assert xray.shape == geometry.shape and 0 <= float(xray.min()) and float(xray.max()) <= 1
    objects = load_object_map("synthetic").per_side()
    for body, names in (("pelvis", ["pelvis", "sacrum"]), ("femur_left", ["femur_left"]),
                        ("femur_right", ["femur_right"])):
        gc = []
        for shift in (0.0, 10.0):
            pose = np.array(truth["poses"][body])
            pose[0, 3] += shift
            drr = project_objects(ct, labels, objects.select(names), geometry, pose).data[0].sum(0)
            region = ndimage.binary_dilation(drr.numpy() > 0, iterations=4)
            region = torch.from_numpy(region.astype(np.float32))
            gc.append(float(gradient_correlation(drr, xray, region)))
        assert gc[0] > 0.4 and gc[0] > gc[1] + 0.2, (body, gc)


def _lost_in_radiograph_pose(ct: Volume, labels: Volume, geometry: Geometry,
                             bodies: dict[str, deformation.RigidBody], objects) -> np.ndarray:
    """(N,) fraction of each object's volume that the radiograph's pose puts off the detector."""
    table = torch.from_numpy(objects.lookup_table(labels.array).astype(np.int64))
    lab = torch.from_numpy(labels.array.reshape(-1).astype(np.int64))
    select = np.isin(labels.array.reshape(-1), [v for o in objects.objects for v in o.labels])
    splat = Splatter(geometry, len(objects), (False,))
    for batch in radiograph.moved_points(ct, labels, geometry, bodies["pelvis"].pose, bodies, select):
        amount = torch.full((batch.voxels.shape[0], 1), 1.0 / batch.points_per_voxel)
        splat.add(batch.points, amount, table[lab[batch.voxels]], batch.footprint_mm)
    images, lost = splat.result()
    inside = images.double().sum(dim=(-1, -2)).numpy() * geometry.pixel_area_cm2 / ct.voxel_volume_cm3
    return lost.numpy()[0] / (inside[0] + lost.numpy()[0])


def _largest_patient(template: anatomy.Template) -> dict:
    """Parameters of a case at the extremes that enlarge its projection (size, muscles, fat,
    magnification, shift)."""
    params = generate.sample_case(generate.case_rng(0, 0), template)
    p, x = params["patient"], params["xray"]
    p.update(scale=1.12, skin_shift_mm=25.0)
    p["volume_factor"] = {n: 1.3 for n in p["volume_factor"]}
    x.update(sid_mm=1000.0, object_to_detector_mm=220.0, isocentre_offset_mm=[15.0, 10.0, 15.0])
    return params


@pytest.mark.slow
def test_ct_is_cropped_to_the_region_and_every_object_projects_inside_the_detector(demo_case):
    """The CT spans pelvis, sacrum and muscles + 10 mm; no object leaves the detector (< 0.5 %)
    in the radiograph's pose nor in the default AP view about the CT centre, for an ordinary
    case and for the widest template at the parameter extremes."""
    objects = load_object_map("synthetic").per_side()
    template = anatomy.load_template(anatomy.find_templates()[0])  # the widest template
    preset = generate.SIZES["demo"]
    ct, labels, xray, poses, derived = generate.build_case(template, _largest_patient(template), preset)
    truth = {"poses": {k: v.tolist() for k, v in poses.items()}, "derived": derived}
    cases = [(ct, labels, xray.geometry, truth)]
    truth = json.loads((demo_case / "truth.json").read_text())
    cases.append((read_ct(demo_case / "ct.nii.gz"), read_labels(demo_case / "labels.nii.gz"),
                  Geometry.from_json(json.loads((demo_case / "xray.json").read_text())["geometry"]),
                  truth))
    margin = int(np.ceil(patient.CROP_MARGIN_MM / preset.ct_spacing_mm))
    for ct, labels, geometry, truth in cases:
        assert geometry.shape == (256, 256)
        k = np.flatnonzero(np.isin(labels.array, anatomy.region_labels()).any(axis=(1, 2)))
        n = labels.array.shape[0]
        # cut at the region + margin, through both femur shafts
        assert k[0] == margin and k[-1] == n - 1 - margin
        assert (labels.array[0] == 3).any() and (labels.array[0] == 4).any()
        default = project_objects(ct, labels, objects, geometry, default_ap_pose(ct.center, geometry))
        lost = default.lost_fraction()
        assert lost.max() < 0.005, dict(zip(objects.names, lost.max(0).round(4)))
        lost = _lost_in_radiograph_pose(ct, labels, geometry, _bodies(truth), objects)
        assert lost.max() < 0.005, dict(zip(objects.names, lost.round(4)))


def test_radiograph_shows_the_body_past_its_top_and_bottom_edges(demo_case):
    """Abdomen and thighs run off the image (no band of body with air above and below), and
    the window is set on the body: air is black, the body spans the grey range."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_case / "xray.mha")))
    for rows in (image[:3], image[-3:]):
        assert (rows > 0.02).mean() > 0.4
    body = image > 0.02
    assert body.mean() > 0.6
    assert np.percentile(image[body], 5) < 0.3 and np.percentile(image[body], 99) > 0.8


def test_radiograph_orientation_and_processing():
    """Patient's right on the image left, bright = attenuating, no deformation without bodies."""
    shape = (40, 40, 40)
    ct_array = np.full(shape, -1000, np.int16)
    ct_array[10:30, 10:30, 22:30] = 1000  # dense block on the patient's left (+x, high i)
    ct = Volume(ct_array, (2.0, 2.0, 2.0), (-40.0, -40.0, -40.0), np.eye(3))
    geometry = Geometry(64, 64, (2.0, 2.0), 1000.0, 800.0)
    pose = default_ap_pose(ct.center, geometry)
    settings = radiograph.XraySettings(photons_per_pixel=1e5, noise_seed=1)
    r = radiograph.simulate_radiograph(ct, None, geometry, pose, None, settings)
    assert r.image.shape == (64, 64) and r.image.dtype == np.float32
    assert r.image[24:40, 36:44].mean() > r.image[24:40, 20:28].mean() + 0.3
    li_sum = r.line_integral.sum() * geometry.pixel_area_cm2
    expected = (hu_conv.attenuation(ct_array.astype(float)).sum() * ct.voxel_volume_cm3)
    magnification = geometry.sdd / geometry.sod
    assert li_sum == pytest.approx(expected * magnification ** 2, rel=0.03)
    again = radiograph.simulate_radiograph(ct, None, geometry, pose, None, settings)
    assert np.array_equal(r.image, again.image)


def test_voxels_at_or_below_air_hu_are_not_projected():
    """The radiograph leaves out CT values at or below AIR_HU, though their mu is not 0."""
    geometry = Geometry(16, 16, (2.0, 2.0), 1000.0, 800.0)
    ct = Volume(np.full((8, 8, 8), hu_conv.AIR_HU, np.float32), (2.0, 2.0, 2.0), (-8.0, -8.0, -8.0), np.eye(3))
    pose = default_ap_pose(ct.center, geometry)
    assert float(hu_conv.attenuation(np.array(hu_conv.AIR_HU))) > 0
    assert not radiograph.line_integral(ct, None, geometry, pose).any()
    above = ct.with_array(np.full((8, 8, 8), hu_conv.AIR_HU + 1, np.float32))
    assert radiograph.line_integral(above, None, geometry, pose).max() > 0


def test_a_folder_of_hidden_files_only_takes_a_new_cohort(tmp_path):
    """Hidden files (a desktop's .DS_Store, a killed run's hidden leftovers) do not make a folder
    one of other files: check_resume takes it as a new cohort."""
    (tmp_path / ".DS_Store").write_text("")
    (tmp_path / ".hip0.partial-1").mkdir()
    header = {"format": generate.COHORT_FORMAT, "version": generate.VERSION, "generator": {"name": "x"}}
    assert generate.check_resume(tmp_path, header, ("format", "version", "generator")) == {}


def test_a_soft_tissue_correction_that_stops_early_is_a_warning_naming_its_case(tmp_path, monkeypatch):
    from MSKdeXTraining.cohort import deformation
    from MSKdeXTraining.errors import MSKdeXWarning

    monkeypatch.setattr(deformation, "CG_MAX_ITERATIONS", 1)
    with pytest.warns(MSKdeXWarning, match=r"^case_0002: soft-tissue volume correction: conjugate gradients "
                                           r"stopped at 1 iterations"):
        generate.generate_case(2, 3, tmp_path, "test")
