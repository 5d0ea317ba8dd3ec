"""Batch mode (MSKdeX/Scripts/mskdex_batch.py) under plain Python with the slicer-core wheel."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "MSKdeX" / "Scripts" / "mskdex_batch.py"

pytestmark = pytest.mark.slicer


def load_script():
    spec = importlib.util.spec_from_file_location("mskdex_batch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_and_xray(tmp_path_factory):
    """A tiny trained run folder and one of its toy radiographs as an .mha file (spacing in the file)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_slicer_bridge import train_tiny_model

    from MSKdeXTraining.modelio import read_safetensors
    from MSKdeXTraining.training.data import read_manifest

    root = tmp_path_factory.mktemp("batch")
    run = train_tiny_model(root)
    manifest = read_manifest(root / "toy")
    case = manifest["cases"][0]
    xray = read_safetensors(root / "toy" / case["file"])["xray"].numpy()
    # the toy detector has 7.5 mm pixels; a radiograph file has detector-like pixels: same field
    # of view at 1.5 mm (the decomposer resamples it onto the model's detector)
    factor = 5
    image = sitk.GetImageFromArray(ndimage.zoom(xray.astype(np.float32), factor, order=1, grid_mode=True,
                                                  mode="nearest"))
    row, col = manifest["geometry"]["pixel_spacing"]
    image.SetSpacing((col / factor, row / factor))
    path = root / "xray.mha"
    sitk.WriteImage(image, str(path))
    return run, path


def test_batch_writes_the_table_and_scene(model_and_xray, tmp_path):
    """The CSV equals the backend's decomposition of the same file (values and its OOD flag);
    the saved scene loads back with the radiograph, the results table (same rows, OOD
    attribute), the chart and one layer per object and DRR type holding the backend's DRR."""
    run, xray = model_and_xray
    out = tmp_path / "table.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(run), "--xray", str(xray), "--out", str(out),
                           "--tta", "2", "--scene", str(tmp_path / "scene"), "--json", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"\r\n" not in out.read_bytes()  # the same CSV as `mskdex decompose` writes
    rows = list(csv.DictReader(out.open()))
    from MSKdeXTraining.drr_types import DRR_SHORT_UNITS, DRR_TYPES
    from MSKdeXTraining.inference import Decomposer
    from MSKdeXTraining.radiograph_io import read_radiograph

    result = Decomposer.from_run(run).decompose(read_radiograph(xray), tta=2)
    expected, names = result.table, result.names
    assert [r["object"] for r in rows] == names
    assert list(rows[0]) == ["object", "kind", "volume_cm3", "volume_low_cm3", "volume_high_cm3", "volume_sd_cm3",
                             "mass_g", "mass_low_g", "mass_high_g", "mass_sd_g", "ood"]
    assert [r["ood"] for r in rows] == [str(int(result.ood.flag))] * len(names)
    for r, e in zip(rows, expected):
        assert float(r["volume_cm3"]) == pytest.approx(e["volume_cm3"], rel=1e-9, abs=1e-12)
        assert float(r["mass_g"]) == pytest.approx(e["mass_g"], rel=1e-9, abs=1e-12)
        assert float(r["mass_sd_g"]) == pytest.approx(e["mass_sd_g"], rel=1e-9, abs=1e-12)
    assert "mskdex_batch: note: no calibrated interval" in proc.stderr  # notes are printed, flagged or not
    assert ("mskdex_batch: warning: out of distribution" in proc.stderr) == result.ood.flag
    assert "wrote" in proc.stdout and proc.stdout.count("100%") == 1 and "100% done" in proc.stdout
    # the full record, as `mskdex decompose` writes it: the reasons and notes printed above, kept
    record = json.loads((tmp_path / "record.json").read_text())
    assert (record["format"], record["version"]) == ("mskdex-decomposition", 3) and record["drr_stacks"] == {}
    assert [o["object"] for o in record["objects"]] == names
    assert record["objects"][0]["mass_g"] == pytest.approx(expected[0]["mass_g"], rel=1e-9)
    assert record["ood"]["flag"] == result.ood.flag and record["ood"]["reasons"] == result.ood.reasons
    assert any("no calibrated interval" in r for r in record["ood"]["reasons"])
    assert record["source"]["sha256"] == result.source["sha256"] and record["model"]["weights_sha256"]

    sys.path.insert(0, str(ROOT / "MSKdeX"))
    from MSKdeXLib.layer_names import OBJECT_ATTRIBUTE, TYPE_ATTRIBUTE, UNIT_ATTRIBUTE
    from MSKdeXLib.results_table import table_rows
    from MSKdeXLib.scene_io import load_scene
    from MSKdeXLib.volume_nodes import volume_from_node

    scene = load_scene(tmp_path / "scene" / "mskdex.mrml")
    table = scene.GetFirstNodeByName("MSKdeX results")
    assert table.GetAttribute("MSKdeX.OOD") == str(int(result.ood.flag))
    saved = table_rows(table)
    assert [r["object"] for r in saved] == names and [r["kind"] for r in saved] == result.kinds
    for s, r in zip(saved, rows):
        for key in ("volume_cm3", "volume_sd_cm3", "mass_g", "mass_sd_g"):  # the .tsv keeps 6 digits
            assert s[key] == pytest.approx(float(r[key]), rel=1e-5, abs=1e-9)
        assert np.isnan(s["mass_low_g"]) and r["mass_low_g"] == ""  # no calibration: no interval
    assert scene.GetFirstNodeByName("MSKdeX results chart").GetNthPlotSeriesNode(0).GetTableNodeID() == table.GetID()
    assert volume_from_node(scene.GetFirstNodeByName("xray")).array.shape == (1, *read_radiograph(xray).shape)
    layers = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    layers.UnRegister(None)
    assert layers.GetNumberOfItems() == 1 + 3 * len(names)  # the radiograph and the layers
    for t, drr_type in enumerate(DRR_TYPES):
        for i, name in enumerate(names):
            node = scene.GetFirstNodeByName(f"MSKdeX {name} {drr_type.upper()}")
            assert node.GetAttribute(OBJECT_ATTRIBUTE) == name and node.GetAttribute(TYPE_ATTRIBUTE) == drr_type
            assert node.GetAttribute(UNIT_ATTRIBUTE) == DRR_SHORT_UNITS[drr_type]
            np.testing.assert_allclose(volume_from_node(node).array[0], result.drr[t, i], rtol=1e-5, atol=1e-9)
    area = result.geometry.pixel_area_cm2
    mdrr = volume_from_node(scene.GetFirstNodeByName(f"MSKdeX {names[0]} MDRR")).array
    assert mdrr.sum(dtype=np.float64) * area == pytest.approx(saved[0]["mass_g"], rel=1e-5)


