"""Decompose with a tiny model trained here on the toy phantom dataset: sums equal the table,
outputs written and resumable, the out-of-distribution flag, real DICOMs, the CLI."""

from __future__ import annotations

import argparse
import copy
import csv
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MSKdeXTraining.batch import decompose_files, output_names
from MSKdeXTraining.commands import decompose as decompose_cmd
from MSKdeXTraining.decomposition_table import TABLE_COLUMNS, write_table_csv
from MSKdeXTraining.environment import environment
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.projector import per_pixel_area
from MSKdeXTraining.inference import Decomposer, sample_augmentations, to_detector
from MSKdeXTraining.ood import OOD_FEATURE, OOD_Z, ORIENTATION_MARGIN
from MSKdeXTraining.radiograph_io import Radiograph
from MSKdeXTraining.training.config import load_config
from MSKdeXTraining.training.data import PreparedDataset
from MSKdeXTraining.training.toy import write_toy_dataset
from MSKdeXTraining.training.trainer import train

TINY = {"name": "tiny", "epochs": 2, "batch_size": 2, "image_size": 32, "g_width": 8,
        "g_branches": 2, "g_blocks": 1, "g_stem_stride": 2, "f_width": 8, "f_blocks": 1,
        "d_width": 8, "d_layers": 2, "checkpoint_every": 2}


def tiny_config(folder: Path, **overrides) -> Path:
    """Write the tiny training config as a YAML file and return its path."""
    import yaml

    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, run): 8 toy cases on a 32^2 detector, G trained for 2 epochs."""
    root = tmp_path_factory.mktemp("tiny")
    data = write_toy_dataset(root / "data", n_cases=8, size=32, seed=0)
    run = train(load_config(tiny_config(root)), data, root / "run", fold=(0, 4))
    return data, run


@pytest.fixture(scope="module")
def decomposer(trained) -> Decomposer:
    return Decomposer.from_run(trained[1])


def toy_film_file(data: Path, index: int, path: Path) -> Path:
    """Case ``index``'s radiograph written to ``path`` (.mha) with 2 mm pixels: plausible for
    a radiograph, 64 mm across."""
    image = sitk.GetImageFromArray(PreparedDataset(data).load(index)["xray"][0].numpy())
    image.SetSpacing((2.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def errors(summaries: list[dict]) -> list[str]:
    """The errors of a batch's summaries, one per file that failed."""
    return [s["error"] for s in summaries if "error" in s]


def toy_radiograph(data: Path, index: int) -> Radiograph:
    ds = PreparedDataset(data)
    x = ds.load(index)["xray"][0].numpy()
    return Radiograph(x, ds.geometry.pixel_spacing, {"format": "test", "bits_stored": 32})


def test_table_equals_drr_sums(trained, decomposer, tmp_path):
    result = decomposer.decompose(toy_radiograph(trained[0], 5), tta=4)
    area = result.geometry.pixel_area_cm2
    assert result.drr.shape == (3, 9, 32, 32) and area == pytest.approx(0.75 * 0.75)
    for i, row in enumerate(result.table):
        assert row["object"] == result.names[i]
        assert row["volume_cm3"] == pytest.approx(result.drr[1, i].astype(np.float64).sum() * area, rel=1e-9)
        assert row["mass_g"] == pytest.approx(result.drr[2, i].astype(np.float64).sum() * area, rel=1e-9)
        assert row["volume_sd_cm3"] >= 0 and row["mass_sd_g"] >= 0
    assert any(r["mass_sd_g"] > 0 for r in result.table)  # augmentations change the prediction
    single = decomposer.decompose(toy_radiograph(trained[0], 5), tta=1)
    # one augmentation measures no spread: no SD (not 0), empty in the CSV, null in the JSON, "-" printed
    assert all(r["volume_sd_cm3"] is None and r["mass_sd_g"] is None for r in single.table)
    paths = single.write(tmp_path / "single")
    with paths["csv"].open() as fh:
        assert {(r["volume_sd_cm3"], r["mass_sd_g"]) for r in csv.DictReader(fh)} == {("", "")}
    assert {(r["volume_sd_cm3"], r["mass_sd_g"]) for r in json.loads(paths["json"].read_text())["objects"]} \
        == {(None, None)}
    for line in decompose_cmd._format(single.table, None).splitlines()[1:10]:  # object kind volume interval SD
        cells = line.split()                                                      # mass interval SD
        assert len(cells) == 8 and cells[4] == cells[7] == "-", line
    assert [r["mass_g"] for r in single.table] == pytest.approx([r["mass_g"] for r in result.table], rel=1e-5)
    with pytest.raises(InputError, match="seed must be >= 0, got -1"):
        decomposer.decompose(toy_radiograph(trained[0], 5), tta=2, seed=-1)
    reports = []  # progress after each batch of 4 augmented images, so a GUI stays responsive
    decomposer.decompose(toy_radiograph(trained[0], 5), tta=8, progress=lambda f, m: reports.append((f, m)))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [m for _, m in reports if m.startswith("predicting:")] == ["predicting: 4 of 8 images",
                                                                       "predicting: 8 of 8 images"]


class _Oracle(torch.nn.Module):
    """A generator that outputs one case's training target in scaled units, whatever its
    input (its features, for the OOD check, are the trained generator's)."""

    def __init__(self, generator: torch.nn.Module, target: torch.Tensor) -> None:
        super().__init__()
        self.generator, self.target = generator, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.to(x.device)[None].expand(len(x), *self.target.shape)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.pooled_features(x)


def test_a_perfect_generator_tabulates_the_ct_truth(trained, decomposer):
    """G replaced by one that outputs a case's training target exactly (divided by the
    model's scale, as training divides it): the table is that case's 3D CT truth, at the
    model's magnification and at another one, so the scale constants, the training targets'
    pixel area and the detector's area chain into cm3 and g."""
    data, run = trained
    ds = PreparedDataset(data, size=decomposer.geometry.shape)
    train_ids = json.loads((run / "model.json").read_text())["split"]["train_ids"]
    on_train = [ds.load(ds.ids.index(c))["drr"].double().mean(dim=(-1, -2)) for c in train_ids]
    scale = decomposer.model.scale.cpu()  # the training cases' mean pixel per channel (physical units)
    torch.testing.assert_close(scale.double(), torch.stack(on_train).mean(dim=0), rtol=1e-5, atol=0)
    item = ds.load(5)
    oracle = copy.copy(decomposer.model)
    oracle.generator = _Oracle(oracle.generator, item["drr"] / scale[:, :, None, None])
    perfect = Decomposer(oracle)
    r = toy_radiograph(data, 5)
    m_ref = decomposer.geometry.magnification
    for m in (m_ref, 1.1 * m_ref):
        film = Radiograph(r.array, tuple(m / m_ref * s for s in r.pixel_spacing), {**r.source, "magnification": m})
        table = perfect.decompose(film, tta=2).table
        np.testing.assert_allclose([row["volume_cm3"] for row in table], item["volume_cm3"], rtol=1e-5)
        np.testing.assert_allclose([row["mass_g"] for row in table], item["mass_g"], rtol=1e-5)
    assert item["mass_g"].min() > 0


