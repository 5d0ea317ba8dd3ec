"""`mskdex prepare`: a tiny cohort -> a valid dataset; resume, shards, failed cases."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from MSKdeXTraining.cohort import generate_cohort
from MSKdeXTraining.dicom_radiograph import HIP_ABOVE_TABLE_MM
from MSKdeXTraining.environment import environment
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose, resample_image, rigid
from MSKdeXTraining.imaging.projector import project_objects
from MSKdeXTraining.imaging.registration import Level, RegistrationSettings, read_xray
from MSKdeXTraining.imaging.volume import InputError, Volume, read_ct, read_labels
from MSKdeXTraining.objects import ObjectMap, ObjectSpec, load_object_map
from MSKdeXTraining.prepare import _aligned_bones, dataset_geometry, merge_manifest, prepare_dataset, read_cohort

#: Registration budget for the tests: the data flow is tested here, accuracy elsewhere.
CHEAP = RegistrationSettings(levels=(Level(8.0, "cma", 4, 1.0),), popsize=6)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three `test`-size cases; case_0002 lost its right gluteus minimus (failed segmentation)."""
    out = generate_cohort(3, 5, tmp_path_factory.mktemp("cohort") / "c", size="test", workers=1)
    path = out / "case_0002" / "labels.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[array == 16] = 0
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(path))
    return out


ANOTHER_COHORT = r"cohort_sha256: the cohort there is another one now \(its cohort.json or a truth.json changed\)"


def _prepare(cohort, out, **kw):
    return prepare_dataset(cohort, out, dataset_geometry(cohort, 32), workers=1, settings=CHEAP, **kw)


def _entries(manifest: dict) -> list[dict]:
    """Case entries without the timings (the only values that may differ between runs)."""
    out = []
    for c in manifest["cases"]:
        c = {k: v for k, v in c.items() if k != "seconds"}
        c["registration"] = {b: {k: v for k, v in r.items() if k != "seconds"}
                             for b, r in c["registration"].items()}
        out.append(c)
    return out


def test_prepare_writes_manifest_and_cases(cohort, tmp_path):
    """Also: a case whose radiograph is noise fails every registration and is excluded with
    each body's reason, its files still written."""
    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    path = copy / "case_0001" / "xray.mha"
    image = sitk.ReadImage(str(path))
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random(image.GetSize()[::-1]).astype(np.float32))
    noise.CopyInformation(image)
    sitk.WriteImage(noise, str(path))
    out = _prepare(copy, tmp_path / "ds")
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "mskdex-dataset" and m["version"] == 2
    assert m["geometry"]["rows"] == 32 and m["aligned_bones"] == ["pelvis", "femur"]
    n = len(m["objects"])
    status = {c["id"]: c["status"] for c in m["cases"]}
    assert status["case_0002"] == "excluded" and m["counts"]["cases"] == 3
    broken = m["cases"][2]
    assert any("gluteus_minimus" in r and "right side" in r for r in broken["reasons"])
    assert broken["file"] is None and broken["registration"] == {}
    assert all(c["environment"] == environment() for c in m["cases"])  # prepared in this process
    assert status["case_0001"] == "excluded"
    checked = []
    for c in m["cases"][:2]:
        assert set(c["registration"]) == {"pelvis", "femur_left", "femur_right"}
        assert all(np.array(r["pose"]).shape == (4, 4) for r in c["registration"].values())
        # a failed registration is excluded with its reason, never silently "ok"
        failed = [b for b, r in c["registration"].items() if not r["ok"]]
        assert (c["status"] == "ok") == (not failed and not c["reasons"])
        for b in failed:  # the reason quotes the body's own threshold (femurs: stricter)
            assert any(b in r and f"< {c['registration'][b]['gc_threshold']:g}" in r for r in c["reasons"])
            checked.append((c["id"], b))
        assert c["registration"]["femur_left"]["gc_threshold"] == 0.5
        t = load_file(out / c["file"])
        assert t["drr"].shape == (3, n, 32, 32) and t["aligned"].shape == (3, 2, 32, 32)
        assert t["xray"].shape == (32, 32) and 0 <= float(t["xray"].min()) <= float(t["xray"].max()) <= 1
        truth = json.loads((cohort / c["id"] / "truth.json").read_text())["objects"]
        np.testing.assert_allclose(t["volume_cm3"].numpy(), [truth[o]["volume_cm3"] for o in m["objects"]])
        # the case's detector is matched: the dataset's pixel size at the isocentre
        g, ref = c["geometry"], m["geometry"]
        iso = [s * g["sod"] / g["sdd"] for s in g["pixel_spacing"]]
        np.testing.assert_allclose(iso, [s * ref["sod"] / ref["sdd"] for s in ref["pixel_spacing"]])
        # VDRR sums (per area of the case's detector) are the volumes inside the field of view
        area = g["pixel_spacing"][0] * g["pixel_spacing"][1] / 100
        sums = t["drr"][1].double().sum((-1, -2)).numpy() * area
        lost = c["qc"]["drr_lost_fraction"]
        assert np.all(sums <= t["volume_cm3"].numpy() * (1 + 1e-4))
        assert np.all(sums >= t["volume_cm3"].numpy() * (1 - lost - 1e-3))
        # the aligned bones are rendered at the registered poses (the manifest's), not the truth
        ct, labels = read_ct(copy / c["id"] / "ct.nii.gz"), read_labels(copy / c["id"] / "labels.nii.gz")
        poses = {b: np.array(r["pose"]) for b, r in c["registration"].items()}
        expected = _aligned_bones(ct, labels, read_cohort(copy)[1], Geometry.from_json(g), poses)
        torch.testing.assert_close(t["aligned"], expected.data.float())
    assert {b for case, b in checked if case == "case_0001"} == {"pelvis", "femur_left", "femur_right"}
    assert not (out / "cases" / "case_0002.safetensors").exists()


def test_unreadable_case_is_excluded_and_files_are_shared(cohort, tmp_path):
    """A corrupt input file excludes its case (the others still make a dataset); outputs get
    the usual file mode; a merge from another cohort is refused."""
    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    (copy / "case_0001" / "labels.nii.gz").write_bytes(b"not an image")
    meta = json.loads((copy / "cohort.json").read_text())
    (copy / "cohort.json").write_text(json.dumps({**meta, "seed": meta["seed"] + 1}))
    out = _prepare(copy, tmp_path / "ds")
    m = json.loads((out / "manifest.json").read_text())
    bad = m["cases"][1]
    assert bad["status"] == "excluded" and "unreadable input" in bad["reasons"][0]
    assert "labels.nii.gz" in bad["reasons"][0] and m["cohort"] == str(copy.resolve())
    umask = os.umask(0)
    os.umask(umask)
    for f in [out / "manifest.json", out / m["cases"][0]["file"]]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    with pytest.raises(InputError, match="other cohort.*cannot be merged from"):
        merge_manifest(out, cohort)  # same cases, but another cohort.json