@pytest.mark.parametrize("case, message", [
    ("missing_xray", "file not found"),
    ("png_without_spacing", "pixel spacing"),
    ("overwrite_input", "would overwrite the input"),
    ("no_model", "is not a model run folder; run `mskdex train`"),
    ("bad_tta", "--tta must be in 1..32"),
    ("out_is_a_folder", "folder: exists; choose another"),
    ("out_exists", "t.csv: exists; choose another file name"),  # results are never replaced
    ("scene_not_empty", "scene: folder not empty; choose a new or empty folder"),
    ("scene_is_a_file", "scene: is a file; expected a new or empty folder"),
    ("scene_under_a_file", "x.png: is a file, so the scene folder"),
    ("scene_is_out", "the same path as --out"),
    ("json_is_out", "--json"),
    ("scene_is_json", "the same path as --out or --json"),
    ("json_exists", "t.json: exists; choose another file name"),
])
def test_batch_bad_input_exits_2_with_a_clear_message(case, message, model_and_xray, tmp_path, capsys):
    """Bad inputs and output targets are refused before any work, naming the path; nothing is written."""
    run, xray = model_and_xray
    png = tmp_path / "x.png"
    (tmp_path / "folder").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)), str(png))
    if case == "out_exists":
        (tmp_path / "t.csv").write_text("earlier results\n")
    elif case == "scene_not_empty":
        (tmp_path / "scene").mkdir()
        (tmp_path / "scene" / "notes.txt").write_text("mine\n")
    elif case == "scene_is_a_file":
        (tmp_path / "scene").write_text("mine\n")
    elif case == "json_exists":
        (tmp_path / "t.json").write_text("{}")
    ok = ["--model", str(run), "--xray", str(xray), "--out", str(tmp_path / "t.csv")]
    argv = {"missing_xray": ["--model", str(run), "--xray", str(tmp_path / "nope.dcm"), "--out", str(tmp_path / "t.csv")],
            "png_without_spacing": ["--model", str(run), "--xray", str(png), "--out", str(tmp_path / "t.csv")],
            "overwrite_input": ["--model", str(run), "--xray", str(xray), "--out", str(xray)],
            "no_model": ["--model", str(tmp_path), "--xray", str(xray), "--out", str(tmp_path / "t.csv")],
            "bad_tta": ok + ["--tta", "33"],
            "out_is_a_folder": ["--model", str(run), "--xray", str(xray), "--out", str(tmp_path / "folder")],
            "out_exists": ok,
            "scene_not_empty": ok + ["--scene", str(tmp_path / "scene")],
            "scene_is_a_file": ok + ["--scene", str(tmp_path / "scene")],
            "scene_under_a_file": ok + ["--scene", str(png / "scene")],
            "scene_is_out": ok + ["--scene", str(tmp_path / "t.csv")],
            "json_is_out": ok + ["--json", str(tmp_path / "t.csv")],
            "scene_is_json": ok + ["--json", str(tmp_path / "r.json"), "--scene", str(tmp_path / "r.json")],
            "json_exists": ok + ["--json", str(tmp_path / "t.json")]}[case]
    assert load_script().run(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mskdex_batch: error:") and message in captured.err
    assert "%" not in captured.out  # refused before any work (no progress reported)
    if case == "out_exists":
        assert (tmp_path / "t.csv").read_text() == "earlier results\n"
    else:
        assert not (tmp_path / "t.csv").exists()
    if case == "scene_not_empty":
        assert [f.name for f in (tmp_path / "scene").iterdir()] == ["notes.txt"]


def test_batch_without_torch_points_to_check_dependencies(tmp_path):
    """A missing PyTorch (the likely ImportError in Slicer) exits 1 and says how to install it."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPT), "--model", str(tmp_path), "--xray", "x.dcm",
                           "--out", str(tmp_path / "t.csv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("mskdex_batch: error: import of torch halted")
    assert "PyTorch" in proc.stderr and "'Check dependencies'" in proc.stderr


def test_batch_help_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--xray" in proc.stdout and "--model" in proc.stdout