def test_magnification_is_matched(trained, decomposer):
    """A radiograph magnified 1.1x more on 1.1x larger pixels shows the same scale at the
    isocentre: the same model input, a 1.1x matched detector, the same table."""
    r = toy_radiograph(trained[0], 3)
    m_ref = decomposer.geometry.magnification
    base = decomposer.decompose(Radiograph(r.array, r.pixel_spacing, {**r.source, "magnification": m_ref}), tta=1)
    assert not any("magnification" in reason for reason in base.ood.reasons)
    unknown = decomposer.decompose(r, tta=1)  # taken at the model's reference, and noted
    assert any("magnification unknown" in reason for reason in unknown.ood.reasons)
    assert [row["mass_g"] for row in unknown.table] == pytest.approx([row["mass_g"] for row in base.table])
    big = Radiograph(r.array, tuple(1.1 * s for s in r.pixel_spacing), {**r.source, "magnification": 1.1 * m_ref})
    result = decomposer.decompose(big, tta=1)
    np.testing.assert_allclose(result.geometry.pixel_spacing, np.array(decomposer.geometry.pixel_spacing) * 1.1)
    np.testing.assert_allclose(result.xray, base.xray, atol=1e-6)
    # a spacing calibrated at the patient (magnification 1): the same scale again
    patient = Radiograph(r.array, tuple(s / m_ref for s in r.pixel_spacing), {**r.source, "magnification": 1.0})
    calibrated = decomposer.decompose(patient, tta=1)
    assert calibrated.geometry.parallel
    np.testing.assert_allclose(calibrated.xray, base.xray, atol=1e-6)
    for other in (result, calibrated):
        for row, ref in zip(other.table, base.table):
            assert row["volume_cm3"] == pytest.approx(ref["volume_cm3"], rel=1e-5)
            assert row["mass_g"] == pytest.approx(ref["mass_g"], rel=1e-5)
    # from a DICOM's DistanceSourceToPatient: the assumed hip height is stated
    field = {"magnification_field": "DistanceSourceToDetector (0018,1110) / (DistanceSourceToPatient (0018,1111) ...",
             "hip_above_table_mm": 110.0}
    table_side = decomposer.decompose(Radiograph(big.array, big.pixel_spacing, {**big.source, **field}), tta=1)
    assert [r for r in table_side.ood.reasons if "assumed 110 mm above the table" in r]
    assert not [r for r in result.ood.reasons if "above the table" in r]


def test_resampling_keeps_field_of_view():
    from MSKdeXTraining.imaging.geometry import Geometry

    geo = Geometry(rows=40, cols=40, pixel_spacing=(2.0, 2.0))
    rr, cc = np.mgrid[0:160, 0:160]
    disc = (((rr - 79.5) ** 2 + (cc - 79.5) ** 2) < 40 ** 2).astype(np.float32)  # r = 20 mm at 0.5 mm
    out, coverage = to_detector(disc, (0.5, 0.5), geo)
    assert coverage == 1.0
    # the disc keeps its area in mm2 (pi r^2) after a 4x reduction with anti-aliasing
    assert out.sum() * 4.0 == pytest.approx(np.pi * 20 ** 2, rel=0.02)
    small, coverage = to_detector(disc[40:120, 40:120], (0.5, 0.5), geo)  # 40 mm image, 80 mm detector
    assert coverage == pytest.approx(0.25, abs=0.03) and small[0, 0] == 0


def test_ood_flags(trained, decomposer):
    inside = decomposer.decompose(toy_radiograph(trained[0], 0), tta=1)  # a training case
    assert not inside.ood.flag, inside.ood.reasons
    rng = np.random.default_rng(0)
    # noise on the model's pixels (240 mm field): each check flags it on its own
    noise = Radiograph(rng.random((32, 32)).astype(np.float32), (7.5, 7.5), {"bits_stored": 32})
    flagged = decomposer.decompose(noise, tta=1)
    assert flagged.ood.flag and flagged.ood.score > 2 * inside.ood.score
    assert flagged.ood.features["intensity_z"] > OOD_Z
    assert any(r.startswith("intensity statistics") for r in flagged.ood.reasons)
    low = json.loads((trained[1] / "model.json").read_text())["ood"]["layout_r_min_median"][0] - 0.1
    assert flagged.ood.features["layout_r"] < low and inside.ood.features["layout_r"] >= low
    assert any(r.startswith("the film's layout is unlike the training films' (correlation") for r in flagged.ood.reasons)
    assert not any("better after this correction" in r for r in flagged.ood.reasons)  # no turn named
    # its features are far from the training films' too, but within the wide threshold of 6
    # films; with the threshold where the noise is 1.2 x its flag level, they flag it, not the film
    s_noise, s_inside = (r.ood.features["feature_score"] for r in (flagged, inside))
    assert s_noise > 3 * s_inside
    strict = copy.copy(decomposer.model)
    strict.meta = copy.deepcopy(strict.meta)
    strict.meta["ood"]["feature_p99"] *= s_noise / (1.2 * OOD_FEATURE)
    by_features = Decomposer(strict).decompose(noise, tta=1).ood
    assert any(r.startswith("image features unlike the training radiographs") for r in by_features.reasons)
    assert not Decomposer(strict).decompose(toy_radiograph(trained[0], 0), tta=1).ood.flag
    colour = toy_radiograph(trained[0], 0)
    colour.source["colour"] = True
    coloured = decomposer.decompose(colour, tta=1).ood
    assert coloured.flag and any(r.startswith("colour image") for r in coloured.reasons)
    raw = toy_radiograph(trained[0], 0)
    raw.source["presentation_intent"] = "FOR PROCESSING"  # a DICOM of raw detector data
    raw.source["direction"] = [1.0, 0.0, 0.0, -1.0]
    reasons = decomposer.decompose(raw, tta=1).ood.reasons
    assert any("FOR PROCESSING" in r for r in reasons) and any("upright" in r for r in reasons)
    for modality, flagged in (("CT", True), ("MR", True), ("DX", False), ("CR", False), ("OT", False)):
        film = toy_radiograph(trained[0], 0)
        film.source["modality"] = modality  # e.g. a CT slice exported as one DICOM image
        result = decomposer.decompose(film, tta=1).ood
        named = any(f"Modality (0008,0060) {modality}" in r for r in result.reasons)
        assert result.flag == flagged and named == flagged