def test_a_case_that_cannot_be_rendered_is_excluded(cohort, tmp_path, monkeypatch):
    """The renderer's refusal (e.g. a bone behind the source) excludes that case with the
    reason; the others are still prepared."""
    import MSKdeXTraining.prepare as prepare

    def refuse(ct, labels, objects, geometry, pose, **kw):
        if ct.array.shape == first:
            raise InputError("object pelvis lies behind the source")
        return project_objects(ct, labels, objects, geometry, pose, **kw)

    first = read_ct(cohort / "case_0000" / "ct.nii.gz").array.shape
    monkeypatch.setattr(prepare, "project_objects", refuse)
    m = json.loads((_prepare(cohort, tmp_path / "ds", include_failed=True) / "manifest.json").read_text())
    assert m["cases"][0]["status"] == "excluded" and m["cases"][0]["file"] is None
    assert m["cases"][0]["reasons"][-1] == "rendering impossible: object pelvis lies behind the source"
    assert m["cases"][1]["status"] == "ok"


def test_the_default_dataset_detector_is_at_most_512_pixels(cohort, monkeypatch):
    """By default the first radiograph's detector, shrunk over the same field of view when its
    longer side exceeds DEFAULT_MAX_PX (a clinical film's thousands of pixels)."""
    import MSKdeXTraining.prepare as prepare

    meta, _ = read_cohort(cohort)
    _, own = read_xray(cohort / meta["cases"][0] / "xray.mha", require_distances=True)
    assert prepare.DEFAULT_MAX_PX == 512 and dataset_geometry(cohort) == own
    monkeypatch.setattr(prepare, "DEFAULT_MAX_PX", own.rows // 2)
    small = dataset_geometry(cohort)
    assert small.shape == (own.rows // 2, own.cols // 2) and small.sdd == own.sdd
    assert small.rows * small.pixel_spacing[0] == pytest.approx(own.rows * own.pixel_spacing[0])
    # a size given is held to 1..MAX_PX pixels and to nearly square pixels, before any work
    assert dataset_geometry(cohort, prepare.MAX_PX).shape == (prepare.MAX_PX,) * 2
    with pytest.raises(InputError, match=r"dataset detector 2049 x 2049 pixels: expected 1 to 2048 on each side"):
        dataset_geometry(cohort, prepare.MAX_PX + 1)
    with pytest.raises(InputError, match=r"gives pixels of .* mm; expected nearly square pixels"):
        dataset_geometry(cohort, 2000, 3)


def test_a_ct_with_an_implant_is_excluded(cohort, tmp_path):
    """Metal in a CT (here the left femur at 3071 HU, a crude stem) fails the QC of the objects
    around it: the case is excluded before registration, with the reason."""
    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    ct_path, labels = copy / "case_0000" / "ct.nii.gz", read_labels(copy / "case_0000" / "labels.nii.gz")
    image = sitk.ReadImage(str(ct_path))
    array = sitk.GetArrayFromImage(image)
    array[labels.array == 3] = 3071
    implanted = sitk.GetImageFromArray(array)
    implanted.CopyInformation(image)
    sitk.WriteImage(implanted, str(ct_path))
    m = json.loads((_prepare(copy, tmp_path / "ds") / "manifest.json").read_text())
    bad, good = m["cases"][:2]
    assert bad["status"] == "excluded" and bad["file"] is None and bad["registration"] == {}
    assert any(r.startswith("femur: ") and "at or above 2995 HU" in r and "its left side" in r
               for r in bad["reasons"]), bad["reasons"]
    assert bad["qc"]["objects"]["femur"]["metal_cm3"] > 0.5
    assert good["qc"]["objects"]["femur"]["metal_cm3"] == 0.0 and set(good["registration"]) == {
        "pelvis", "femur_left", "femur_right"}  # registered (the cheap test budget may fail it)


def test_a_moved_cohort_and_dataset_resume(cohort, tmp_path):
    """The dataset knows its cohort by a hash of cohort.json's identity fields and its cases'
    truths, not by place: moved together they resume without redoing a case or changing the
    manifest; a cohort.json rewritten by a newer package resumes too; another cohort is refused;
    a merge with a case not prepared names it."""
    _prepare(cohort, tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.json").read_bytes()
    shutil.copytree(cohort, tmp_path / "a" / "c")
    (tmp_path / "ds").rename(tmp_path / "a" / "ds")
    moved, data = tmp_path / "a" / "c", tmp_path / "a" / "ds"
    stamp = (data / "cases" / "case_0000.json").stat().st_mtime_ns
    settings = json.loads((data / "prepare.json").read_text())
    (data / "prepare.json").write_text(json.dumps({**settings, "cohort": str(tmp_path / "gone")}))
    with pytest.raises(InputError, match="holds no cohort.json \\(moved\\?\\); pass the cohort folder"):
        merge_manifest(data)
    _prepare(moved, data)
    assert (data / "cases" / "case_0000.json").stat().st_mtime_ns == stamp
    assert (data / "manifest.json").read_bytes() == before
    assert json.loads((data / "prepare.json").read_text())["cohort"] == str(moved.resolve())
    merge_manifest(data)  # from where prepare.json now says the cohort is
    assert json.loads((data / "manifest.json").read_text())["cohort"] == str(moved.resolve())
    merged = (data / "manifest.json").read_bytes()
    stamps = {f: f.stat().st_mtime_ns for f in (data / "cases").iterdir()}
    assert len(stamps) == 5  # two prepared cases (json + tensors), one excluded (json)
    meta = json.loads((moved / "cohort.json").read_text())
    (moved / "cohort.json").write_text(json.dumps({**meta, "generator": {**meta["generator"], "code_version": "9"}}))
    _prepare(moved, data)
    assert {f: f.stat().st_mtime_ns for f in (data / "cases").iterdir()} == stamps
    assert (data / "manifest.json").read_bytes() == merged
    (moved / "cohort.json").write_text(json.dumps({**meta, "seed": meta["seed"] + 1}))
    with pytest.raises(InputError, match=ANOTHER_COHORT):
        _prepare(moved, data)
    (moved / "cohort.json").write_text(json.dumps(meta))
    # made again with another zlib build: other compressed file sizes (and JSON layout), the same cohort
    path = moved / "case_0001" / "truth.json"
    truth = json.loads(path.read_text())
    path.write_text(json.dumps({**truth, "files": {k: v + 1 for k, v in truth["files"].items()}}, indent=2))
    _prepare(moved, data)
    assert {f: f.stat().st_mtime_ns for f in (data / "cases").iterdir()} == stamps
    entry = data / "cases" / "case_0001.json"  # a case whose shard has not run is named, not skipped
    entry.rename(tmp_path / "aside.json")
    with pytest.raises(InputError, match=r"1 case\(s\) not prepared yet \(first: \['case_0001'\]\)"):
        merge_manifest(data)
    assert (data / "manifest.json").read_bytes() == merged
    (tmp_path / "aside.json").rename(entry)
    # cohorts assembled by hand may share every cohort.json field: their cases' truths tell them apart
    truth = json.loads((moved / "case_0001" / "truth.json").read_text())
    truth["objects"][next(iter(truth["objects"]))]["mass_g"] += 1.0
    (moved / "case_0001" / "truth.json").write_text(json.dumps(truth))
    with pytest.raises(InputError, match=ANOTHER_COHORT):
        _prepare(moved, data)


@pytest.mark.slow
def test_resume_shards_and_include_failed(cohort, tmp_path):
    full = _prepare(cohort, tmp_path / "full")
    before = (full / "cases" / "case_0000.json").stat().st_mtime_ns
    _prepare(cohort, full)  # resume: nothing left to do
    assert (full / "cases" / "case_0000.json").stat().st_mtime_ns == before
    sharded = tmp_path / "sharded"
    _prepare(cohort, sharded, shard=(1, 2))
    assert not (sharded / "manifest.json").exists()
    with pytest.raises(InputError, match="not prepared yet"):
        merge_manifest(sharded)
    _prepare(cohort, sharded, shard=(0, 2))
    a = json.loads((full / "manifest.json").read_text())
    b = json.loads((sharded / "manifest.json").read_text())
    assert _entries(a) == _entries(b)
    for c in a["cases"][:2]:
        ta, tb = load_file(full / c["file"]), load_file(sharded / c["file"])
        assert all(np.array_equal(ta[k].numpy(), tb[k].numpy()) for k in ta)
    shutil.copy(sharded / "manifest.json", tmp_path / "m.json")
    (sharded / "manifest.json").unlink()
    merge_manifest(sharded)
    assert (sharded / "manifest.json").read_text() == (tmp_path / "m.json").read_text()
    with pytest.raises(InputError, match="other settings"):
        _prepare(cohort, full, include_failed=True)
    kept = json.loads((_prepare(cohort, tmp_path / "all", include_failed=True) / "manifest.json").read_text())
    broken = kept["cases"][2]
    assert broken["status"] == "ok" and broken["reasons"] and broken["file"]
    assert set(broken["registration"]) == {"pelvis", "femur_left", "femur_right"}


def test_each_femur_is_rendered_at_its_own_pose():
    """The aligned femur channel = left femur at femur_left's pose +
    right femur at femur_right's pose."""
    a = np.zeros((24, 24, 32), np.uint8)
    a[14:20, 8:16, 10:22] = 1   # pelvis
    a[4:12, 9:15, 20:25] = 3    # femur left (+x)
    a[4:12, 9:15, 7:12] = 4     # femur right
    ct = Volume(np.where(a > 0, 700, 0).astype(np.int16), (3.0,) * 3, (-48.0, -36.0, -36.0), np.eye(3))
    labels = ct.with_array(a)
    g = Geometry(64, 64, (2.5, 2.5))
    p = default_ap_pose(ct.center, g)
    poses = {"pelvis": p, "femur_left": rigid((0, 0, 5), (8, 0, 0)) @ p,
             "femur_right": rigid((0, 0, -5), (0, 10, 0)) @ p}
    got = _aligned_bones(ct, labels, load_object_map("synthetic"), g, poses).data[:, 1]

    def one(value, pose):
        m = ObjectMap("one", (ObjectSpec("b", "bone", (value,)),), "ignore")
        return project_objects(ct, labels, m, g, pose).data[:, 0]
    expected = one(3, poses["femur_left"]) + one(4, poses["femur_right"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("include_failed", [False, True])
def test_objects_outside_the_detector_exclude_the_case(cohort, tmp_path, include_failed):
    """A dataset detector covering half the field of view: every case loses objects off the
    detector and is excluded with that reason, also with ``include_failed`` (which keeps
    failed QC or registration, not targets whose sums fall short of the truth)."""
    from MSKdeXTraining.prepare import dataset_geometry, prepare_dataset

    g = dataset_geometry(cohort, 32)
    small = replace(g, pixel_spacing=tuple(s / 2 for s in g.pixel_spacing))
    out = prepare_dataset(cohort, tmp_path / "ds", small, workers=1, settings=CHEAP,
                          include_failed=include_failed)
    m = json.loads((out / "manifest.json").read_text())
    for c in m["cases"][:2]:
        assert c["qc"]["drr_lost_fraction"] > 0.005
        assert c["status"] == "excluded" and any("partly outside the detector" in r for r in c["reasons"])
    if include_failed:  # a case entry kept "ok" by an earlier MSKdeX: the manifest excludes it
        entry = out / "cases" / f"{m['cases'][0]['id']}.json"
        entry.write_text(json.dumps({**json.loads(entry.read_text()), "status": "ok", "reasons": []}))
        merge_manifest(out)
        merged = json.loads((out / "manifest.json").read_text())["cases"][0]
        assert merged["status"] == "excluded" and merged["reasons"] == [
            f"objects partly outside the detector in the default AP view (up to "
            f"{merged['qc']['drr_lost_fraction']:.1%} lost, > 0.5%)"]


def test_prepare_into_a_folder_of_other_settings_is_refused_before_any_work(cohort, tmp_path):
    """A prepare folder made with other settings is refused up front (no case is redone)."""
    from MSKdeXTraining.prepare import dataset_geometry, prepare_dataset

    out = tmp_path / "ds"
    out.mkdir()
    g = dataset_geometry(cohort, 32)
    (out / "prepare.json").write_text(json.dumps({"cohort": str(cohort.resolve()), "geometry": g.to_json(),
                                                  "registration": CHEAP.to_json(), "include_failed": False}))
    with pytest.raises(InputError, match=r"other settings \(include_failed differ\)"):
        prepare_dataset(cohort, out, g, workers=1, settings=CHEAP, include_failed=True)
    assert not (out / "cases").exists()
    # a record from before the restarts (session 15) cannot resume with them (its poses could
    # differ), only without; one from before other settings fields (or the cohort's hash)
    # were added resumes: they held their defaults
    from MSKdeXTraining.prepare import _check_settings, _cohort_sha256, read_cohort

    older = {k: v for k, v in CHEAP.to_json().items()
             if not k.startswith("femur_") and k not in ("restarts", "restart_iterations")}
    record = {"cohort": str(cohort.resolve()), "geometry": g.to_json(), "registration": older,
              "include_failed": False}
    identity = _cohort_sha256(cohort, read_cohort(cohort)[0])
    now = json.loads(json.dumps({"cohort_sha256": identity, "geometry": g.to_json(),
                                 "registration": CHEAP.to_json(), "include_failed": False}))
    (out / "prepare.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"\(registration.femur_restarts differ\)"):
        _check_settings(out, cohort, now)
    no_restarts = {**now, "registration": replace(CHEAP, femur_restarts=()).to_json()}
    _check_settings(out, cohort, no_restarts)
    assert json.loads((out / "prepare.json").read_text()) == json.loads(json.dumps(
        {"cohort": str(cohort.resolve()), **no_restarts}))
    record = {**record, "registration": {**older, "femur_restarts": now["registration"]["femur_restarts"]}}
    (out / "prepare.json").write_text(json.dumps(record))
    _check_settings(out, cohort, now)
    assert json.loads((out / "prepare.json").read_text()) == {"cohort": str(cohort.resolve()), **now}
    (out / "prepare.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"\(registration.femur_gc_threshold differ\)"):
        _check_settings(out, cohort, {**now, "registration": replace(CHEAP, femur_gc_threshold=0.7).to_json()})
    # the joint refinement's fields, since removed: off gave the same poses, on did not
    (out / "prepare.json").write_text(json.dumps(
        {**record, "registration": {**CHEAP.to_json(), "refine": False, "refine_max_gc_drop": 0.01}}))
    _check_settings(out, cohort, now)
    (out / "prepare.json").write_text(json.dumps(
        {**record, "registration": {**CHEAP.to_json(), "refine": True, "refine_max_gc_drop": 0.01}}))
    with pytest.raises(InputError, match="joint refinement"):
        _check_settings(out, cohort, now)
    # a pre-hash record of a cohort elsewhere cannot be told from another cohort: refused
    (out / "prepare.json").write_text(json.dumps({**record, "cohort": "/elsewhere/c"}))
    with pytest.raises(InputError, match="cohort_sha256: prepared from /elsewhere/c"):
        _check_settings(out, cohort, now)


def test_a_raw_radiograph_is_windowed_as_decompose_does(cohort, tmp_path):
    """Training sees radiographs in [0, 1] processed as at inference: a raw (unprocessed) image
    is windowed between its 1st and 99.5th percentiles, a processed one is kept."""
    from MSKdeXTraining.radiograph_io import unit_range

    raw = tmp_path / "raw"
    shutil.copytree(cohort, raw)
    path = raw / "case_0000" / "xray.mha"
    image = sitk.ReadImage(str(path))
    scaled = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) * 3000.0 + 200.0).astype(np.float32))
    scaled.CopyInformation(image)
    sitk.WriteImage(scaled, str(path))
    kept = load_file(_prepare(cohort, tmp_path / "a") / "cases" / "case_0000.safetensors")["xray"]
    out = _prepare(raw, tmp_path / "b")
    windowed = load_file(out / "cases" / "case_0000.safetensors")["xray"]
    case = json.loads((out / "manifest.json").read_text())["cases"][0]
    raw_values = sitk.GetArrayFromImage(scaled).astype(np.float64)
    lo, hi = np.percentile(raw_values, (1, 99.5))  # the documented window, computed here
    expected = np.clip((raw_values - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(unit_range(raw_values)[0], expected, atol=1e-6)
    np.testing.assert_allclose(windowed.numpy(), resample_image(expected, read_xray(path)[1],
                                                                Geometry.from_json(case["geometry"])), atol=1e-6)
    assert 0.0 <= float(windowed.min()) and 0.99 < float(windowed.max()) <= 1.0
    assert not torch.equal(windowed, kept)


def test_truth_values_are_checked(cohort, tmp_path):
    """A truth.json value that is not a number >= 0 names the file and the field; prepare
    then excludes the case with that reason and still prepares the others."""
    from MSKdeXTraining.prepare import _read_truth, read_cohort

    _, objects = read_cohort(cohort)
    doc = json.loads((cohort / "case_0000" / "truth.json").read_text())
    assert set(_read_truth(cohort / "case_0000" / "truth.json", objects)) >= set(objects.names)
    name = objects.names[0]
    for bad in (None, "12", -1.0, float("inf")):
        doc["objects"][name]["mass_g"] = bad
        (tmp_path / "truth.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=rf"truth.json: field 'objects.{name}.mass_g' must be a number >= 0 \(g\)"):
            _read_truth(tmp_path / "truth.json", objects)
    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    shutil.copy(tmp_path / "truth.json", copy / "case_0000" / "truth.json")
    m = json.loads((_prepare(copy, tmp_path / "ds") / "manifest.json").read_text())
    bad, good = m["cases"][:2]
    assert bad["status"] == "excluded" and bad["file"] is None and bad["registration"] == {}
    assert bad["reasons"] == [f"unreadable input: {copy / 'case_0000' / 'truth.json'}: field "
                              f"'objects.{name}.mass_g' must be a number >= 0 (g), got inf"]
    assert good["file"] == "cases/case_0001.safetensors" and set(good["registration"]) == {
        "pelvis", "femur_left", "femur_right"}
    # training reads a dataset whose excluded case has no file (before: a TypeError on its None)
    from MSKdeXTraining.training.data import PreparedDataset
    m["cases"][1]["status"] = "ok"  # the test cohort's cheap registration fails: taken as usable here
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(m))
    assert PreparedDataset(tmp_path / "ds").ids == ["case_0001"]
    doc["objects"] = list(doc["objects"])  # not a mapping: named, not a TypeError that stops the shard
    (tmp_path / "truth.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"truth.json: field 'objects' must map object names to their volume "
                                         r"and mass, got list"):
        _read_truth(tmp_path / "truth.json", objects)


def test_decompose_feeds_the_model_what_training_fed_it(cohort, tmp_path):
    """A cohort radiograph through decompose's input path (windowing, matched detector at the
    prepared pixel count, averaged onto the model grid) is the training input of its case."""
    from MSKdeXTraining.inference import Decomposer
    from MSKdeXTraining.radiograph_io import read_radiograph
    from MSKdeXTraining.training.config import load_config
    from MSKdeXTraining.training.data import PreparedDataset
    from MSKdeXTraining.training.trainer import train

    data = _prepare(cohort, tmp_path / "ds", include_failed=True)
    config = load_config("small", {"epochs": 1, "batch_size": 2, "image_size": 16, "gan": False,
                                   "lambda_cyc": 0.0, "g_width": 4, "g_branches": 1, "g_blocks": 1,
                                   "g_stem_stride": 1, "device": "cpu", "amp_bf16": False})
    decomposer = Decomposer.from_run(train(config, data, tmp_path / "run"))
    assert decomposer.model.meta["input"]["prepared_shape"] == [32, 32]
    trained_on = PreparedDataset(data, size=(16, 16))
    for k, case in enumerate(trained_on.ids):
        x, detector, _ = decomposer.model_input(read_radiograph(cohort / case / "xray.mha"))
        assert detector.shape == (16, 16)
        np.testing.assert_allclose(x, trained_on.load(k)["xray"][0].numpy(), atol=1e-5)


def test_own_pairs_assemble_into_a_cohort_that_prepares(cohort, tmp_path, capsys):
    """`mskdex assemble` on a spreadsheet-saved table (BOM, spaces, CRLF) of the cohort's own CTs
    and labels with its films as a 16-bit DICOM (distances in the tags) and a plain image
    (distances in the table): the generator's ground truth and geometry, the DICOM film as
    decompose will see it, default and given patients; a rerun redoes only a changed row (or a
    case whose files were cut short, its truth.json aside: that case is refused); the cohort
    prepares with its patients."""
    from test_radiograph_io import write_dicom

    from MSKdeXTraining.cli import main
    from MSKdeXTraining.cohort.assemble import assemble_cohort
    from MSKdeXTraining.radiograph_io import read_radiograph, unit_range

    raw = tmp_path / "raw"
    raw.mkdir()
    g = [json.loads((cohort / c / "xray.json").read_text())["geometry"] for c in ("case_0000", "case_0001")]
    film = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "case_0000" / "xray.mha")))
    dicom = write_dicom(raw / "film0.dcm", np.rint(film * 4000 + 50), ImagerPixelSpacing=[4.6, 4.6],
                        DistanceSourceToDetector=g[0]["sdd"],
                        DistanceSourceToPatient=g[0]["sod"] + HIP_ABOVE_TABLE_MM)  # to the table
    shutil.copy(cohort / "case_0001" / "xray.mha", raw / "film1.mha")  # without its sidecar
    header = "\ufeffcase, patient, ct, labels, xray, pixel_spacing_mm, sdd_mm, sod_mm"
    rows = [f"hip0,p1,{cohort}/case_0000/ct.nii.gz,{cohort}/case_0000/labels.nii.gz,raw/film0.dcm,4.6,,",
            f"hip1,,{cohort}/case_0001/ct.nii.gz,{cohort}/case_0001/labels.nii.gz,raw/film1.mha,4.6,"
            f"{g[1]['sdd']!r},{g[1]['sod']!r}"]
    table = tmp_path / "pairs.csv"
    table.write_text("\r\n".join([header, *rows]) + "\r\n", encoding="utf-8")
    out = tmp_path / "own"
    command = ["assemble", "--pairs", str(table), "--objects", "synthetic", "--out", str(out), "--workers", "2"]
    assert main(command) == 0
    assert f"cohort of 2 cases (2 patients) in {out}: 2 made; next:" in capsys.readouterr().out
    assert main(command) == 0  # resumed: what it kept is said
    assert f"in {out}: 0 made, 2 kept as an earlier run made them; next:" in capsys.readouterr().out
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["complete"] and meta["cases"] == ["hip0", "hip1"]
    assert meta["patients"] == {"hip0": "p1", "hip1": "hip1"}
    for k, case in enumerate(["case_0000", "case_0001"]):
        truth = json.loads((out / f"hip{k}" / "truth.json").read_text())
        assert truth["objects"] == json.loads((cohort / case / "truth.json").read_text())["objects"]
        assert json.loads((out / f"hip{k}" / "xray.json").read_text())["geometry"] == g[k]
    radiograph = read_radiograph(dicom, (4.6, 4.6))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "hip0" / "xray.mha"))),
                                  unit_range(radiograph.array, radiograph.source["value_range"])[0])
    assert read_radiograph(out / "hip0" / "xray.mha").source["spacing_field"].endswith(
        f"a radiograph assembled from {dicom})")
    stamps = [(out / f"hip{k}" / "truth.json").stat().st_mtime_ns for k in (0, 1)]
    assert assemble_cohort(table, "synthetic", out, workers=1) == []  # unchanged: nothing redone
    assert [(out / f"hip{k}" / "truth.json").stat().st_mtime_ns for k in (0, 1)] == stamps
    table.write_text("\n".join([header, rows[0], rows[1].replace("hip1,,", "hip1,p2,")]) + "\n")
    assert assemble_cohort(table, "synthetic", out, workers=1) == ["hip1"]  # its row changed: made again
    assert (out / "hip0" / "truth.json").stat().st_mtime_ns == stamps[0]
    assert (out / "hip1" / "truth.json").stat().st_mtime_ns != stamps[1]
    film = (out / "hip0" / "xray.mha").read_bytes()  # a case cut short (a copy that stopped) is made again
    (out / "hip0" / "xray.mha").write_bytes(film[:-100])
    assert assemble_cohort(table, "synthetic", out, workers=1) == ["hip0"]
    assert (out / "hip0" / "xray.mha").read_bytes() == film
    truth = (out / "hip0" / "truth.json").read_bytes()  # ... unless the cut file is the record of what it is
    (out / "hip0" / "truth.json").write_bytes(truth[:-100])
    with pytest.raises(InputError, match=r"hip0: exists but is no case that assemble made \(its truth.json is "
                                         r"unreadable, e.g. cut short: .*not valid JSON"):
        assemble_cohort(table, "synthetic", out, workers=1)
    (out / "hip0" / "truth.json").write_bytes(truth)
    manifest = json.loads((_prepare(out, tmp_path / "ds") / "manifest.json").read_text())
    assert [c["patient"] for c in manifest["cases"]] == ["p1", "p2"]


def test_a_ct_that_runs_on_below_the_hip_is_cropped_as_the_cohort_is(cohort):
    """A hip CT extended by 20 slices of thigh below (its last slice repeated: soft tissue and
    femur shafts) crops back to the cohort's own CT, origin included; an oblique direction
    crops along the axis nearest superior-inferior."""
    from MSKdeXTraining.cohort.assemble import crop_to_region

    ct, labels = read_ct(cohort / "case_0000" / "ct.nii.gz"), read_labels(cohort / "case_0000" / "labels.nii.gz")
    k = labels.superior_axis
    assert k == 0 and np.any(labels.array[0] == 3)  # the femur (3, 4) reaches the lowest slice

    def longer(vol):
        array = np.concatenate([np.repeat(vol.array[:1], 20, axis=0), vol.array])
        return Volume(array, vol.spacing, vol.origin - 20 * vol.spacing[2] * vol.direction[:, 2], vol.direction)

    cropped_ct, cropped_labels = crop_to_region(longer(ct), longer(labels), load_object_map("synthetic"))
    np.testing.assert_array_equal(cropped_ct.array, ct.array)
    np.testing.assert_array_equal(cropped_labels.array, labels.array)
    np.testing.assert_allclose(cropped_ct.origin, ct.origin, atol=1e-9)
    # objects marked cut_at_region leave the region: with the muscles marked too, the crop
    # ends at the pelvis and sacrum (+ 10 mm), and cuts a muscle there
    spec = load_object_map("synthetic").to_json()
    for o in spec["objects"]:
        o["cut_at_region"] = o["name"] not in ("pelvis", "sacrum")
    _, higher = crop_to_region(ct, labels, ObjectMap.from_json(spec))
    assert higher.array.shape[0] < labels.array.shape[0] and np.isin(higher.array[0], list(range(11, 23))).any()
    # an oblique grid: the array's last axis (i) runs superior-inferior, and the crop moves the
    # origin along that axis's direction
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # columns: i, j, k in LPS
    turned = Volume(np.moveaxis(labels.array, 0, 2), labels.spacing[::-1], labels.origin, direction)
    assert turned.superior_axis == 2
    cut = turned.cropped(2, slice(3, None))
    assert cut.array.shape[2] == turned.array.shape[2] - 3
    np.testing.assert_allclose(cut.origin, turned.origin + 3 * turned.spacing[0] * direction[:, 0])
    np.testing.assert_allclose(cut.affine @ [0, 0, 0, 1], turned.affine @ [3, 0, 0, 1])