def test_orientation_check_flags_a_turned_or_inverted_film(trained, decomposer, tmp_path):
    upright = toy_radiograph(trained[0], 0)
    assert not any("layout" in r for r in decomposer.decompose(upright, tta=1).ood.reasons)
    for change, said in ((np.rot90, "turned 90 degrees"), (lambda a: 1.0 - a, "inverted")):
        film = Radiograph(np.ascontiguousarray(change(upright.array)), upright.pixel_spacing,
                          {**upright.source, "presentation_lut_shape": "INVERSE"})
        ood = decomposer.decompose(film, tta=1).ood
        assert ood.flag and any("better after this correction" in r and said in r for r in ood.reasons), ood.reasons
        assert ood.features["layout_r_best_other"] > ood.features["layout_r"] + ORIENTATION_MARGIN
    assert any("PresentationLUTShape INVERSE" in r for r in ood.reasons)  # the polarity tags are quoted
    old = tmp_path / "old"  # a model trained before the check: not flagged, and the result says so
    shutil.copytree(trained[1], old, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((old / "model.json").read_text())
    del meta["ood"]["layout_mean"], meta["ood"]["layout_grid"]
    (old / "model.json").write_text(json.dumps(meta))
    reasons = Decomposer.from_run(old).decompose(film, tta=1).ood.reasons
    assert any("predates the orientation check" in r for r in reasons)
    assert not any("better after this correction" in r for r in reasons)


def test_write_saves_table_stacks_and_metadata(trained, decomposer, tmp_path):
    """What Decomposition.write writes: the CSV (values, ood column), one stack per DRR type
    (drr[0] WVDRR, [1] VDRR, [2] MDRR on the matched detector) and the JSON metadata. (Resuming
    a batch is tested in test_batch_resumes_only_identical_work_and_goes_past_bad_files.)"""
    result = decomposer.decompose(toy_radiograph(trained[0], 2), tta=2)
    result.ood.flag = True  # the flag as given is written: here set, to tell it from the default
    paths = result.write(tmp_path / "one")
    assert set(paths) == {"csv", "json", "wvdrr", "vdrr", "mdrr"}
    doc = json.loads(paths["json"].read_text())
    assert doc["format"] == "mskdex-decomposition" and doc["version"] == 3 and len(doc["objects"]) == 9
    assert doc["objects"] == json.loads(json.dumps(result.table))
    assert doc["ood"] == {"flag": True, "score": result.ood.score, "reasons": result.ood.reasons,
                          "features": result.ood.features}
    assert doc["geometry"] == {"rows": 32, "cols": 32, "pixel_spacing": [7.5, 7.5], "sdd": result.geometry.sdd,
                               "sod": result.geometry.sod, "parallel": False, "units": "mm"}
    assert doc["units"] == {"volume_cm3": "cm3", "mass_g": "g", "drr": {"wvdrr": "1", "vdrr": "cm", "mdrr": "g/cm2"}}
    assert doc["drr_stacks"] == {t: f"decomposition_{t}.nii.gz" for t in ("wvdrr", "vdrr", "mdrr")}
    assert doc["source"]["tta"] == 2 and len(doc["augmentations"]) == 2
    assert doc["environment"] == environment()
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["object"] for r in rows] == result.names
    assert [r["ood"] for r in rows] == ["1"] * 9
    for row, ref in zip(rows, result.table):
        for key in ("volume_cm3", "volume_sd_cm3", "mass_g", "mass_sd_g"):
            assert float(row[key]) == pytest.approx(ref[key], rel=1e-12)
        assert row["mass_low_g"] == row["volume_high_cm3"] == ""  # no calibration: no interval
    for t, dtype in enumerate(("wvdrr", "vdrr", "mdrr")):
        stack = sitk.ReadImage(str(paths[dtype]))
        assert paths[dtype].name == doc["drr_stacks"][dtype]
        assert stack.GetSize() == (32, 32, 9) and stack.GetSpacing()[:2] == pytest.approx((7.5, 7.5))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(stack), result.drr[t])
    assert not np.allclose(result.drr[0], result.drr[1])  # (the three stacks differ)
    result.ood.flag = False
    result.write(tmp_path / "two")
    with (tmp_path / "two" / "decomposition.csv").open() as fh:
        assert [r["ood"] for r in csv.DictReader(fh)] == ["0"] * 9


def test_batch_output_names_are_distinct():
    names = output_names([Path("a/hip.dcm"), Path("a/hip.png"), Path("a/1.2.840.1.dcm"),
                          Path("a/1.2.840.2.dcm"), Path("a/IM00001"), Path("a/ct.nii.gz")])
    assert names == ["hip_dcm", "hip_png", "1.2.840.1", "1.2.840.2", "IM00001", "ct"]
    with pytest.raises(FileExistsError, match=r"would share a folder name \(x_dcm\): \['a/x.dcm', 'b/x.dcm'\]; rename"):
        output_names([Path("a/x.dcm"), Path("b/x.dcm"), Path("b/y.dcm")])
    with pytest.raises(FileExistsError, match=r"\(c01_png\): \['a/c01.png', 'a/c01_png'\]; rename one of each"):
        output_names([Path("a/c01.png"), Path("a/c01_png"), Path("a/c01.dcm"), Path("a/c02.png")])


def test_batch_over_uid_named_and_suffixless_dicoms(shared_data, decomposer, tmp_path):
    """PACS exports: UID file names and no suffix. Each file gets its own result; a resume into
    a folder holding another input's result is refused."""
    source = sorted((shared_data / "pediatric-ap-radiographs").glob("*.dcm"))[:3]
    folder = tmp_path / "pacs"
    folder.mkdir()
    for name, src in zip(["1.2.840.113619.1.dcm", "1.2.840.113619.2.dcm", "IM00001"], source):
        shutil.copyfile(src, folder / name)
    (folder / "notes.txt").write_text("not a radiograph")
    files = decompose_cmd._inputs(folder)
    assert [f.name for f in files] == ["1.2.840.113619.1.dcm", "1.2.840.113619.2.dcm", "IM00001"]
    summaries = decompose_files(decomposer, files, tmp_path / "out", pixel_spacing=(1.0, 1.0), tta=1)
    assert [Path(s["output"]).name for s in summaries] == ["1.2.840.113619.1", "1.2.840.113619.2", "IM00001"]
    assert not any(s.get("skipped") for s in summaries)
    (folder / "IM00001").rename(folder / "1.2.840.113619.1")  # another file, same output folder
    [error] = errors(decompose_files(decomposer, [folder / "1.2.840.113619.1"], tmp_path / "out",
                                     pixel_spacing=(1.0, 1.0), tta=1))
    assert "holds a result of other input content" in error


def test_batch_resumes_only_identical_work_and_goes_past_bad_files(trained, decomposer, tmp_path, capsys):
    """A result is reused only for the same file content, options and model; a file that cannot
    be read is reported and the others are still decomposed; a DICOMDIR is not an input."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from MSKdeXTraining.cli import main
    from MSKdeXTraining.radiograph_formats import DICOMDIR_SOP_CLASS

    data, run = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        toy_film_file(data, i, folder / f"hip{i}.mha")
    (folder / "broken.dcm").write_bytes(b"not a DICOM file")
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = DICOMDIR_SOP_CLASS
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.save_as(folder / "DICOMDIR", enforce_file_format=True)
    files = decompose_cmd._inputs(folder)
    assert [f.name for f in files] == ["broken.dcm", "hip0.mha", "hip1.mha"]
    out = tmp_path / "out"
    first = decompose_files(decomposer, files, out, tta=2)
    assert "broken.dcm" in first[0]["error"] and all("ood" in s for s in first[1:]), first
    table = json.loads((out / "hip0" / "decomposition.json").read_text())
    weights = (run / "model.safetensors").read_bytes()
    assert table["model"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert all(s["skipped"] for s in decompose_files(decomposer, files[1:], out, tta=2))
    (out / "hip0" / "decomposition.json").unlink()  # interrupted before its last file: redone
    redone = decompose_files(decomposer, files[1:2], out, tta=2)
    assert "ood" in redone[0] and (out / "hip0" / "decomposition.json").is_file()
    refused = errors(decompose_files(decomposer, files[1:], out, tta=3))
    assert len(refused) == 2 and all("other input content, settings or model" in e for e in refused)
    (folder / "hip0.json").write_text("{}")  # a sidecar beside an .mha (not ours: ignored) is input too
    [error] = errors(decompose_files(decomposer, files[1:2], out, tta=2))
    assert "other input content, settings or model" in error and "sidecar_sha256" in error
    (folder / "hip0.json").unlink()
    assert decompose_files(decomposer, files[1:2], out, tta=2)[0]["skipped"]
    assert table["source"]["batch"]["model_json_sha256"] == hashlib.sha256((run / "model.json").read_bytes()).hexdigest()
    calibrated = Decomposer(decomposer.model, calibration={  # the run got a calibration.json since
        "sha256": "c" * 64, "level": 0.9, "held_out_ids": ["a"] * 9,
        "objects": {n: {"volume_log_q": 0.1, "mass_log_q": 0.2} for n in decomposer.names}})
    [error] = errors(decompose_files(calibrated, files[1:2], out, tta=2))
    assert "other input content, settings or model" in error and "differs in: calibration_sha256)" in error
    written = (out / "hip0" / "decomposition.json").read_text()
    older = json.loads(written)
    del older["source"]["batch"]["table_version"]  # as decomposition v1 wrote it
    (out / "hip0" / "decomposition.json").write_text(json.dumps(older))
    [error] = errors(decompose_files(decomposer, files[1:2], out, tta=2))
    assert "another MSKdeX version (decomposition format v1; this one writes v3)" in error
    del older["source"]["batch"]  # as the Python API or Slicer writes it
    (out / "hip0" / "decomposition.json").write_text(json.dumps(older))
    [error] = errors(decompose_files(decomposer, files[1:2], out, tta=2))
    assert "without the record of what a batch made it from (field source.batch" in error
    (out / "hip0" / "decomposition.json").write_text(written[:100])  # cut short by something else
    [error] = errors(decompose_files(decomposer, files[1:2], out, tta=2))
    assert "decomposition.json: cannot be read as a decomposition (" in error and "delete" in error
    (out / "hip0" / "decomposition.json").write_text(written)
    shutil.copyfile(files[2], files[1])  # hip0.mha now holds another radiograph
    summaries = decompose_files(decomposer, files[1:], out, tta=2)
    assert "hip0.mha" in summaries[0]["error"] and summaries[1]["skipped"]
    code = main(["decompose", "--model", str(run), "--xray", str(folder), "--out", str(tmp_path / "cli"),
                 "--tta", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.dcm" in err and "1 of 3 file(s) could not be used" in err
    assert (tmp_path / "cli" / "hip1" / "decomposition.json").is_file()
    with open(tmp_path / "cli" / "decompositions.csv", newline="") as f:  # the films that could be used
        assert {r["radiograph"] for r in csv.DictReader(f)} == {"hip0.mha", "hip1.mha"}
    (tmp_path / "only_broken").mkdir()  # a later batch into the same folder that decomposes nothing:
    shutil.copyfile(folder / "broken.dcm", tmp_path / "only_broken" / "broken.dcm")  # no stale table
    assert main(["decompose", "--model", str(run), "--xray", str(tmp_path / "only_broken"), "--out",
                 str(tmp_path / "cli"), "--tta", "1"]) == 2
    assert not (tmp_path / "cli" / "decompositions.csv").exists()
    assert "decompositions.csv removed: it listed an earlier run's results" in capsys.readouterr().err



def test_recursive_batch_mirrors_a_pacs_tree_and_skips_its_own_output(trained, tmp_path, capsys):
    """A PATIENT/STUDY/SERIES export with the same file name in two series: --recursive reads
    the sub-folders, mirrors the tree under --out (inside the input folder here) and, run
    again, skips everything without reading its own results as radiographs."""
    from MSKdeXTraining.cli import main

    data, run = trained
    tree = tmp_path / "export"
    films = [tree / "PAT1" / "ST1" / "SE1" / "hip.mha", tree / "PAT1" / "ST1" / "SE2" / "hip.mha",
             tree / "PAT2" / "ST1" / "SE1" / "hip.mha", tree / "PAT2" / "ST1" / "SE1" / "hip.nrrd"]
    for i, film in enumerate(films):  # the last two: one stem in one series
        film.parent.mkdir(parents=True, exist_ok=True)
        toy_film_file(data, i, film)
    out = tree / "results"
    with pytest.raises(FileNotFoundError, match="sub-folders: --recursive reads them too"):
        decompose_cmd._inputs(tree)
    series = films[0].parent  # without --recursive, results may go into the input folder itself
    assert decompose_cmd._inputs(series, False, series) == [films[0]]
    assert decompose_cmd._inputs(series, False, tmp_path) == [films[0]]
    with pytest.raises(InputError, match="is or holds the input folder"):
        decompose_cmd._inputs(tree, True, tmp_path)
    command = ["decompose", "--model", str(run), "--xray", str(tree), "--out", str(out), "--tta", "1", "--recursive"]
    assert main(command) == 0
    assert "4 radiograph(s)" in capsys.readouterr().out
    done = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("decomposition.json"))
    assert done == ["PAT1/ST1/SE1/hip", "PAT1/ST1/SE2/hip", "PAT2/ST1/SE1/hip_mha", "PAT2/ST1/SE1/hip_nrrd"]
    first = json.loads((out / "PAT1/ST1/SE2/hip/decomposition.json").read_text())
    assert first["source"]["path"] == str(films[1])
    # all four tables in one CSV: each film's rows, named by its path and its result folder
    with open(out / "decompositions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["radiograph", "result"] and len(rows) == 4 * len(first["objects"])
    for name in done:
        with open(out / name / "decomposition.csv", newline="") as f:
            own = list(csv.DictReader(f))
        mine = [{k: v for k, v in r.items() if k not in ("radiograph", "result")} for r in rows if r["result"] == name]
        assert mine == own, name
    assert {r["radiograph"] for r in rows if r["result"] == "PAT2/ST1/SE1/hip_nrrd"} == {"PAT2/ST1/SE1/hip.nrrd"}
    combined = (out / "decompositions.csv").read_bytes()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "4 radiograph(s) already decomposed" in printed and "could not be used" not in printed
    assert (out / "decompositions.csv").read_bytes() == combined  # the skipped films' tables, read back
    # into another folder in the tree: the first run's DRR stacks are results, not radiographs
    assert decompose_cmd._inputs(tree, True, tree / "again") == sorted(films)
    assert len(list(out.rglob("decomposition_*.nii.gz"))) == 12


def test_a_batch_resumes_over_films_named_like_other_outputs(trained, tmp_path, capsys):
    """Result folders take their films' names: `cases`, `fold_1` or `checkpoints` (marks of a
    dataset, an evaluation, a run) are this batch's own results, so a re-run resumes, also where
    they lie deeper (a subfolder of films named `fold_2`); a folder of that name holding no result
    is still refused."""
    from MSKdeXTraining.cli import main

    data, run = trained
    films = tmp_path / "films"
    films.mkdir()
    for i, name in enumerate(("cases", "fold_1", "checkpoints")):
        toy_film_file(data, i, films / f"{name}.mha")
    (films / "fold_2").mkdir()  # a subfolder so named: its results one level further down
    toy_film_file(data, 3, films / "fold_2" / "hip.mha")
    out = tmp_path / "out"
    command = ["decompose", "--model", str(run), "--xray", str(films), "--out", str(out), "--tta", "1", "--recursive"]
    assert main(command) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cases", "checkpoints", "decompositions.csv", "fold_1", "fold_2"]
    assert (out / "fold_2" / "hip" / "decomposition.json").is_file()
    assert main(command) == 0
    assert "4 radiograph(s) already decomposed" in capsys.readouterr().out
    (out / "cases" / "decomposition.json").unlink()  # interrupted before its last file: redone
    assert main(command) == 0 and (out / "cases" / "decomposition.json").is_file()
    shutil.rmtree(out / "cases")
    (out / "cases").mkdir()  # a folder named cases holding none of a result's files: a dataset's, as far as
    assert main(command) == 2  # anyone can tell
    assert "holds cases, so it is the output of mskdex prepare" in capsys.readouterr().err


def test_real_pediatric_dicoms_are_flagged(shared_data, decomposer, trained, tmp_path, capsys):
    folder = shared_data / "pediatric-ap-radiographs"
    files = sorted(folder.glob("*.dcm"))[:2]
    out = tmp_path / "ped"
    summaries = decompose_files(decomposer, files, out, pixel_spacing=(1.0, 1.0), tta=2)
    assert all(s["ood"] for s in summaries)
    assert all(any("8-bit" in r for r in s["reasons"]) for s in summaries)
    again = decompose_files(decomposer, files, out, pixel_spacing=(1.0, 1.0), tta=2)
    assert all(s["skipped"] for s in again)
    # the CLI over a folder, without a spacing: the placeholder is refused, naming the field
    parser = argparse.ArgumentParser()
    decompose_cmd.add_arguments(parser)
    args = parser.parse_args(["--model", str(trained[1]), "--xray", str(files[0]),
                              "--out", str(tmp_path / "cli"), "--tta", "1"])
    from MSKdeXTraining.imaging.volume import InputError
    with pytest.raises(InputError, match="PixelSpacing"):
        decompose_cmd.run(args)
    args.pixel_spacing = [1.0]
    assert decompose_cmd.run(args) == 0
    assert (tmp_path / "cli" / "decomposition.csv").is_file()


def test_cli_rerun_rewrites_nothing_and_keeps_another_patients_result(trained, tmp_path, capsys):
    data, run = trained
    files = [toy_film_file(data, i, tmp_path / f"hip{i}.mha") for i in (0, 1)]
    parser = argparse.ArgumentParser()
    decompose_cmd.add_arguments(parser)
    args = parser.parse_args(["--model", str(run), "--xray", str(files[0]), "--out", str(tmp_path / "cli"),
                              "--tta", "2"])
    assert decompose_cmd.run(args) == 0
    printed = capsys.readouterr().out  # what the interval and the SD mean
    assert "not an error bar" in printed and "interval: none (the model has no calibration.json" in printed
    written = sorted((tmp_path / "cli").iterdir())
    assert [f.name for f in written] == ["decomposition.csv", "decomposition.json", "decomposition_mdrr.nii.gz",
                                         "decomposition_vdrr.nii.gz", "decomposition_wvdrr.nii.gz"]
    stamp = lambda f: (f.stat().st_ino, f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    state = {f: stamp(f) for f in written}  # an atomic rewrite would give a new inode and time
    assert decompose_cmd.run(args) == 0  # the same again: nothing to do, nothing rewritten
    assert capsys.readouterr().out == (f"{tmp_path / 'cli'} already holds this decomposition of {files[0]} "
                                       "(same content, options and model); nothing to do\n")
    assert sorted((tmp_path / "cli").iterdir()) == written
    assert {f: stamp(f) for f in written} == state
    args.xray = files[1]  # another patient into the same folder: refused, the first result kept
    before = (tmp_path / "cli" / "decomposition.json").read_bytes()
    with pytest.raises(FileExistsError, match="decomposition.json: holds a result of other input"):
        decompose_cmd.run(args)
    assert (tmp_path / "cli" / "decomposition.json").read_bytes() == before


def test_partial_field_of_view_is_flagged(trained, decomposer):
    """A radiograph covering a quarter of the model's field of view."""
    r = toy_radiograph(trained[0], 0)
    part = Radiograph(r.array[8:24, 8:24].copy(), r.pixel_spacing, dict(r.source))
    result = decomposer.decompose(part, tta=1)
    assert result.source["resampling"]["coverage"] < 0.8
    assert result.ood.flag and any("field of view" in x for x in result.ood.reasons)