@pytest.mark.parametrize("text, message", [
    ("case,ct,labels\n", r"missing \['xray'\]"),
    ("case,ct,labels,xray,ct\n", "each once"),
    ("case,ct,labels,xray,sdd_mm\nhip0,{ct},{ct},{ct},far\n", "line 2: field 'sdd_mm' must be a number > 0"),
    ("case,ct,labels,xray,sdd_mm\nhip0,{ct},{ct},{ct},-5\n", "line 2: field 'sdd_mm' must be a number > 0"),
    ("case,ct,labels,xray\nhip0,{ct},{ct},{ct}\n\nHIP0,{ct},{ct},{ct}\n", "line 4: field 'case' 'HIP0' repeats line 2"),
    ("case,ct,labels,xray\n../x,{ct},{ct},{ct}\n", "line 2: field 'case' must name a case folder"),
    ("case,ct,labels,xray\nhip0,{ct},{ct},{ct},extra\n", "line 2: 5 fields for 4 columns"),
    ("case,ct,labels,xray\nhip0,{ct},nope.nii.gz,{ct}\n", "line 2: field 'labels': .*nope.nii.gz does not exist"),
])
def test_a_bad_pairs_table_names_the_file_line_and_field(cohort, tmp_path, text, message):
    from MSKdeXTraining.cohort.assemble import read_pairs

    (tmp_path / "bad.csv").write_text(text.format(ct=cohort / "case_0000" / "ct.nii.gz"))
    with pytest.raises(InputError, match=f"bad.csv.*{message}"):
        read_pairs(tmp_path / "bad.csv")


def test_assemble_refuses_what_would_give_wrong_ground_truth(cohort, tmp_path):
    """No guessed source distances; a CT whose values are not HU (or a label map given as the CT);
    one CT given two patients (the first and last found before any case is written); the wrong
    object map."""
    from MSKdeXTraining.cohort.assemble import assemble_cohort

    case = cohort / "case_0000"
    shutil.copy(case / "xray.mha", tmp_path / "film.mha")
    image = sitk.ReadImage(str(case / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt32) + 1024, str(tmp_path / "offset.nii.gz"))
    line = f"{case}/ct.nii.gz,{case}/labels.nii.gz,film.mha,4.6"
    film = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "xray.mha")))
    sitk.WriteImage(sitk.GetImageFromArray((255 * film / film.max()).astype(np.uint8)), str(tmp_path / "film.png"))
    cases = [([f"a,,{line},1100,900", f"b,,{line},,"],
              r"line 3 \(case 'b'\): .*film.mha: source distances not in the file .* nor given "
              r"\(columns sdd_mm / sod_mm, mm\)"),
             ([f"a,,{case}/ct.nii.gz,{case}/labels.nii.gz,film.png,,1100,900"],
              r"line 2 \(case 'a'\): .*film.png: no usable pixel spacing .*; pass it explicitly "
              r"\(column pixel_spacing_mm, mm at the detector: e.g. .* mm if the film's \d+ columns span"),
             ([f"a,,{tmp_path}/offset.nii.gz,{case}/labels.nii.gz,film.mha,4.6,1100,900"],
              r"offset.nii.gz: the muscles' median is 10\d\d, not HU"),
             ([f"a,,{case}/labels.nii.gz,{case}/labels.nii.gz,film.mha,4.6,1100,900"],
              r"labels.nii.gz: its lowest value is 0, not HU: .* \(is it a label map"),
             ([f"a,p1,{line},1100,900", f"b,p2,{line},1100,900"],
              r"line 3 \(case 'b'\): its CT is that of .*line 2 .*patient 'p1'"),
             ([f"fold_1,,{line},1100,900"], r"line 2: field 'case' 'fold_1' is a name that marks another kind")]
    for i, (rows, message) in enumerate(cases):
        (tmp_path / "t.csv").write_text("\n".join(["case,patient,ct,labels,xray,pixel_spacing_mm,sdd_mm,sod_mm",
                                                   *rows]) + "\n")
        with pytest.raises(InputError, match=message):
            assemble_cohort(tmp_path / "t.csv", "synthetic", tmp_path / f"out{i}", workers=1)
        if "source distances" in message or "its CT is that of" in message:  # before case 'a' is written
            assert not (tmp_path / f"out{i}").exists()
    # the wrong object map for the label maps: every truth would be 0
    (tmp_path / "t.csv").write_text(f"case,ct,labels,xray,pixel_spacing_mm,sdd_mm,sod_mm\na,{line},1100,900\n")
    with pytest.raises(InputError, match=r"labels.nii.gz: holds none of the labels of object map 'totalsegmentator' "
                                         r"\(the file has labels \[1, 2, .*\] \.\.\.\); is 'totalsegmentator' the map"):
        assemble_cohort(tmp_path / "t.csv", "totalsegmentator", tmp_path / "out_map", workers=1)