def test_uniform_image_is_flagged(trained, decomposer):
    """A flat image is flagged as nearly uniform."""
    r = toy_radiograph(trained[0], 0)
    flat = Radiograph(np.full(r.shape, 0.5, np.float32), r.pixel_spacing, dict(r.source))
    result = decomposer.decompose(flat, tta=1)
    assert result.ood.flag and any("nearly uniform" in x for x in result.ood.reasons)


def test_intensity_z_score_has_its_own_reason(trained, decomposer):
    """A much brighter image: its intensity z-score is named as a reason."""
    r = toy_radiograph(trained[0], 0)
    bright = Radiograph(np.clip(r.array + 0.5, 0, 1).astype(np.float32), r.pixel_spacing, dict(r.source))
    result = decomposer.decompose(bright, tta=1)
    assert result.ood.features["intensity_z"] > OOD_Z
    assert any(x.startswith("intensity statistics") for x in result.ood.reasons)


def test_uncertainty_is_the_sample_sd_over_the_augmentations(trained, decomposer):
    """Tta = 2: the SD of two values a, b is |a - b| / sqrt(2)."""
    r = toy_radiograph(trained[0], 4)
    result = decomposer.decompose(r, tta=2, seed=5)
    x, det, _ = decomposer.model_input(r)
    pred = decomposer.predict(np.stack([a.apply(x) for a in sample_augmentations(2, 5)]))
    sums = per_pixel_area(pred, decomposer.geometry.pixel_area_cm2, det.pixel_area_cm2) \
        .astype(np.float64).sum(axis=(-1, -2)) * det.pixel_area_cm2
    for t, key in ((1, "volume_sd_cm3"), (2, "mass_sd_g")):
        np.testing.assert_allclose([row[key] for row in result.table],
                                   np.abs(sums[0, t] - sums[1, t]) / np.sqrt(2), rtol=1e-5, atol=1e-9)