def _table(path, rows: list[str]) -> None:
    """A pairs table whose rows end with a film's spacing and source distances (:func:`_film`)."""
    path.write_text("\n".join(["case,ct,labels,xray,pixel_spacing_mm,sdd_mm,sod_mm", *rows]) + "\n")


def _film(cohort, case: str) -> str:
    """The pixel spacing, SDD and SOD of a cohort case's film, as a table's last fields."""
    g = json.loads((cohort / case / "xray.json").read_text())["geometry"]
    return f"{g['pixel_spacing'][0]},{g['sdd']},{g['sod']}"


def test_assemble_never_removes_an_input(cohort, tmp_path):
    """Inputs inside a case folder of --out would go with it when the case is (re)made: refused
    before any work, naming the row and field, whether --out is the inputs' own folder or an
    assembled cohort whose labels were edited in place."""
    from MSKdeXTraining.cohort.assemble import assemble_cohort

    given = _film(cohort, "case_0000")
    data = tmp_path / "data"
    (data / "caseA").mkdir(parents=True)
    for name, copy in [("ct.nii.gz", "ct_orig.nii.gz"), ("labels.nii.gz", "seg.nii.gz"), ("xray.mha", "film.mha")]:
        shutil.copy(cohort / "case_0000" / name, data / "caseA" / copy)
    _table(data / "pairs.csv", [f"caseA,caseA/ct_orig.nii.gz,caseA/seg.nii.gz,caseA/film.mha,{given}"])
    with pytest.raises(InputError, match=r"pairs.csv line 2 \(case 'caseA'\): field 'ct': .*caseA/ct_orig.nii.gz "
                                         r"lies in the case folder .*data/caseA, which assemble replaces"):
        assemble_cohort(data / "pairs.csv", "synthetic", data, workers=1)
    assert sorted(p.name for p in (data / "caseA").iterdir()) == ["ct_orig.nii.gz", "film.mha", "seg.nii.gz"]
    assert not (data / "cohort.json").exists()
    out = tmp_path / "out"
    assemble_cohort(data / "pairs.csv", "synthetic", out, workers=1)
    edited = out / "caseA" / "labels.nii.gz"
    _table(data / "pairs.csv", [f"caseA,caseA/ct_orig.nii.gz,{edited},caseA/film.mha,{given}"])
    with pytest.raises(InputError, match=r"line 2 \(case 'caseA'\): field 'labels': .* lies in the case folder"):
        assemble_cohort(data / "pairs.csv", "synthetic", out, workers=1)
    assert edited.is_file()