def test_batch_resume_refuses_another_model_or_magnification(trained, decomposer, tmp_path):
    """A folder holding the result of another model, or of another --magnification, is never
    reused."""
    data, _ = trained
    xray = toy_film_file(data, 0, tmp_path / "hip.mha")
    out = tmp_path / "out"
    decompose_files(decomposer, [xray], out, tta=1)
    [error] = errors(decompose_files(decomposer, [xray], out, tta=1, magnification=1.3))
    assert "other input content, settings or model" in error and "(differs in: magnification)" in error
    retrained = copy.copy(decomposer.model)
    retrained.origin = {**decomposer.model.origin, "weights_sha256": "0" * 64}
    [error] = errors(decompose_files(Decomposer(retrained), [xray], out, tta=1))
    assert "other input content, settings or model" in error and "(differs in: model_sha256)" in error


def test_a_write_cut_short_leaves_no_table_and_is_redone(trained, decomposer, tmp_path, monkeypatch):
    """decomposition.json is written last: a run killed while writing the DRR stacks leaves
    none, so the next run redoes the folder instead of taking the leftovers as done."""
    from MSKdeXTraining import inference
    from MSKdeXTraining.batch import decompose_file

    xray = toy_film_file(trained[0], 0, tmp_path / "hip.mha")
    written, real_write = [], sitk.WriteImage

    def write_then_die(im, path, *args):
        if written:
            raise KeyboardInterrupt  # killed while writing the second stack
        written.append(path)
        real_write(im, path, *args)

    monkeypatch.setattr(inference.sitk, "WriteImage", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        decompose_file(decomposer, xray, tmp_path / "out", tta=1)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["decomposition.csv", "decomposition_wvdrr.nii.gz"]
    summary, result = decompose_file(decomposer, xray, tmp_path / "out", tta=1)
    assert result is not None and "skipped" not in summary
    assert (tmp_path / "out" / "decomposition.json").is_file()
    assert decompose_file(decomposer, xray, tmp_path / "out", tta=1)[0]["skipped"]


def test_tta_is_seeded(trained, decomposer):
    """Same seed, same uncertainty; another seed, another one (only the
    slicer-core batch test pinned this before)."""
    r = toy_radiograph(trained[0], 1)
    a, b = (decomposer.decompose(r, tta=3, seed=4) for _ in range(2))
    c = decomposer.decompose(r, tta=3, seed=5)
    assert [x["mass_sd_g"] for x in a.table] == [x["mass_sd_g"] for x in b.table]
    assert [x["mass_sd_g"] for x in a.table] != [x["mass_sd_g"] for x in c.table]
    assert [x.shift for x in a.augmentations] == [x.shift for x in sample_augmentations(3, 4)]
    from MSKdeXTraining.inference import MAX_TTA

    for tta in (0, MAX_TTA + 1):  # none, or more than memory should hold: refused before any work
        with pytest.raises(InputError, match=rf"tta must be in 1\.\.{MAX_TTA} \(1 = no augmentation\), got {tta}"):
            decomposer.decompose(r, tta=tta)


def test_raw_radiograph_window_ignores_a_few_saturated_pixels():
    """Burned-in markers at the detector maximum (0.3 % of the pixels) must not
    compress the anatomy's grey range: the window is set on percentiles."""
    from MSKdeXTraining.radiograph_io import unit_range

    a = np.tile(np.linspace(0.0, 1000.0, 200), (200, 1))
    a[:6, :20] = 4095.0
    x, method = unit_range(a.astype(np.float32), (0, 4095))
    assert np.percentile(x, 99) > 0.95 and np.percentile(x, 1) < 0.05, method
    lo, hi = np.percentile(a, (1, 99.5))  # the documented window, 1st to 99.5th percentile
    np.testing.assert_allclose(x, np.clip((a - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert method == f"window [{lo:g}, {hi:g}] (percentiles 1, 99.5) -> [0, 1]"


def test_eight_bit_export_is_flagged_without_shared_data(trained, decomposer):
    """An 8-bit export is flagged out-of-distribution (checked without the shared data)."""
    r = toy_radiograph(trained[0], 0)
    r.source["bits_stored"] = 8
    result = decomposer.decompose(r, tta=1)
    assert result.ood.flag and any(x.startswith("8-bit image") for x in result.ood.reasons)


def test_batch_records_any_failure_of_one_file_and_goes_on(trained, decomposer, tmp_path, monkeypatch):
    """A DICOM with an empty RescaleSlope (once a TypeError) and a file whose reading fails
    unexpectedly (a bug: its traceback is kept) are each that file's error; the others are
    decomposed."""
    from test_radiograph_io import write_dicom

    from MSKdeXTraining import batch

    folder = tmp_path / "in"
    folder.mkdir()
    films = [toy_film_file(trained[0], i, folder / f"hip{i}.mha") for i in (0, 1)]
    ramp = (np.arange(200 * 160).reshape(200, 160) % 4096).astype(np.uint16)
    empty = write_dicom(folder / "empty.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5], RescaleSlope="",
                        RescaleIntercept=0)
    read = batch.read_radiograph

    def fails_on_hip1(path, *args, **kwargs):
        if path.name == "hip1.mha":
            raise RuntimeError("disk went away")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(batch, "read_radiograph", fails_on_hip1)
    summaries = decompose_files(decomposer, [empty, *films], tmp_path / "out", tta=1)
    assert summaries[0]["error"] == f"{empty}: RescaleSlope (0028,1053) is empty; expected one number"
    assert "ood" in summaries[1] and (tmp_path / "out" / "hip0" / "decomposition.json").is_file()
    assert summaries[2]["error"] == f"{films[1]}: RuntimeError: disk went away"
    assert "traceback" not in summaries[0] and "in fails_on_hip1" in summaries[2]["traceback"]

    def disk_full(path, *args, **kwargs):  # fails every file alike: the batch stops, as the CLI reports
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "full"))

    monkeypatch.setattr(batch, "read_radiograph", disk_full)
    with pytest.raises(OSError, match="No space left"):
        decompose_files(decomposer, films, tmp_path / "out2", tta=1)


def test_reading_notes_and_padding_reach_the_result(trained, decomposer):
    """What reading changed (source ``notes``) is a note of the result; DICOM pixel padding
    (``padding_range``) is left out of the model input's window."""
    r = toy_radiograph(trained[0], 0)
    raw = r.array * 3000.0 + 500.0
    raw[:4] = 0.0  # a padded border
    film = Radiograph(raw.astype(np.float32), r.pixel_spacing,
                      {**r.source, "value_range": [0.0, 4095.0], "notes": ["turned upright"],
                       "padding_range": [0.0, 0.0]})
    result = decomposer.decompose(film, tta=1)
    assert "note: turned upright" in result.ood.reasons
    assert "128 padding pixel(s) left out" in result.source["resampling"]["intensity"]
    unpadded = Radiograph(film.array, film.pixel_spacing, {**film.source, "padding_range": None})
    assert not np.allclose(decomposer.model_input(unpadded)[0], result.xray)


def test_a_refused_output_folder_is_one_files_error_and_the_batch_goes_on(trained, decomposer, tmp_path, capsys):
    """An output folder holding another result (other options here) is that file's error,
    reported with the others (exit code 2 at the end); the files after it are decomposed."""
    from MSKdeXTraining.cli import main

    data, run = trained
    folder = tmp_path / "in"
    folder.mkdir()
    films = [toy_film_file(data, i, folder / f"hip{i}.mha") for i in (0, 1)]
    out = tmp_path / "out"
    decompose_files(decomposer, films[:1], out, tta=1)
    summaries = decompose_files(decomposer, films, out, tta=2)
    assert "hip0" in summaries[0]["error"] and "differs in: tta" in summaries[0]["error"]
    assert "ood" in summaries[1] and (out / "hip1" / "decomposition.json").is_file()
    (out / "hip1" / "decomposition.json").unlink()
    code = main(["decompose", "--model", str(run), "--xray", str(folder), "--out", str(out), "--tta", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "hip0" in err and "1 of 2 file(s) could not be used" in err
    assert (out / "hip1" / "decomposition.json").is_file()


def test_a_json_beside_a_dicom_is_not_its_sidecar(trained, decomposer, tmp_path):
    """Only NIfTI/NRRD/MHA files read a ``<stem>.json`` sidecar: a user's hip.json beside hip.dcm,
    changed since, does not block the re-run of hip.dcm."""
    from test_radiograph_io import write_dicom

    ramp = (np.arange(200 * 160).reshape(200, 160) % 4096).astype(np.uint16)
    film = write_dicom(tmp_path / "hip.dcm", ramp, bits=12, ImagerPixelSpacing=[0.5, 0.5])
    (tmp_path / "hip.json").write_text('{"patient": "notes"}')
    decompose_files(decomposer, [film], tmp_path / "out", tta=1)
    (tmp_path / "hip.json").write_text('{"patient": "other notes"}')
    [summary] = decompose_files(decomposer, [film], tmp_path / "out", tta=1)
    assert summary.get("skipped"), summary


def test_non_finite_predictions_are_an_error_naming_the_objects(trained, decomposer):
    """A model predicting NaN (here for one object, in one augmentation) gives no table of empty
    values: an error naming the radiograph, the model and the object."""
    broken = copy.copy(decomposer.model)
    real = decomposer.model.predict

    def predict(x):
        y = real(x).clone()
        y[-1, :, 1] = float("nan")
        return y

    broken.predict = predict
    r = toy_radiograph(trained[0], 0)
    r.source["path"] = "hip.mha"
    with pytest.raises(InputError, match=rf"hip.mha: the model .* predicts NaN or infinite DRRs for "
                                         rf"{decomposer.names[1]}; no result"):
        Decomposer(broken).decompose(r, tta=2)  # the un-augmented prediction is finite: checked all


def test_notes_name_an_object_missing_one_interval_and_why(decomposer):
    """A calibration of 9 held-out patients (enough for 90 %) where one object lacks only its
    mass interval (a held-out prediction or truth <= 0): the note names that object and that
    reason, not too few patients; objects with both intervals are not named."""
    names = decomposer.names
    calibration = {"sha256": "c" * 64, "level": 0.9, "held_out_ids": [str(i) for i in range(9)],
                   "held_out_patients": 9,
                   "objects": {n: {"volume_log_q": 0.1, "mass_log_q": None if n == names[0] else 0.2} for n in names}}
    notes = Decomposer(decomposer.model, calibration=calibration).notes({"magnification": 1.2}, {}, True)
    assert notes == [f"note: no 90 % interval for {names[0]}: held-out cases with a prediction or truth <= 0"]


def test_notes_for_a_given_spacing_and_the_dicom_distances_only_where_they_apply(decomposer, tmp_path):
    """A pixel spacing given by the user is noted; the hips assumed above the table are noted
    where the magnification came from the DICOM distances, not where a magnification factor in
    the file or a magnification given replaced them."""
    from test_radiograph_io import write_dicom

    from MSKdeXTraining.radiograph_io import read_radiograph

    film = (np.arange(200 * 160).reshape(200, 160) % 4096).astype(np.uint16)
    distances = {"ImagerPixelSpacing": [0.5, 0.5], "DistanceSourceToDetector": 1150.0, "DistanceSourceToPatient": 920.0}
    f = write_dicom(tmp_path / "d.dcm", film, **distances)
    g = write_dicom(tmp_path / "f.dcm", film, EstimatedRadiographicMagnificationFactor=1.2, **distances)

    def notes(radiograph) -> str:
        return " | ".join(decomposer.notes(radiograph.source, {}, True))

    assert "hip joint centres assumed 110 mm above the table" in notes(read_radiograph(f))
    for radiograph in (read_radiograph(g), read_radiograph(f, magnification=1.25)):
        assert "hip_above_table_mm" in radiograph.source
        assert "hip joint centres assumed 110 mm above the table" not in notes(radiograph)
    assert "pixel spacing given by the user, not read from the file" in notes(read_radiograph(f, pixel_spacing=0.5))
    assert "pixel spacing given" not in notes(read_radiograph(f))


def test_a_film_much_larger_than_the_models_field_of_view_is_noted(trained, decomposer):
    """Its pixel spacing may be too large: noted from LARGE_EXTENT times the model's field of view."""
    from MSKdeXTraining.inference import LARGE_EXTENT

    film = toy_radiograph(trained[0], 5)

    def notes(scale: float) -> str:
        r = Radiograph(film.array, tuple(scale * s for s in film.pixel_spacing), film.source)
        return " | ".join(decomposer.decompose(r, tta=1).ood.reasons)

    assert "spans" not in notes(1.0) and "spans" not in notes(0.98 * LARGE_EXTENT)
    assert "note: the film spans 1.6x the model's field of view; for a film framed like the training ones, " \
           "check that its pixel spacing is not too large" in notes(1.6)


def test_ood_verdict_coverage_threshold_and_score():
    """ood_verdict on its own: a film covering 70 % of the model's field of view (below 80 %) is
    flagged, one covering 85 % is not; the score is the larger of the feature and intensity
    scores, each over its threshold."""
    from MSKdeXTraining.ood import ood_verdict

    x = np.random.default_rng(0).random((32, 32))
    bright = {"feature_score": np.array([0.3]), "intensity_z": np.array([2 * OOD_Z])}
    verdict = ood_verdict(x, bright, {}, 0.7, None)
    assert verdict.flag and verdict.score == pytest.approx(2.0)
    assert verdict.reasons == ["the radiograph covers 70 % of the model's field of view (< 80 %): a smaller film or "
                               "crop than the training radiographs, or a pixel spacing given too small (never enlarge "
                               "a right one)", f"intensity statistics {2 * OOD_Z:.1f} SD from the training radiographs"]
    usual = {"feature_score": np.array([0.6 * OOD_FEATURE]), "intensity_z": np.array([0.5 * OOD_Z])}
    verdict = ood_verdict(x, usual, {}, 0.85, None)
    assert not verdict.flag and verdict.reasons == [] and verdict.score == pytest.approx(0.6)


def test_batch_resume_with_another_seed_is_refused(trained, decomposer, tmp_path):
    """--seed draws other augmentations (another TTA SD): a folder done with another seed is
    that file's error, not reused; the same seed is skipped."""
    film = toy_film_file(trained[0], 0, tmp_path / "hip.mha")
    assert "ood" in decompose_files(decomposer, [film], tmp_path / "out", tta=2, seed=0)[0]
    [error] = errors(decompose_files(decomposer, [film], tmp_path / "out", tta=2, seed=1))
    assert "other input content, settings or model" in error and "differs in: seed)" in error
    assert decompose_files(decomposer, [film], tmp_path / "out", tta=2, seed=0)[0]["skipped"]


def test_table_csv_writes_missing_and_nan_values_empty(tmp_path):
    """write_table_csv writes None and NaN as empty cells, numbers as they are, and the OOD flag as 0/1."""
    row = {c: 1.5 for c in TABLE_COLUMNS} | {"object": "pelvis", "kind": "bone", "volume_low_cm3": None,
                                            "mass_sd_g": float("nan")}
    with write_table_csv([row], tmp_path / "t.csv", ood=True).open() as fh:
        (written,) = list(csv.DictReader(fh))
    assert written["volume_low_cm3"] == written["mass_sd_g"] == "" and written["mass_g"] == "1.5"
    assert written["object"] == "pelvis" and written["ood"] == "1"
    with write_table_csv([row], tmp_path / "u.csv", ood=False).open() as fh:
        assert next(csv.DictReader(fh))["ood"] == "0"


def test_a_spacing_for_the_films_without_one_of_a_mixed_folder(trained, tmp_path, capsys):
    """--pixel-spacing-if-missing: a picture takes it, a film with a spacing of its own keeps
    that; a re-run must repeat it for the results that used it only (a film done before it was
    given is skipped); it excludes --pixel-spacing."""
    from PIL import Image

    from MSKdeXTraining.cli import main

    data, run = trained
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(toy_film_file(data, 0, folder / "own.mha"))))  # 2 mm
    Image.fromarray(np.round(255 * x / x.max()).astype(np.uint8)).save(folder / "picture.png")
    argv = ["decompose", "--model", str(run), "--xray", str(folder), "--out", str(out), "--tta", "1"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "picture.png: no usable pixel spacing" in captured.err
    assert "; --pixel-spacing-if-missing gives a spacing to the files without one only" in captured.err
    assert "decompositions.csv (not those of the files that could not be used)" in captured.out
    assert main(argv + ["--pixel-spacing-if-missing", "1.8"]) == 0
    assert "1 radiograph(s) already" in capsys.readouterr().out  # own.mha, from the first run
    source = {n: json.loads((out / n / "decomposition.json").read_text())["source"] for n in ("own", "picture")}
    assert source["own"]["resampling"]["input_pixel_spacing_mm"] == [2.0, 2.0]
    assert source["own"]["spacing_field"] == "image spacing"
    assert source["picture"]["resampling"]["input_pixel_spacing_mm"] == [1.8, 1.8]
    assert source["picture"]["spacing_field"] == "argument (missing_spacing)"
    assert source["picture"]["batch"]["pixel_spacing_if_missing"] == [1.8, 1.8]
    assert main(argv + ["--pixel-spacing-if-missing", "1.8"]) == 0 and "2 radiograph(s) already" in capsys.readouterr().out
    for other in (["--pixel-spacing-if-missing", "1.9"], []):  # the picture's result is refused, own.mha's kept
        assert main(argv + other) == 2
        captured = capsys.readouterr()
        assert "1 radiograph(s) already" in captured.out
        assert "picture.png with these options (differs in: pixel_spacing_if_missing)" in captured.err
        assert f"or delete {out / 'picture' / 'decomposition.json'} to redo it" in captured.err
    with pytest.raises(SystemExit):
        main(argv + ["--pixel-spacing", "2", "--pixel-spacing-if-missing", "1.8"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_decomposition_tables_are_utf8_whatever_the_locale(tmp_path):
    """The tables are UTF-8 (docs/formats.md) also where the locale's encoding is not (Windows'
    cp1252, an ASCII C locale): a folder of films named in Japanese is written, not a crash after
    the whole batch has run."""
    import subprocess
    import sys

    name = "患者01/股関節.dcm"
    script = ("import sys; from MSKdeXTraining.decomposition_table import write_tables_csv; "
              "from MSKdeXTraining.decomposition_table import TABLE_COLUMNS as C; "
              "row = dict.fromkeys(C, 1.0) | dict(object='gluteus_medius', kind='muscle'); "
              f"write_tables_csv([({{'radiograph': {ascii(name)}}}, [row], False)], sys.argv[1])")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONUTF8", None)
    path = tmp_path / "decompositions.csv"
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", script, str(path)], env=env,
                         capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    assert path.read_bytes().splitlines()[1].startswith(f"{name},gluteus_medius,".encode())