def test_assemble_writes_only_into_its_own_cohort_and_cases(cohort, tmp_path):
    """A folder of other files, another (synthetic) cohort, and a case folder that assemble did
    not make (a file put in it, or made by hand) are refused before any work, left as they are."""
    from MSKdeXTraining.cohort.assemble import assemble_cohort

    def row(case: str) -> str:
        folder = cohort / case
        return f"{case},{folder}/ct.nii.gz,{folder}/labels.nii.gz,{folder}/xray.mha,{_film(cohort, case)}"

    table = tmp_path / "pairs.csv"
    _table(table, [row("case_0000")])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    synthetic = tmp_path / "synthetic"
    shutil.copytree(cohort, synthetic)
    for out, message in [(other, r"other: holds files but no cohort.json; expected a new or empty folder"),
                         (synthetic, r"synthetic/cohort.json: field 'generator' is \{'name': 'mskdex cohort'")]:
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        with pytest.raises(InputError, match=message):
            assemble_cohort(table, "synthetic", out, workers=1)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    out = tmp_path / "own"
    assemble_cohort(table, "synthetic", out, workers=1)
    (out / "case_0000" / "notes.txt").write_text("mine")
    (out / "case_0001").mkdir()
    shutil.copy(cohort / "case_0001" / "ct.nii.gz", out / "case_0001")
    _table(table, [row("case_0000"), row("case_0001")])
    with pytest.raises(InputError, match=r"line 2 \(case 'case_0000'\): .*own/case_0000: exists but is no case that "
                                         r"assemble made \(it also holds \['notes.txt'\]\)"):
        assemble_cohort(table, "synthetic", out, workers=1)
    (out / "case_0000" / "notes.txt").unlink()
    with pytest.raises(InputError, match=r"line 3 \(case 'case_0001'\): .*own/case_0001: exists but is no case that "
                                         r"assemble made \(no truth.json with field 'assembled_from'\)"):
        assemble_cohort(table, "synthetic", out, workers=1)
    assert [p.name for p in (out / "case_0001").iterdir()] == ["ct.nii.gz"]


def test_prepare_with_no_case_ok_is_an_error_that_keeps_the_manifest(cohort, tmp_path, capsys):
    """`mskdex prepare` whose every case is excluded (here each label map unreadable) ends with
    exit 2 naming the manifest, which is written, with each case's reasons; a rerun tries the
    unreadable cases again; a run killed after its last case but before the manifest is
    finished by the rerun, with no case left to do; a shard index outside 0..n-1 is refused
    before any work."""
    from MSKdeXTraining.cli import main

    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    for case in json.loads((copy / "cohort.json").read_text())["cases"]:
        (copy / case / "labels.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "ds"
    with pytest.raises(InputError, match=r"shard must be \(i, n\) with 0 <= i < n, got \(2, 2\)"):
        prepare_dataset(copy, out, dataset_geometry(cohort, 32), shard=(2, 2), workers=1)
    assert not out.exists()
    args = ["prepare", "--cohort", str(copy), "--out", str(out), "--image-size", "32", "--workers", "1"]
    assert main(args) == 2
    assert capsys.readouterr().err.endswith(f"mskdex prepare: error: {out / 'manifest.json'}: none of the 3 case(s) "
                                            "was prepared ok; each case's 'reasons' there say why\n")
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(c["status"] == "excluded" and "unreadable input" in c["reasons"][0] for c in manifest["cases"])
    assert main(args) == 2  # cases excluded for unreadable input are tried again (their files may be mended)
    assert "3 case(s) to prepare" in capsys.readouterr().err
    for entry in (out / "cases").glob("*.json"):  # as if excluded by QC: a verdict that stays
        entry.write_text(json.dumps({**json.loads(entry.read_text()), "reasons": ["segmentation QC failed"]}))
    (out / "manifest.json").unlink()
    assert main(args) == 2
    assert "0 case(s) to prepare" in capsys.readouterr().err  # the manifest rebuilt from the case entries
    written = (out / "manifest.json").read_text()
    manifest = json.loads(written)
    assert _entries(manifest) and all(c["reasons"] == ["segmentation QC failed"] for c in manifest["cases"])
    # a manifest edited by hand or damaged, on a rerun with nothing left to do: named, with the way to rebuild it
    for damaged, problem in [(json.dumps({k: v for k, v in manifest.items() if k != "counts"}), "missing field"),
                             (json.dumps({**manifest, "counts": []}), "fields 'counts' (ok, excluded, cases) or"),
                             ("[]", "expected a JSON object"), (written + "junk", "not valid JSON")]:
        (out / "manifest.json").write_text(damaged)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert problem in err
        assert err.endswith(f"rebuild it from the case entries: mskdex prepare --merge --out {out}\n")
    assert main(["prepare", "--merge", "--out", str(out), "--cohort", str(copy)]) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"] == manifest["counts"]


def test_a_cohort_unfinished_or_with_patients_of_no_case_is_refused(cohort, tmp_path):
    """read_cohort takes a cohort whose 'complete' is true (absent: not known to be finished)
    and whose 'patients' name cases of its own; a dataset detector's pixels within 2x of square."""
    meta = json.loads((cohort / "cohort.json").read_text())
    for change, message in [({"complete": None}, r"field 'complete' is not true"),
                            ({"patients": {"case_0000": "p1", "case_9999": "p2"}},
                             r"field 'patients' must map case names \(of 'cases'\) to patient ids")]:
        (tmp_path / "cohort.json").write_text(json.dumps({k: v for k, v in {**meta, **change}.items()
                                                          if v is not None}))
        with pytest.raises(InputError, match=rf"cohort.json: {message}"):
            read_cohort(tmp_path)
    _, own = read_xray(cohort / meta["cases"][0] / "xray.mha", require_distances=True)
    rows = own.rows // 4
    with pytest.raises(InputError, match=r"gives pixels of .* mm; expected nearly square pixels"):
        dataset_geometry(cohort, rows, 3 * own.cols // 4)  # pixels 3x as tall as wide
    sized = dataset_geometry(cohort, rows, round(1.8 * own.cols / 4))
    assert 1.7 < sized.pixel_spacing[0] / sized.pixel_spacing[1] < 1.9


def test_a_pairs_table_refuses_zero_or_infinite_numbers_and_hidden_cases(cohort, tmp_path):
    """Distances and a pixel spacing of 0 mm (a spreadsheet's empty number) or infinity, and a
    hidden case name (a cohort folder's hidden entries are passed over, as not its cases): the row and
    field named, before any work."""
    from MSKdeXTraining.cohort.assemble import read_pairs

    ct = cohort / "case_0000" / "ct.nii.gz"
    for key, text in (("sdd_mm", "0"), ("sod_mm", "0.0"), ("pixel_spacing_mm", "inf")):
        (tmp_path / "t.csv").write_text(f"case,ct,labels,xray,{key}\nhip0,{ct},{ct},{ct},{text}\n")
        with pytest.raises(InputError, match=rf"t.csv line 2: field '{key}' must be a number > 0 \(mm\), got '{text}'"):
            read_pairs(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text(f"case,ct,labels,xray\n.hip0,{ct},{ct},{ct}\n")
    with pytest.raises(InputError, match=r"t.csv line 2: field 'case' must name a case folder \(no '/', not hidden\)"):
        read_pairs(tmp_path / "t.csv")


def test_assemble_refuses_table_distances_of_an_implausible_magnification(cohort, tmp_path):
    """sdd_mm / sod_mm of the table giving a magnification of 2.5 (e.g. the distance to the
    table for sod_mm): refused naming the film, before any case is written."""
    from MSKdeXTraining.cohort.assemble import assemble_cohort

    case = cohort / "case_0000"
    shutil.copy(case / "xray.mha", tmp_path / "film.mha")
    spacing = json.loads((case / "xray.json").read_text())["geometry"]["pixel_spacing"][0]
    _table(tmp_path / "t.csv", [f"a,{case}/ct.nii.gz,{case}/labels.nii.gz,film.mha,{spacing},1000,400"])
    with pytest.raises(InputError, match=r"line 2 \(case 'a'\): .*film.mha: SDD / SOD is 2.5: implausible; expected "
                                         r"SDD / SOD in \[1, 2\]; give sdd_mm and sod_mm \(mm\) in the table"):
        assemble_cohort(tmp_path / "t.csv", "synthetic", tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_assemble_keeps_label_values_above_255(cohort, tmp_path):
    """A label map whose values run past 255 (a map of many structures) is written with them
    whole (16-bit), not wrapped into 8 bits: the case's labels equal the input's. A value the map
    leaves unclaimed while it says "unmapped_labels": "error" is refused by assemble."""
    from MSKdeXTraining.cohort.assemble import assemble_cohort

    case = cohort / "case_0000"
    image = sitk.ReadImage(str(case / "labels.nii.gz"))
    array = sitk.GetArrayFromImage(image).astype(np.uint16)
    shifted = sitk.GetImageFromArray(np.where(array > 0, array + 300, 0).astype(np.uint16))
    shifted.CopyInformation(image)
    sitk.WriteImage(shifted, str(tmp_path / "labels.nii.gz"))
    spec = load_object_map("synthetic").to_json()
    for o in spec["objects"]:
        o["labels"] = [v + 300 for v in o["labels"]]
        o["sides"] = {side: [v + 300 for v in values] for side, values in o.get("sides", {}).items()}
    (tmp_path / "map.json").write_text(json.dumps(spec))
    film = _film(cohort, "case_0000")
    _table(tmp_path / "t.csv", [f"a,{case}/ct.nii.gz,{tmp_path}/labels.nii.gz,{case}/xray.mha,{film}"])
    out = tmp_path / "out"
    # a map that does not claim every label value (sacrum 302 left out) and says so ("error"): refused
    # here, naming the line and value, not after prepare's registration
    strict = {**spec, "unmapped_labels": "error", "objects": [o for o in spec["objects"] if o["name"] != "sacrum"]}
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    with pytest.raises(InputError, match=r"line 2 \(case 'a'\): .*labels.nii.gz: label values \[302(, \d+)*\] are not in "
                                         r"object map .*; add them to an object or set \"unmapped_labels\": \"ignore\""):
        assemble_cohort(tmp_path / "t.csv", tmp_path / "strict.json", out, workers=1)
    assert not out.joinpath("a").exists()
    assert assemble_cohort(tmp_path / "t.csv", tmp_path / "map.json", out, workers=1) == ["a"]
    written = read_labels(out / "a" / "labels.nii.gz").array
    given = read_labels(tmp_path / "labels.nii.gz").array
    assert written.max() > 300 and set(np.unique(written)) == set(np.unique(given))


def test_the_summary_counts_failing_cases_kept_by_include_failed(tmp_path, monkeypatch, capsys):
    """`mskdex prepare --include-failed` says how many of its ok cases fail QC or registration,
    rather than reading as if all passed."""
    import MSKdeXTraining.prepare as prepare
    from MSKdeXTraining.cli import main

    cases = [{"id": "a", "status": "ok", "reasons": ["femur_right: registration GC 0.41 below 0.5"]},
             {"id": "b", "status": "ok", "reasons": []}, {"id": "c", "status": "excluded", "reasons": ["metal"]}]

    def fake_prepare(cohort, out, *args, **kw):
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"counts": {"cases": 3, "ok": 2, "excluded": 1}, "cases": cases}))
        return out

    monkeypatch.setattr(prepare, "dataset_geometry", lambda *a: None)
    monkeypatch.setattr(prepare, "prepare_dataset", fake_prepare)
    assert main(["prepare", "--cohort", str(tmp_path), "--out", str(tmp_path / "ds"), "--include-failed"]) == 0
    printed = capsys.readouterr().out
    assert "2 ok (1 of them failing QC or registration, kept by --include-failed" in printed
    assert printed.rstrip().endswith("1 excluded of 3\n  excluded c: metal")  # each excluded case and why
    cases[0]["reasons"] = []
    cases += [{"id": f"x{i}", "status": "excluded", "reasons": ["unreadable input: a", "b"]} for i in range(25)]
    assert main(["prepare", "--cohort", str(tmp_path), "--out", str(tmp_path / "ds2")]) == 0
    printed = capsys.readouterr().out
    assert "manifest.json: 2 ok, 1 excluded of 3\n  excluded c: metal\n  excluded x0: unreadable input: a; b\n" in printed
    assert printed.count("  excluded ") == 20 and printed.rstrip().endswith(
        f"... and 6 more excluded: their 'reasons' in {tmp_path / 'ds2' / 'manifest.json'}")


@pytest.mark.parametrize("cases, message", [
    (["case_0000", 1], r"field 'cases' holds 1; expected names of case folders"),
    (["case_0000", None], r"field 'cases' holds None; expected names of case folders"),
    (["case_0000", ""], r"field 'cases' holds ''; expected names of case folders"),
    (["case_0000", "../elsewhere"], r"field 'cases' holds '../elsewhere'; expected names of case folders"),
    (["case_0000", ".hidden"], r"field 'cases' holds '.hidden'; expected names of case folders"),
    (["case_0000", "case_0001", "case_0000"], r"field 'cases' names \['case_0000'\] more than once"),
])
def test_a_hand_written_cohort_json_names_each_case_folder_once(cohort, tmp_path, cases, message):
    """cases of cohort.json (which users may write by hand, docs/formats.md): names of folders in
    the cohort, each once; anything else is named, not a TypeError, a case prepared twice or a
    path out of the cohort."""
    from MSKdeXTraining.prepare import read_cohort

    copy = tmp_path / "c"
    copy.mkdir()
    meta = json.loads((cohort / "cohort.json").read_text())
    (copy / "cohort.json").write_text(json.dumps({**meta, "cases": cases}))
    with pytest.raises(InputError, match=message):
        read_cohort(copy)


def test_a_case_excluded_for_unreadable_input_is_prepared_once_its_file_is_mended(cohort, tmp_path):
    """A rerun tries a case excluded because its input could not be read again: its file may
    have been copied since (a case excluded by QC or registration keeps its verdict)."""
    copy = tmp_path / "c"
    shutil.copytree(cohort, copy)
    (copy / "case_0001" / "labels.nii.gz").unlink()
    first = json.loads((_prepare(copy, tmp_path / "ds") / "manifest.json").read_text())
    assert first["cases"][1]["reasons"][0].startswith("unreadable input: ") and first["counts"]["excluded"] >= 1
    shutil.copy(cohort / "case_0001" / "labels.nii.gz", copy / "case_0001" / "labels.nii.gz")
    again = json.loads((_prepare(copy, tmp_path / "ds") / "manifest.json").read_text())
    assert again["cases"][1]["file"] == "cases/case_0001.safetensors" and again["cases"][1]["registration"]
    assert _entries(again)[0] == _entries(first)[0]  # the others kept as they were
