"""Cross-validation, report and ablation on the toy phantom dataset with a tiny model."""

from __future__ import annotations

import base64
import copy
import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from MSKdeXTraining.environment import environment
from MSKdeXTraining.evaluation import figures, metrics
from MSKdeXTraining.evaluation.ablation import ablation
from MSKdeXTraining.evaluation.crossval import (Predictions, anova, evaluate, load_predictions,
                                                  mean_pcc_differences)
from MSKdeXTraining.evaluation.report import Section, Table, agreement_table, write_html, write_markdown
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.inference import Decomposer
from MSKdeXTraining.training.data import PreparedDataset, read_manifest, split_folds
from MSKdeXTraining.training.toy import write_toy_dataset

from test_inference import tiny_config
from test_metrics import icc21


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root / "data", n_cases=8, size=32, seed=1)
    tiny_config(root, epochs=1)
    return root


@pytest.fixture(scope="module")
def evaluated(toy) -> tuple[Path, object]:
    out = toy / "eval"
    preds = evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])
    return out, preds


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _recomputed_metrics(out: Path) -> dict[str, dict]:
    """Per object, from predictions.csv with numpy alone: n, kind, and for mass, volume and
    density (mass / volume where both are finite) the PCC (np.corrcoef), ICC(2,1)
    (Shrout-Fleiss mean squares, test_metrics.icc21) and MAE."""
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    expected = {}
    for name in dict.fromkeys(r["object"] for r in rows):
        mine = [r for r in rows if r["object"] == name]
        col = lambda key: np.array([float(r[key]) for r in mine])
        pairs = {"mass": (col("mass_pred_g"), col("mass_true_g")),
                 "volume": (col("volume_pred_cm3"), col("volume_true_cm3"))}
        with np.errstate(divide="ignore", invalid="ignore"):
            dp, dt = pairs["mass"][0] / pairs["volume"][0], pairs["mass"][1] / pairs["volume"][1]
        keep = np.isfinite(dp) & np.isfinite(dt)
        pairs["density"] = (dp[keep], dt[keep])
        expected[name] = {"kind": mine[0]["kind"], "n": len(mine), **{
            q: {"pcc": np.corrcoef(p, t)[0, 1], "icc": icc21(p, t), "mae": np.mean(np.abs(p - t))}
            for q, (p, t) in pairs.items()}}
    return expected


def test_report_written_with_figures(evaluated):
    """Every metrics.csv row equals PCC, ICC(2,1) and MAE recomputed from predictions.csv;
    metrics.md and report.html show them as formatted, and the muscle-mean PCCs."""
    from MSKdeXTraining.objects import DEFAULT_MUSCLES

    out, preds = evaluated
    html = (out / "report.html").read_text()
    pngs = _embedded_pngs(html)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert pngs == [(out / f).read_bytes() for f in ("scatter_mass.png", "scatter_volume.png", "decomposition.png")]
    env = environment()
    assert html.endswith(f"<h2>Software and machine</h2>\n<p>mskdex: {env['mskdex']}; python: {env['python']}; "
                         f"torch: {env['torch']}; numpy: {env['numpy']}; scipy: {env['scipy']}; SimpleITK: "
                         f"{env['SimpleITK']}; scikit-image: {env['scikit-image']}; cma: {env['cma']}; pydicom: "
                         f"{env['pydicom']}; pillow: {env['pillow']}; "
                         + (f"torch_cuda: {env['torch_cuda']}; " if "torch_cuda" in env else "")  # a CUDA build
                         + f"platform: {env['platform']}; cpu: "
                         f"{env['cpu']}; cpu_capability: {env['cpu_capability']}; cpus: {env['cpus']}. The training of "
                         "each model is recorded in its run folder (environment.json).</p>\n</body></html>")
    # image_metrics.csv: per bone and DRR type, the means of the cases' PSNR / SSIM over the same cases
    cases = [c for f in sorted(out.glob("fold_*/predictions.json")) for c in json.loads(f.read_text())["cases"]]
    with (out / "image_metrics.csv").open() as fh:
        image_rows = list(csv.DictReader(fh))
    assert [(r["bone"], r["DRR"]) for r in image_rows] == [(b, t) for b in preds.aligned_bones
                                                            for t in ("wvdrr", "vdrr", "mdrr")]
    for r in image_rows:
        psnr, ssim = (np.array([c["image"][r["bone"]][r["DRR"]][m] for c in cases], float) for m in ("psnr", "ssim"))
        both = np.isfinite(psnr) & np.isfinite(ssim)
        assert int(r["n"]) == both.sum() == 4
        assert float(r["PSNR (dB)"]) == pytest.approx(psnr[both].mean(), rel=1e-6)
        assert float(r["SSIM"]) == pytest.approx(ssim[both].mean(), rel=1e-6)
    expected = _recomputed_metrics(out)
    with (out / "metrics.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["object"] for r in table] == list(expected) == preds.names
    md = (out / "metrics.md").read_text()
    for row in table:
        e = expected[row["object"]]
        assert row["kind"] == e["kind"] and row["non-finite"] == "0"
        assert int(row["mass n"]) == int(row["volume n"]) == int(row["density n"]) == e["n"] == 4
        for q, unit in (("mass", "g"), ("volume", "cm3")):
            assert float(row[f"{q} PCC"]) == pytest.approx(e[q]["pcc"], rel=1e-9)
            assert float(row[f"{q} ICC"]) == pytest.approx(e[q]["icc"], rel=1e-9)
            assert float(row[f"{q} MAE ({unit})"]) == pytest.approx(e[q]["mae"], rel=1e-9)
        assert float(row["density PCC"]) == pytest.approx(e["density"]["pcc"], rel=1e-9)
        assert all(row[f"{q} PCC {b}"] == "nan" for q in ("mass", "volume", "density") for b in ("low", "high"))
        cells = [row["object"], e["kind"], "0"] + [c for q in ("mass", "volume") for c in [
            "4", f"{e[q]['pcc']:.3f}", "n/a", "n/a", f"{e[q]['icc']:.3f}", f"{e[q]['mae']:.1f}"]]
        cells += ["4", f"{e['density']['pcc']:.3f}", "n/a", "n/a"]  # 2 patients: too few for an interval
        assert "| " + " | ".join(cells) + " |" in md, cells
        assert "".join(f"<td>{c}</td>" for c in cells) in html, cells
    # the density agreement (its ICC and MAE are not tabulated) is the recomputed one
    for m in preds.object_metrics():
        assert m["density"]["icc"] == pytest.approx(expected[m["object"]]["density"]["icc"], rel=1e-9)
        assert m["density"]["mae"] == pytest.approx(expected[m["object"]]["density"]["mae"], rel=1e-9)
    muscles = [n for n in DEFAULT_MUSCLES if n in expected]
    means = {q: np.mean([expected[n][q]["pcc"] for n in muscles]) for q in ("mass", "volume", "density")}
    assert len(muscles) == 6
    assert (f"Mean lean-mass PCC over 6 muscles: {means['mass']:.3f} (no interval); mean volume PCC: "
            f"{means['volume']:.3f} (no interval); mean lean-density PCC: {means['density']:.3f} (no interval)") \
        in html  # 2 patients: too few for an interval
    assert "held-out cases of 2 patients: folds 0 of 2; fold 1 left out: not predicted" in html
    assert "<h2>Prediction intervals</h2>" in html and (out / "intervals.csv").is_file()
    assert "![Mass: predicted vs ground truth (colour: fold)](scatter_mass.png)" in md


def test_predictions_are_the_held_out_fold(toy, evaluated):
    out, preds = evaluated
    held_out = split_folds(read_manifest(toy / "data"), 2, seed=0)[0][1]
    assert sorted(preds.ids) == sorted(held_out)
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(held_out) * 9
    # predicted values are the decomposer's DRR sums; truth is the dataset's
    data = PreparedDataset(toy / "data", [preds.ids[0]], size=(32, 32))
    item = data.load(0)
    result = Decomposer.from_run(out / "fold_0" / "run").decompose(
        _as_radiograph(item["xray"][0].numpy(), data.geometry), tta=1)
    np.testing.assert_allclose(preds.mass_pred[0], [r["mass_g"] for r in result.table], rtol=1e-5)
    np.testing.assert_allclose(preds.volume_true[0], item["volume_cm3"].numpy())
    # the metrics table agrees with a recomputation from predictions.csv
    with (out / "metrics.csv").open() as fh:
        first = next(csv.DictReader(fh))
    t = [float(r["mass_true_g"]) for r in rows if r["object"] == first["object"]]
    p = [float(r["mass_pred_g"]) for r in rows if r["object"] == first["object"]]
    assert float(first["mass MAE (g)"]) == pytest.approx(np.mean(np.abs(np.subtract(p, t))))


def _as_radiograph(x, geometry):
    from MSKdeXTraining.radiograph_io import Radiograph
    return Radiograph(x, geometry.pixel_spacing, {"bits_stored": 32})


def test_resume_keeps_finished_folds(toy, evaluated):
    out, preds = evaluated
    model = out / "fold_0" / "run" / "model.safetensors"
    stamp, predicted = model.stat().st_mtime_ns, (out / "fold_0" / "predictions.json").stat().st_mtime_ns
    (out / "fold_0" / "run" / "calibration.json").unlink()  # as an evaluation from before calibration
    again = evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])
    assert model.stat().st_mtime_ns == stamp  # neither trained ...
    assert (out / "fold_0" / "predictions.json").stat().st_mtime_ns == predicted  # ... nor predicted again
    assert (out / "fold_0" / "run" / "calibration.json").is_file()  # but calibrated
    np.testing.assert_array_equal(again.mass_pred, preds.mass_pred)
    assert load_predictions(out).ids == preds.ids
    # how the same training runs (device, compile, ...) does not void a finished fold
    evaluate(toy / "data", out, toy / "tiny.yaml", {"device": "cpu", "compile": True, "channels_last": False,
                                                   "amp_bf16": False, "num_workers": 1, "checkpoint_every": 3},
             k=2, folds=[0])
    assert (out / "fold_0" / "predictions.json").stat().st_mtime_ns == predicted
    # another K, config or fold split is refused, never answered with the old fold's results
    with pytest.raises(InputError, match="made with another k, test_ids"):
        evaluate(toy / "data", out, toy / "tiny.yaml", k=3, folds=[0])
    with pytest.raises(InputError, match="made with another config"):
        evaluate(toy / "data", out, toy / "tiny.yaml", {"lambda_is": 0.0}, k=2, folds=[0])
    (out / "fold_0" / "predictions.json").rename(out / "moved.json")  # the model is reused ...
    with pytest.raises(InputError, match=r"model.json: made with another test_ids.* delete \S+fold_0 to train"):
        evaluate(toy / "data", out, toy / "tiny.yaml", k=3, folds=[0])  # ... only for its own split
    (out / "moved.json").rename(out / "fold_0" / "predictions.json")
    for folds in ([], [2], [-1]):
        with pytest.raises(InputError, match="folds must be in 0..1"):
            evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=folds)


def test_bones_of_failed_registrations_are_not_scored(toy, evaluated, tmp_path):
    """PSNR/SSIM compare with registered bone DRRs; a failed registration's is no reference."""
    import json
    import shutil

    from MSKdeXTraining.evaluation.crossval import predict_cases

    data = tmp_path / "data"
    shutil.copytree(toy / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    case = next(c for c in manifest["cases"] if c["status"] == "ok")
    case["registration"] = {"pelvis": {"ok": True}, "femur_left": {"ok": True}, "femur_right": {"ok": False}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    image = predict_cases(evaluated[0] / "fold_0" / "run", data, [case["id"]])["cases"][0]["image"]
    assert np.isfinite(image["pelvis"]["vdrr"]["psnr"]) and np.isnan(image["femur"]["vdrr"]["psnr"])
    assert np.isnan(image["femur"]["mdrr"]["ssim"])
    # nor is it shown as the reference in the decomposition figure
    from MSKdeXTraining.evaluation.crossval import case_images

    xray, pred, ref = case_images(evaluated[0] / "fold_0" / "run", data, case["id"])
    objects = manifest["objects"]
    assert np.isnan(ref[:, objects.index("femur")]).all() and np.isfinite(ref[:, objects.index("pelvis")]).all()
    assert figures.decomposition_figure(xray, pred, ref, objects, tmp_path / "d.png", ["femur", "pelvis"]).is_file()


def test_density_agreement_is_that_of_mass_over_volume():
    rng = np.random.default_rng(3)
    vol_true, mass_true = rng.uniform(300, 900, (10, 2)), rng.uniform(200, 700, (10, 2))
    vol_pred, mass_pred = vol_true * rng.uniform(0.8, 1.2, (10, 2)), mass_true * 1.1
    vol_pred[0, 1] = 0.0  # a vanished prediction has no density: left out, not an error
    vol_true[1, 1] = 0.0  # nor has an object missing from a case's CT
    preds = Predictions([f"c{i}" for i in range(10)], [f"c{i}" for i in range(10)], np.zeros(10, int),
                        ["iliacus", "pectineus"], ["muscle", "muscle"], [], vol_true, vol_pred,
                        mass_true, mass_pred, [{}] * 10)
    dens = {m["object"]: m["density"] for m in preds.object_metrics()}
    expect = np.corrcoef(mass_pred[:, 0] / vol_pred[:, 0], mass_true[:, 0] / vol_true[:, 0])[0, 1]
    assert dens["iliacus"]["pcc"] == pytest.approx(expect) and dens["iliacus"]["n"] == 10
    assert dens["pectineus"]["n"] == 8
    assert preds.mean_muscle_pcc("density") == pytest.approx(np.mean([dens[k]["pcc"] for k in dens]))


def test_figures_and_html(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(50, 150, (12, 2))
    png = figures.scatter_figure(truth, truth * 1.1, ["iliacus", "pelvis"], "Mass", "g", tmp_path / "s.png")
    x = rng.random((24, 24))
    drr = rng.random((3, 2, 24, 24))
    panel = figures.decomposition_figure(x, drr, drr, ["iliacus", "pelvis"], tmp_path / "d.png")
    sections = [Section("s", "first\n\nsecond", [Table(["a", "b"], [["<x & y>", float("nan")]])],
                        [(png, "scatter"), (panel, "panel")])]
    text = write_html(tmp_path / "r.html", "t", sections).read_text()
    assert "<td>&lt;x &amp; y&gt;</td><td>n/a</td>" in text and len(_embedded_pngs(text)) == 2
    assert "<p>first</p>\n<p>second</p>" in text  # a paragraph each
    md = write_markdown(tmp_path / "r.md", "t", sections).read_text()
    assert "| <x & y> | n/a |" in md and "![scatter](s.png)" in md and "![panel](d.png)" in md


def test_scatter_colours_are_named_in_a_fold_legend(tmp_path, monkeypatch):
    """The colour of each fold's points is named (fold <f>) in the figure's legend, in that colour."""
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi: drawn.append(fig) or path)
    truth = np.random.default_rng(0).uniform(50, 150, (6, 2))
    folds = np.array([0, 0, 2, 2, 3, 3])
    figures.scatter_figure(truth, truth * 1.1, ["iliacus", "pelvis"], "Mass", "g", tmp_path / "s.png", folds)
    (legend,) = drawn[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["fold 0", "fold 2", "fold 3"]
    points = drawn[0].axes[0].collections[0]
    colours = points.to_rgba(points.get_array())[:, :3]  # the points' colours: case 2 is in fold 2
    assert np.allclose(legend.legend_handles[1].get_color()[:3], colours[2])
    assert not np.allclose(colours[2], colours[0])


def test_figures_say_which_values_they_leave_out(tmp_path, monkeypatch):
    """A scatter panel counts the cases it does not draw (prediction or truth not finite); a
    decomposition panel without finite values, even both of a pair, is left empty and says why."""
    from MSKdeXTraining.objects import DISPLAY_NAMES

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi: drawn.append(fig) or path)
    rng = np.random.default_rng(1)
    truth = rng.uniform(50, 150, (6, 4))
    pred = truth * 1.1
    truth[0, 1], pred[1, 1] = np.nan, np.inf
    names = ["iliacus", "pelvis", "femur", "sacrum"]  # four panels: two rows of three
    figures.scatter_figure(truth, pred, names, "Mass", "g", tmp_path / "s.png")
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_visible()]
    assert len(titles) == 4 and titles[1].endswith("\n2 not finite, not shown") and "not shown" not in titles[0]
    drr = rng.random((3, 2, 8, 8))
    drr[:, 1] = np.nan  # a diverged prediction of a bone whose registration failed
    figures.decomposition_figure(rng.random((8, 8)), drr, drr, ["iliacus", "pelvis"], tmp_path / "d.png")
    titles = {ax.get_title() for ax in drawn[1].axes}
    pelvis = DISPLAY_NAMES["pelvis"]
    assert {f"{pelvis} MDRR\npredicted: not finite", f"{pelvis} MDRR\nreference: registration failed",
            f"{DISPLAY_NAMES['iliacus']} MDRR\nreference"} <= titles


def test_the_decomposition_panel_shows_the_papers_objects_of_the_median_case(evaluated, tmp_path, monkeypatch):
    """Fig. 4's objects (gluteus maximus and medius, pelvis, sacrum) where the model has them,
    for the case of median error."""
    from MSKdeXTraining.evaluation.summary import PANEL_OBJECTS, representative_case, write_evaluation

    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    shown, draw = [], figures.decomposition_figure
    monkeypatch.setattr(figures, "decomposition_figure",
                        lambda *args, **kw: shown.append((args[5], kw["title"])) or draw(*args, **kw))
    preds = evaluated[1]
    write_evaluation(out, preds, evaluated[0].parent / "data", "t")
    [(objects, title)] = shown
    assert set(PANEL_OBJECTS) <= set(preds.names) and objects == list(PANEL_OBJECTS)
    assert title.startswith(f"case {preds.ids[representative_case(preds)]} (median error)")


def test_a_figure_that_fails_leaves_the_last_runs_tables(evaluated, tmp_path, monkeypatch):
    """The figures are drawn before any table is written: one that fails (here the mass
    scatter) leaves every table and the report as the last run wrote them."""
    from MSKdeXTraining.evaluation.summary import write_evaluation

    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".md", ".html")}

    def fail(*args, **kwargs):
        raise RuntimeError("no room for the figure")

    monkeypatch.setattr(figures, "scatter_figure", fail)
    changed = Predictions.from_json([json.loads((out / "fold_0" / "predictions.json").read_text())])
    changed.mass_pred = changed.mass_pred * 2.0
    with pytest.raises(RuntimeError, match="no room"):
        write_evaluation(out, changed, evaluated[0].parent / "data", "t")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".md", ".html")} == before


@pytest.mark.slow
def test_ablation_table2_layout(toy):
    rows = ablation(toy / "data", toy / "ablation", toy / "tiny.yaml", lambdas=(0.0, 100.0),
                    bone_losses=(False,), k=2, workers=2)
    assert [(r["lambda_is"], r["bone_loss"]) for r in rows] == [(0.0, False), (100.0, False)]
    md = (toy / "ablation" / "ablation.md").read_text()
    assert "Glu. max." in md and "muscle mean" in md
    # each setting was trained with its own lambda_is and bone loss, and each row's PCCs are those
    # of its setting's held-out predictions, recomputed with numpy
    from MSKdeXTraining.evaluation.crossval import load_predictions
    for row in rows:
        folder = toy / "ablation" / f"lis{row['lambda_is']:g}_bone0"
        for config in (json.loads((folder / "fold_0" / "run" / "model.json").read_text())["config"],
                       json.loads((folder / "fold_0" / "predictions.json").read_text())["evaluation"]["config"]):
            assert (config["lambda_is"], config["bone_loss"]) == (row["lambda_is"], False)
        preds = load_predictions(folder)
        for i, name in enumerate(preds.names):
            pcc = np.corrcoef(preds.mass_pred[:, i], preds.mass_true[:, i])[0, 1]
            assert row["mass_pcc"][name] == pytest.approx(pcc, rel=1e-9, nan_ok=True)
    with (toy / "ablation" / "ablation_mass_pcc.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and float(table[1]["muscle mean"]) == pytest.approx(rows[1]["mean_muscle_mass_pcc"], rel=1e-9)
    with pytest.raises(InputError, match="share an output folder"):
        ablation(toy / "data", toy / "ablation", toy / "tiny.yaml", lambdas=(100.0, 100.0000001),
                 bone_losses=(False,), k=2)


def test_a_diverged_setting_is_reported_and_the_others_finish(toy, monkeypatch):
    """A setting whose training diverges (its losses NaN, as with too high a weight; here the
    config's own setting) is named in Table 2 (all n/a), the report and ablation.json, never
    compared: the best other setting is, and the report says the default diverged."""
    from MSKdeXTraining.training.objective import Objective

    step = Objective.step
    monkeypatch.setattr(Objective, "step", lambda self, batch, w: {
        k: (float("nan") if self.c.lambda_is == 1000.0 else v) for k, v in step(self, batch, w).items()})
    rows = ablation(toy / "data", toy / "ablation", toy / "tiny.yaml", lambdas=(0.0, 100.0, 1000.0),
                    bone_losses=(False,), k=2, workers=1,  # in this process: the patch applies
                    overrides={"lambda_is": 1000.0, "bone_loss": False})
    assert all(np.isfinite(r["mean_muscle_mass_pcc"]) and "diverged" not in r for r in rows[:2])
    assert "training diverged in epoch 1" in rows[2]["diverged"] and np.isnan(rows[2]["mean_muscle_mass_pcc"])
    md = (toy / "ablation" / "ablation.md").read_text()
    assert "held-out cases n = 4; low, high: the muscle mean's 95 % confidence interval (BCa bootstrap over the " \
        "patients); training diverged, so n/a: lambda_is 1000 (False)" in md
    assert "| 1000 | (False) | n/a | n/a | n/a | n/a | n/a |" in md and "Training diverged, so no predictions" in md
    assert "(the default setting diverged) (lambda_is=100, L_B=False) against the baseline" in md
    report = (toy / "ablation" / "report.html").read_text()
    assert "Training diverged" in report and f"torch: {torch.__version__}; numpy: {np.__version__}" in report
    doc = json.loads((toy / "ablation" / "ablation.json").read_text())
    assert doc["environment"] == environment()
    assert (doc["anova"]["lambda_is"], doc["anova"]["chosen"]) == (100.0, "best")
    assert doc["rows"][2]["mean_muscle_mass_pcc"] is None and doc["rows"][2]["n"] == 0


def test_a_fold_made_from_another_dataset_is_refused(toy, evaluated, tmp_path):
    """The dataset was re-prepared after the evaluation: its fold results
    are not reused."""
    from MSKdeXTraining.evaluation.crossval import evaluate

    data, out = tmp_path / "data", tmp_path / "eval"
    shutil.copytree(toy / "data", data)
    shutil.copytree(evaluated[0], out)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["note"] = "prepared again"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="made with another dataset"):
        evaluate(data, out, toy / "tiny.yaml", k=2, folds=[0])


def test_anova_compares_the_absolute_errors(evaluated):
    """One-way ANOVA of the absolute errors of two evaluations: here the second has exactly
    twice the absolute errors of the first (the same evaluation twice gives F = 0, p = 1)."""
    from scipy import stats

    _, preds = evaluated
    worse = copy.deepcopy(preds)
    worse.mass_pred = preds.mass_true + 2 * (preds.mass_pred - preds.mass_true)
    row = anova(preds, worse)[0]
    ea = np.abs(preds.mass_pred[:, 0] - preds.mass_true[:, 0])
    assert row["mass"]["f"] == pytest.approx(stats.f_oneway(ea, 2 * ea).statistic)
    assert row["mass"]["mae_b"] == pytest.approx(2 * row["mass"]["mae_a"])
    same = anova(preds, preds)[0]
    assert same["mass"]["f"] == pytest.approx(0.0) and same["mass"]["p"] == pytest.approx(1.0)


def test_evaluate_cli_compare_writes_the_anova_and_its_report_section(toy, evaluated, tmp_path, capsys):
    """`mskdex evaluate --compare` against the same evaluation (a copy, resumed: nothing trained):
    identical absolute errors give F = 0 and p = 1 per object (scipy's f_oneway: no
    between-group variance), in anova.csv and in the report; the per-object table is printed."""
    from MSKdeXTraining.cli import main

    out = tmp_path / "again"
    shutil.copytree(evaluated[0], out)
    code = main(["evaluate", "--data", str(toy / "data"), "--out", str(out), "--config", str(toy / "tiny.yaml"),
                 "--k", "2", "--folds", "0", "--compare", str(evaluated[0])])
    printed = capsys.readouterr().out
    assert code == 0
    preds = evaluated[1]
    expected = _recomputed_metrics(evaluated[0])
    with (out / "anova.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["object", "n", "mass MAE this (g)", "mass MAE eval (g)", "mass F", "mass p",
                             "volume MAE this (cm3)", "volume MAE eval (cm3)", "volume F", "volume p"]
    assert [r["object"] for r in rows] == preds.names
    for row in rows:
        assert int(row["n"]) == 4
        for q, unit in (("mass", "g"), ("volume", "cm3")):
            mae = expected[row["object"]][q]["mae"]
            assert float(row[f"{q} MAE this ({unit})"]) == pytest.approx(mae, rel=1e-9)
            assert float(row[f"{q} MAE eval ({unit})"]) == pytest.approx(mae, rel=1e-9)
            assert float(row[f"{q} F"]) == pytest.approx(0.0, abs=1e-9)
            assert float(row[f"{q} p"]) == pytest.approx(1.0, abs=1e-9)
    html = (out / "report.html").read_text()
    section = html[html.index("<h2>Comparison (one-way ANOVA)</h2>"):html.index("<h2>Figures</h2>")]
    assert ("<caption>One-way ANOVA of absolute errors: this vs eval (n: common cases where both errors "
            "of mass and volume are finite)</caption>") in section
    first = expected[preds.names[0]]
    assert (f"<td>{preds.names[0]}</td><td>4</td><td>{first['mass']['mae']:.1f}</td>"
            f"<td>{first['mass']['mae']:.1f}</td><td>0.00</td><td>1.0000</td>") in section
    assert section.count("<td>1.0000</td>") == 2 * len(preds.names)
    assert ("Muscle-mean PCC, this minus eval, on their common cases: lean mass +0.000 (no interval) on 4 cases, "
            "volume +0.000 (no interval) on 4 cases") in section
    assert "## Comparison (one-way ANOVA)" in (out / "metrics.md").read_text()
    assert not (evaluated[0] / "anova.csv").exists()  # the compared evaluation is only read
    assert f"| {preds.names[0]} | muscle | 0 | 4 | {first['mass']['pcc']:.3f} |" in printed
    mean = np.mean([expected[n]["mass"]["pcc"] for n in preds.names if expected[n]["kind"] == "muscle"])
    assert f"Mean lean-mass PCC over 6 muscles: {mean:.3f}" in printed
    assert f"report: {out / 'report.html'}" in printed
    # a run without --compare leaves no comparison of an earlier one
    evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])
    assert not (out / "anova.csv").exists() and "Comparison" not in (out / "report.html").read_text()


def test_ablation_cli_prints_table2(monkeypatch, tmp_path, capsys):
    """`mskdex ablation` passes its options on and prints the mass-PCC table (paper Table 2
    layout: lambda_is, (with L_B), one column per object by display name, muscle mean; NaN as
    n/a). The ablation itself is stubbed: its run is the slow test above."""
    from MSKdeXTraining.cli import main
    from MSKdeXTraining.evaluation import ablation as ablation_module

    calls = []

    def fake(dataset, out, config, lambdas, bone, k, fold, workers, overrides, progress=None):
        calls.append((dataset, out, config, lambdas, bone, k, fold, workers, overrides))
        return [{"lambda_is": l, "bone_loss": b, "n": 4,
                 "mass_pcc": {"gluteus_maximus": 0.5 + l / 1000, "pelvis": float("nan")},
                 "volume_pcc": {"gluteus_maximus": 0.1, "pelvis": 0.2},
                 "mean_muscle_mass_pcc": 0.25 + l / 1000, "mean_muscle_volume_pcc": 0.1,
                 "mean_muscle_mass_pcc_ci": [0.1, 0.4 + l / 1000], "mean_muscle_volume_pcc_ci": [0.0, 0.2]}
                for l in lambdas for b in bone]

    monkeypatch.setattr(ablation_module, "ablation", fake)
    code = main(["ablation", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "a"), "--k", "3",
                 "--lambdas", "0", "100", "--bone-loss", "both", "--fold", "2", "--set", "epochs=1"])
    assert code == 0
    assert calls == [(tmp_path / "d", tmp_path / "a", "small", (0.0, 100.0), (False, True), 3, 2, None,
                      {"epochs": 1})]
    printed = capsys.readouterr().out
    assert ("| lambda_is | with L_B | Glu. max. | Pelv. | muscle mean | low | high |\n|---|---|---|---|---|---|---|\n"
            "| 0 | (False) | 0.500 | n/a | 0.250 | 0.10 | 0.40 |\n| 0 | (True) | 0.500 | n/a | 0.250 | 0.10 | 0.40 |\n"
            "| 100 | (False) | 0.600 | n/a | 0.350 | 0.10 | 0.50 |\n| 100 | (True) | 0.600 | n/a | 0.350 | 0.10 | 0.50 |\n"
            ) in printed
    assert "Lean muscle mass and bone mass estimation accuracy (PCC), held-out cases n = 4" in printed
    assert f"report: {tmp_path / 'a' / 'report.html'}" in printed
    for choice, bone in (("on", (True,)), ("off", (False,))):
        assert main(["ablation", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "a"),
                     "--bone-loss", choice]) == 0
        assert calls[-1][4] == bone


def test_evaluation_calibrates_each_fold_model_and_decompose_reports_intervals(toy, evaluated, tmp_path):
    from MSKdeXTraining.calibration import fit_calibration
    from MSKdeXTraining.fileio import file_sha256, write_json

    out, preds = evaluated
    run = out / "fold_0" / "run"
    written = json.loads((run / "calibration.json").read_text())
    assert written["weights_sha256"] == file_sha256(run / "model.safetensors")
    assert sorted(written["held_out_ids"]) == sorted(preds.ids)
    assert all(o["n"] == 4 and o["mass_log_q"] is None for o in written["objects"].values())  # 2 < 9 patients
    assert written["held_out_patients"] == len(set(preds.patients)) == 2
    radiograph = _as_radiograph(PreparedDataset(toy / "data", [preds.ids[0]], size=(32, 32)).load(0)["xray"][0].numpy(),
                                PreparedDataset(toy / "data").geometry)
    assert all(r["mass_low_g"] is None for r in Decomposer.from_run(run).decompose(radiograph, tta=1).table)

    doc = json.loads((out / "fold_0" / "predictions.json").read_text())
    # 20 patients' cases with distinct errors (each copy's predictions scaled apart): the 0.9
    # interval is the 19th smallest error, not the 18th (ceil(n 0.9)) nor the largest
    doc["cases"] = [{**c, "patient": f"{c['patient']}_{j}_{c['id']}",
                     "mass_pred_g": [v * (1 + 0.01 * j) for v in c["mass_pred_g"]],
                     "volume_pred_cm3": [v * (1 + 0.01 * j) for v in c["volume_pred_cm3"]]}
                    for j in range(5) for c in doc["cases"]]
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    write_json(calibrated / "calibration.json", fit_calibration(doc))
    result = Decomposer.from_run(calibrated).decompose(radiograph, tta=1)
    assert result.model["calibration"]["held_out_cases"] == result.model["calibration"]["held_out_patients"] == 20
    for i, row in enumerate(result.table):
        for quantity, unit in (("mass", "g"), ("volume", "cm3")):
            errors = np.sort(np.abs(np.log(np.array([c[f"{quantity}_pred_{unit}"][i] for c in doc["cases"]])
                                           / np.array([c[f"{quantity}_true_{unit}"][i] for c in doc["cases"]]))))
            assert errors[17] < errors[18] < errors[19]
            value = row[f"{quantity}_{unit}"]
            assert row[f"{quantity}_low_{unit}"] == pytest.approx(value * np.exp(-errors[18]), rel=1e-12)
            assert row[f"{quantity}_high_{unit}"] == pytest.approx(value * np.exp(errors[18]), rel=1e-12)
    assert not any("no calibrated interval" in r or "no 90 % interval" in r for r in result.ood.reasons)
    assert any("magnification unknown" in r and "the interval does not include this error" in r
               for r in result.ood.reasons)  # an assumed magnification is beyond the held-out errors
    assert any("no 90 % interval for gluteus_maximus" in r and "2 held-out patients calibrate it, 9 needed" in r
               for r in Decomposer.from_run(run).decompose(radiograph, tta=1).ood.reasons)
    from MSKdeXTraining.evaluation.summary import interval_table

    (tmp_path / "fold_0").mkdir()
    calibrated.rename(tmp_path / "fold_0" / "run")
    table = interval_table(tmp_path, [0], preds.names)
    q = json.loads((tmp_path / "fold_0" / "run" / "calibration.json").read_text())["objects"]["femur"]
    assert table.header == ["object", "mass ×/÷ fold 0", "volume ×/÷ fold 0"]
    assert table.rows[preds.names.index("femur")][1:] == pytest.approx(np.exp([q["mass_log_q"], q["volume_log_q"]]))


def test_evaluate_predicts_again_for_new_weights_and_keeps_a_removed_models_predictions(toy, evaluated, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(toy / "eval", out)
    run = out / "fold_0" / "run"
    doc = json.loads((out / "fold_0" / "predictions.json").read_text())
    doc["weights_sha256"] = "0" * 64  # as if the run had been trained on after the predictions
    doc["cases"][0]["mass_pred_g"][0] += 100.0
    (out / "fold_0" / "predictions.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="predictions.json: made with another k, test_ids"):  # another split
        evaluate(toy / "data", out, toy / "tiny.yaml", k=3, folds=[0])
    (run / "calibration.json").unlink()
    again = evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])
    fresh = json.loads((out / "fold_0" / "predictions.json").read_text())
    assert fresh["weights_sha256"] == json.loads((run / "calibration.json").read_text())["weights_sha256"] != "0" * 64
    assert again.mass_pred[0, 0] == pytest.approx(doc["cases"][0]["mass_pred_g"][0] - 100.0, rel=1e-6)
    (run / "model.safetensors").unlink()  # a pruned model: its predictions are still reported
    (run / "calibration.json").unlink()
    assert (out / "decomposition.png").is_file()
    assert evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0]).ids == again.ids
    assert not (run / "calibration.json").exists()
    assert not (out / "decomposition.png").exists()  # no model to draw it with: not an earlier run's
    assert not (out / "intervals.csv").exists()  # nor intervals of its model


def test_a_fold_trained_on_with_more_epochs_is_predicted_again(toy, evaluated, tmp_path):
    """`mskdex train --resume` of a fold's run with more epochs: evaluating with those epochs
    predicts the fold again with the new weights; with the old ones its model.json is refused;
    a refused predictions.json says to delete that file, not the fold with its model."""
    from MSKdeXTraining.fileio import file_sha256
    from MSKdeXTraining.training.config import load_config
    from MSKdeXTraining.training.trainer import train

    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    run = out / "fold_0" / "run"
    train(load_config(toy / "tiny.yaml", {"epochs": 2}), toy / "data", run, fold=(0, 2), resume=True)
    with pytest.raises(InputError, match="model.json: made with another config"):
        evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])
    again = evaluate(toy / "data", out, toy / "tiny.yaml", {"epochs": 2}, k=2, folds=[0])
    doc = json.loads((out / "fold_0" / "predictions.json").read_text())
    assert doc["weights_sha256"] == file_sha256(run / "model.safetensors")
    assert doc["evaluation"]["config"]["epochs"] == 2 and sorted(again.ids) == sorted(evaluated[1].ids)
    assert not np.allclose(again.mass_pred, evaluated[1].mass_pred)
    # its model was made so too: deleting only the predictions would not do, the fold must be trained again
    with pytest.raises(InputError, match=r"predictions.json: made with another config .* delete \S+fold_0 to train"):
        evaluate(toy / "data", out, toy / "tiny.yaml", {"epochs": 2, "lambda_is": 0.0}, k=2, folds=[0])


def test_calibrate_command_matches_evaluate_and_refuses_a_model_without_held_out_cases(toy, evaluated, tmp_path,
                                                                                      capsys, monkeypatch):
    from MSKdeXTraining.cli import main

    from MSKdeXTraining.calibration import fit_calibration
    from MSKdeXTraining.evaluation import crossval

    run = tmp_path / "run"
    shutil.copytree(evaluated[0] / "fold_0" / "run", run)
    (run / "calibration.json").unlink()
    calibrated_on = []
    monkeypatch.setattr(crossval, "write_calibration",
                        lambda r, doc, real=crossval.write_calibration: (calibrated_on.append(doc), real(r, doc))[1])
    assert main(["calibrate", "--model", str(run), "--data", str(toy / "data")]) == 0
    assert "4 held-out cases" in capsys.readouterr().out
    mine = json.loads((run / "calibration.json").read_text())
    theirs = json.loads((evaluated[0] / "fold_0" / "run" / "calibration.json").read_text())
    assert mine["objects"] == theirs["objects"] and mine["weights_sha256"] == theirs["weights_sha256"]
    assert mine["held_out_ids"] == theirs["held_out_ids"] == [c["id"] for c in calibrated_on[0]["cases"]]
    # 4 cases give no 0.9 quantile (all null above): compare what it calibrated on, and its quantiles at 0.5
    evaluation = json.loads((evaluated[0] / "fold_0" / "predictions.json").read_text())
    [doc] = calibrated_on
    for key in ("mass_pred_g", "volume_pred_cm3", "mass_true_g", "volume_true_cm3"):
        np.testing.assert_allclose([c[key] for c in doc["cases"]], [c[key] for c in evaluation["cases"]], rtol=1e-6)
    q_mine, q_theirs = (fit_calibration(d, level=0.5)["objects"] for d in (doc, evaluation))
    assert all(isinstance(q_mine[n][f"{q}_log_q"], float) for n in q_mine for q in ("mass", "volume"))
    for n in q_mine:
        for q in ("mass", "volume"):
            assert q_mine[n][f"{q}_log_q"] == pytest.approx(q_theirs[n][f"{q}_log_q"], rel=1e-5)
    # another dataset with the same case ids: its "held-out" cases are not the ones held out
    write_toy_dataset(tmp_path / "other", n_cases=8, size=32, seed=2)
    assert main(["calibrate", "--model", str(run), "--data", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "the run was started on another dataset" in err and "calibrate it with the dataset it was trained" in err
    (run / "manifest.json").rename(tmp_path / "manifest.json")  # a model folder of what decompose needs only
    assert main(["calibrate", "--model", str(run), "--data", str(tmp_path / "other")]) == 2
    assert f"{run / 'manifest.json'}: missing; it is the training run's copy" in capsys.readouterr().err
    (tmp_path / "manifest.json").rename(run / "manifest.json")
    meta = json.loads((run / "model.json").read_text())
    meta["split"]["test_ids"] = []  # trained on every case
    (run / "model.json").write_text(json.dumps(meta))
    assert main(["calibrate", "--model", str(run), "--data", str(toy / "data")]) == 2
    assert "holds no held-out cases" in capsys.readouterr().err


def _write_fold(folder: Path, doc: dict, fold: int, ids: list[str], evaluation: dict | None) -> None:
    """Write ``folder/fold_<fold>/predictions.json``: ``doc``'s cases (repeated as needed) as the
    cases ``ids``, recorded as made with ``evaluation`` (None: no record, as older releases)."""
    from MSKdeXTraining.fileio import write_json

    cases = [{**doc["cases"][n % len(doc["cases"])], "id": i} for n, i in enumerate(ids)]
    record = {} if evaluation is None else {"evaluation": evaluation}
    write_json(folder / f"fold_{fold}" / "predictions.json",
               {**{k: v for k, v in doc.items() if k != "evaluation"}, "fold": fold, "cases": cases, **record})


def _synthetic(seed: int, noise: float, names=("gluteus_maximus", "gluteus_medius", "gluteus_minimus",
                                               "iliacus", "obturator_externus", "pectineus", "pelvis")):
    """Predictions of 12 cases of 12 patients (fold 0): truth uniform 200-900, prediction the truth
    times 1 + ``noise`` x N(0, 1) (mass and volume)."""
    rng = np.random.default_rng(seed)
    n = len(names)
    vol_true, mass_true = rng.uniform(200, 900, (12, n)), rng.uniform(200, 900, (12, n))
    vol_pred = vol_true * (1 + noise * rng.standard_normal((12, n)))
    mass_pred = mass_true * (1 + noise * rng.standard_normal((12, n)))
    ids = [f"c{i:02d}" for i in range(12)]
    return Predictions(ids, ids, np.zeros(12, int), list(names), ["muscle"] * (n - 1) + ["bone"], [],
                       vol_true, vol_pred, mass_true, mass_pred, [{}] * 12)


def test_a_fold_recorded_with_a_concrete_cycle_matches_a_config_leaving_it_null():
    """A config with ``sgdr_t0: null`` (small's) matches a fold whose record holds the number its
    run made of it (e.g. 80, then resumed to 120 epochs and evaluated with ``--set epochs=120``);
    an explicit other number does not; nor does any other field."""
    from MSKdeXTraining.evaluation.crossval import _changed
    from MSKdeXTraining.training.config import load_config

    recorded = {"k": 4, "config": load_config("small", {"epochs": 120, "sgdr_t0": 80}).to_dict()}
    assert _changed(recorded, {"k": 4, "config": load_config("small", {"epochs": 120}).to_dict()}) == []
    assert _changed(recorded, {"k": 4, "config": load_config("small", {"epochs": 120, "sgdr_t0": 40}).to_dict()}) \
        == ["config"]
    assert _changed(recorded, {"k": 4, "config": load_config("small", {"epochs": 120, "lr": 0.5}).to_dict()}) \
        == ["config"]
    unconcrete = {"k": 4, "config": load_config("small").to_dict()}  # both null (a key written by evaluate)
    assert _changed(unconcrete, unconcrete) == []


def test_scores_of_few_patients_or_of_a_model_ignoring_its_input_get_a_warning():
    """Twelve patients and predictions that follow the truth: no warning; nine patients: a
    warning; an object predicted about the same for every case (an untrained model's mean): a
    warning naming it, whose PCC would otherwise read like any other."""
    import copy

    from MSKdeXTraining.evaluation.crossval import FEW_PATIENTS

    preds = _synthetic(0, 0.1)
    assert FEW_PATIENTS == 10 and preds.warnings_text() == ""
    few = copy.deepcopy(preds)
    few.patients = [f"p{i % 9}" for i in range(12)]  # 12 films of 9 patients
    assert few.warnings_text() == ("Warning: 9 held-out patient(s): correlations over so few are mostly chance "
                                   "(a PCC's 95 % interval then spans much of -1 to 1); evaluate on 10 or more.")
    flat = copy.deepcopy(preds)
    rng = np.random.default_rng(1)
    flat.volume_pred[:, 1] = 500 * (1 + 0.02 * rng.standard_normal(12))  # SD ~10 cm3 against the truth's ~200
    warning = flat.warnings_text()
    assert warning.startswith("Warning: the predictions of gluteus_medius hardly vary between cases (SD below 10 % "
                              "of the truth's)") and "pelvis" not in warning
    assert np.isfinite(flat.object_metrics()[1]["volume"]["pcc"])  # scored all the same, with the warning
    empty = copy.deepcopy(preds)
    empty.mass_pred[:, 0] = np.nan  # nothing finite to take a spread of: the non-finite warning, quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert empty.warnings_text().startswith("Warning: predictions not finite")


def test_the_representative_case_has_the_median_muscle_error():
    """The decomposition figure's case: the median of the cases' mean relative lean-mass errors
    over the muscles, among the cases where it is finite; with no muscle, over every object."""
    from MSKdeXTraining.evaluation.summary import representative_case

    preds = _synthetic(0, 0.2)
    relative = np.abs(preds.mass_pred - preds.mass_true) / preds.mass_true
    order = np.argsort(relative[:, :6].mean(axis=1))
    assert representative_case(preds) == order[6]
    preds.mass_pred[order[:4], 2] = np.nan  # the four best cases: no score
    assert representative_case(preds) == order[4 + 4]
    bones = _synthetic(0, 0.2)
    bones.kinds = ["bone"] * 7
    assert representative_case(bones) == np.argsort(relative.mean(axis=1))[6]


def test_muscle_mean_is_undefined_with_an_undefined_pcc_and_image_means_share_cases():
    preds = _synthetic(0, 0.1)
    assert np.isfinite(preds.mean_muscle_pcc("mass"))
    preds.mass_pred[:, 2] = 500.0  # a constant channel: its PCC, so the mean of the six, is undefined
    assert np.isnan(preds.object_metrics()[2]["mass"]["pcc"]) and np.isnan(preds.mean_muscle_pcc("mass"))
    assert preds.muscles() == list(preds.names[:6])
    preds.aligned_bones = ["pelvis"]
    preds.image = [{"pelvis": {"vdrr": {"psnr": p, "ssim": s}}}
                   for p, s in ((20.0, 0.5), (np.inf, 1.0), (30.0, 0.7), (None, None))]  # None: null in JSON
    assert preds.image_metrics() == [{"bone": "pelvis", "drr_type": "vdrr", "n": 2, "psnr": 25.0,
                                      "ssim": pytest.approx(0.6)}]


def test_muscle_mean_pcc_intervals_and_the_paired_difference():
    """The muscle mean on chosen cases (repeats allowed) is the mean of the muscles' PCCs there; its
    95 % interval holds it; the text shows it. Each object's interval is its PCC's over its finite cases
    (every patient's cases doubled: the same interval, patients are resampled, not cases), and the table
    shows it. The difference of two evaluations matches cases by id
    (another order gives the same): clearly better predictions give an interval above 0, two alike
    noisy ones an interval holding 0. A case one evaluation cannot score is left out of both: the
    same predictions with some NaN differ by 0."""
    from MSKdeXTraining.evaluation.summary import difference_text, mean_pcc_text

    a = _synthetic(0, 0.1)
    cases = np.array([0, 0, 3, 5, 7, 8, 11])
    assert a.mean_muscle_pcc("volume", cases) == pytest.approx(
        np.mean([np.corrcoef(a.volume_pred[cases, i], a.volume_true[cases, i])[0, 1] for i in range(6)]), rel=1e-12)
    low, high = a.mean_muscle_pcc_ci("mass")
    assert -1 <= low < a.mean_muscle_pcc("mass") < high <= 1
    pred, true = a.muscle_values("mass")
    assert (low, high) == pytest.approx(metrics.bootstrap_ci(lambda c: metrics.mean_pcc(pred, true, c), a.patients),
                                        rel=1e-12)
    holes = copy.deepcopy(a)
    holes.volume_pred[[2, 5], 1] = np.nan  # each object's interval: of its PCC over its own finite pairs
    per_object = holes.object_metrics(intervals=True)
    for i, m in enumerate(per_object):
        keep = np.isfinite(holes.volume_pred[:, i])
        p, t = holes.volume_pred[keep, i], holes.volume_true[keep, i]
        alone = metrics.bootstrap_ci(lambda c: metrics.pcc(p[c], t[c]), np.array(a.patients)[keep].tolist())
        assert (m["volume"]["pcc_low"], m["volume"]["pcc_high"]) == pytest.approx(alone, rel=1e-9)
        assert m["volume"]["pcc_low"] < m["volume"]["pcc"] < m["volume"]["pcc_high"]
    twice = Predictions([f"{i}{k}" for i in holes.ids for k in "ab"], list(np.repeat(holes.patients, 2)),
                        np.repeat(holes.folds, 2), holes.names, holes.kinds, [],
                        *(np.repeat(x, 2, axis=0) for x in (holes.volume_true, holes.volume_pred, holes.mass_true,
                                                            holes.mass_pred)), [{}] * 24)
    assert np.array(twice.pcc_intervals("volume")) == pytest.approx(np.array(holes.pcc_intervals("volume")), rel=1e-6)
    table = agreement_table(per_object)
    assert table.header[4:11] == ["mass PCC", "mass PCC low", "mass PCC high", "mass ICC", "mass MAE (g)",
                                  "volume n", "volume PCC"]
    assert table.formatted()[1][11:13] == [f"{per_object[1]['volume'][b]:.2f}" for b in ("pcc_low", "pcc_high")]
    assert f"Mean lean-mass PCC over 6 muscles: {a.mean_muscle_pcc('mass'):.3f} ({low:.2f} to {high:.2f});" \
        in mean_pcc_text(a)
    worse, alike = copy.deepcopy(a), copy.deepcopy(a)
    rng = np.random.default_rng(9)
    worse.mass_pred = a.mass_true * (1 + 0.5 * rng.standard_normal(a.mass_true.shape))
    alike.mass_pred = a.mass_true * (1 + 0.1 * rng.standard_normal(a.mass_true.shape))
    found = mean_pcc_differences(a, worse)
    d = found["mass"]
    assert d["difference"] == pytest.approx(a.mean_muscle_pcc() - worse.mean_muscle_pcc())
    assert 0 < d["low"] < d["difference"] < d["high"] and d["n"] == 12
    assert found["volume"]["difference"] == 0 and np.isnan(found["volume"]["low"])  # the same volumes
    assert difference_text(found, "this", "w") == (
        f"Muscle-mean PCC, this minus w, on their common cases: lean mass {d['difference']:+.3f} "
        f"({d['low']:+.3f} to {d['high']:+.3f}) on 12 cases, volume +0.000 (no interval) on 12 cases (in brackets: "
        "95 % confidence interval, paired BCa bootstrap over the patients; an interval that holds 0 does not "
        "show a difference).")
    order = np.arange(12)[::-1]
    shuffled = Predictions([worse.ids[i] for i in order], [worse.patients[i] for i in order], worse.folds[order],
                           worse.names, worse.kinds, [], worse.volume_true[order], worse.volume_pred[order],
                           worse.mass_true[order], worse.mass_pred[order], [{}] * 12)
    assert mean_pcc_differences(a, shuffled)["mass"] == pytest.approx(d, rel=1e-12)
    d = mean_pcc_differences(a, alike)["mass"]
    assert d["low"] < 0 < d["high"]
    gaps = copy.deepcopy(a)
    gaps.mass_pred[[1, 4, 6], [0, 2, 5]] = np.nan  # three cases b cannot score: not a's either
    d = mean_pcc_differences(a, gaps)["mass"]
    assert d["difference"] == 0 and d["n"] == 9


def test_ablation_compares_the_default_with_the_baseline_and_survives_a_diverged_setting(tmp_path):
    """The ANOVA takes the config's own setting (100, L_B) against the baseline, not the best
    scoring one; without it the best whose muscle mean is defined. A setting whose predictions
    are all NaN is reported with undefined metrics (null in ablation.json), never a crash."""
    from MSKdeXTraining.evaluation import ablation as ablation_module

    results = {(0.0, False): _synthetic(1, 0.5), (100.0, True): _synthetic(2, 0.2),
               (1000.0, True): _synthetic(3, 0.1), (100.0, False): _synthetic(4, 0.01),
               (0.0, True): _synthetic(5, 0.1)}
    results[(100.0, False)].mass_pred[:, 0] = 500.0  # best muscles but one undefined: no best
    results[(0.0, True)].mass_pred[:] = np.nan  # diverged
    results[(0.0, True)].volume_pred[0] = np.inf
    rows = [ablation_module._row(s, p) for s, p in results.items()]
    ablation_module._write(tmp_path, rows, results, 4, 0, (100.0, True))
    text = (tmp_path / "ablation.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert doc["anova"]["chosen"] == "default" and (doc["anova"]["lambda_is"], doc["anova"]["bone_loss"]) == (100.0, True)
    diverged = doc["rows"][4]
    assert diverged["mean_muscle_mass_pcc"] is None and set(diverged["mass_pcc"].values()) == {None}
    assert diverged["mean_muscle_mass_pcc_ci"] == [None, None]
    low, high = results[(100.0, True)].mean_muscle_pcc_ci("mass")
    assert doc["rows"][1]["mean_muscle_mass_pcc_ci"] == pytest.approx([low, high]) and low < high
    assert f"| {doc['rows'][1]['mean_muscle_mass_pcc']:.3f} | {low:.2f} | {high:.2f} |" in \
        (tmp_path / "ablation.md").read_text()
    assert doc["rows"][3]["mean_muscle_mass_pcc"] is None
    md = (tmp_path / "ablation.md").read_text()
    assert "## Default setting vs baseline" in md and "lambda_is=100, L_B=True" in md
    d = mean_pcc_differences(results[(100.0, True)], results[(0.0, False)])["mass"]
    assert (f"Muscle-mean PCC, lambda_is=100, L_B=True minus the baseline, on their common cases: lean mass "
            f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}) on 12 cases") in md
    assert doc["anova"]["mean_pcc_difference"]["mass"] == pytest.approx(d)
    assert "| 0 | (True) | n/a | n/a |" in md
    mae = np.mean(np.abs(results[(100.0, True)].mass_pred[:, 0] - results[(100.0, True)].mass_true[:, 0]))
    assert doc["anova"]["rows"][0]["mass"]["mae_a"] == pytest.approx(mae)
    del results[(100.0, True)]
    ablation_module._write(tmp_path, rows[:1] + rows[2:], results, 4, 0, (100.0, True))
    doc = json.loads((tmp_path / "ablation.json").read_text())
    assert (doc["anova"]["chosen"], doc["anova"]["lambda_is"], doc["anova"]["bone_loss"]) == ("best", 1000.0, True)
    assert "## Best setting vs baseline" in (tmp_path / "ablation.md").read_text()
    assert rows[1]["mean_muscle_volume_pcc"] == pytest.approx(_synthetic(2, 0.2).mean_muscle_pcc("volume"))
    diverged = ablation_module._diverged_row((0.0, True), list(rows[0]["mass_pcc"]), "training diverged")
    assert "bootstrap over the patients); training diverged, so n/a: lambda_is 0 (True)" in \
        ablation_module.table2([diverged, rows[0]]).caption


def test_the_ablation_anova_needs_the_baseline_and_another_setting():
    """The config's setting is compared with the baseline; where the baseline is the config's
    setting, the best other one is; without the baseline, none."""
    from MSKdeXTraining.evaluation.ablation import BASELINE, compared_setting

    results = {BASELINE: _synthetic(1, 0.01), (100.0, True): _synthetic(2, 0.5), (1000.0, True): _synthetic(3, 0.2)}
    assert compared_setting(results, (100.0, True)) == ((100.0, True), "default")
    assert compared_setting(results, BASELINE) == ((1000.0, True), "best")  # the baseline, best here, is not
    del results[BASELINE]
    assert compared_setting(results, (100.0, True)) is None


def test_non_finite_predictions_are_reported_not_fatal(toy, evaluated, tmp_path, capsys):
    """A diverged model's NaN / infinite predictions (null in predictions.json) are left out of
    the scores, counted per object (metrics.csv, a warning in the report and on the terminal);
    an object without any finite prediction gets n/a, and the report is still written."""
    from MSKdeXTraining.cli import main
    from MSKdeXTraining.fileio import write_json

    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    doc = json.loads((out / "fold_0" / "predictions.json").read_text())
    names = doc["objects"]
    for c in doc["cases"]:
        c["mass_pred_g"][0] = float("nan")  # first object: nothing finite
    doc["cases"][1]["volume_pred_cm3"][1] = float("inf")
    write_json(out / "fold_0" / "predictions.json", doc)
    assert "NaN" not in (out / "fold_0" / "predictions.json").read_text()
    assert main(["evaluate", "--data", str(toy / "data"), "--out", str(out), "--config", str(toy / "tiny.yaml"),
                 "--k", "2", "--folds", "0"]) == 0
    printed = capsys.readouterr().out
    with (out / "metrics.csv").open() as fh:
        table = {r["object"]: r for r in csv.DictReader(fh)}
    assert (table[names[0]]["non-finite"], table[names[0]]["mass n"], table[names[0]]["mass PCC"]) == ("4", "0", "nan")
    assert table[names[0]]["volume n"] == "4" and table[names[0]]["volume PCC"] != "nan"  # its volume is scored
    # each quantity counts the cases it is scored on: the infinite volume is left out of volume alone
    assert [table[names[1]][c] for c in ("non-finite", "mass n", "volume n", "density n")] == ["1", "4", "3", "3"]
    expected = _recomputed_metrics(evaluated[0])[names[1]]["mass"]
    assert float(table[names[1]]["mass PCC"]) == pytest.approx(expected["pcc"], rel=1e-9)
    warning = f"left out of the scores, cases per object: {names[0]} 4, {names[1]} 1."
    for text in (printed, (out / "metrics.md").read_text(), (out / "report.html").read_text()):
        assert warning in text
        assert "Mean lean-mass PCC over 6 muscles: n/a" in text  # gluteus maximus has none
    assert f"| {names[0]} | muscle | 4 | 0 | n/a | n/a | n/a | 4 |" in printed


def test_compare_is_checked_before_training_and_a_failing_one_writes_nothing(toy, evaluated, tmp_path):
    from MSKdeXTraining.evaluation.summary import write_evaluation
    from MSKdeXTraining.fileio import write_json

    other = tmp_path / "other"
    shutil.copytree(evaluated[0], other, ignore=shutil.ignore_patterns("run"))
    doc = json.loads((other / "fold_0" / "predictions.json").read_text())
    write_json(other / "fold_0" / "predictions.json", {**doc, "objects": ["psoas"] + doc["objects"][1:]})
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match=rf"--compare {re.escape(str(other))}: its objects differ .*not there: "
                                         r"\['gluteus_maximus'\]; only there: \['psoas'\]"):
        evaluate(toy / "data", fresh, toy / "tiny.yaml", k=2, folds=[0], compare=other)
    assert not fresh.exists()  # nothing trained
    for shared in (1, 0):  # one-way ANOVA needs two
        write_json(other / "fold_0" / "predictions.json",
                   {**doc, "cases": [{**c, "id": c["id"] + ("x" if n >= shared else "")}
                                     for n, c in enumerate(doc["cases"])]})
        with pytest.raises(InputError, match=rf"--compare {re.escape(str(other))}: shares {shared} held-out cases"):
            evaluate(toy / "data", fresh, toy / "tiny.yaml", k=2, folds=[0], compare=other)
        assert not fresh.exists()
    # the report's own check: every section is computed before a file is written
    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="shares 0 held-out cases"):
        write_evaluation(out, evaluated[1], toy / "data", "t", compare=load_predictions(other), compare_label="other")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_compare_pools_the_other_folders_folds_as_its_report_does(toy, evaluated, tmp_path):
    """--compare reads the folds the other folder's report pools (the config, K and dataset of
    most of its folds; not outdated), and the report says which."""
    from MSKdeXTraining.fileio import write_json

    other = tmp_path / "other"
    shutil.copytree(evaluated[0], other)
    doc = json.loads((other / "fold_0" / "predictions.json").read_text())
    held = split_folds(read_manifest(toy / "data"), 2, seed=0)[1][1]
    key = doc["evaluation"]
    _write_fold(other, doc, 1, held, {**key, "config": {**key["config"], "lambda_is": 0.0}, "test_ids": held})
    preds = load_predictions(other)
    assert preds.ids == evaluated[1].ids and preds.left_out == {1: "made with another config"}
    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0], compare=other)
    assert "other: 4 held-out cases, folds 0 of 2; fold 1 left out: made with another config." in \
        (out / "metrics.md").read_text()
    write_json(other / "fold_0" / "predictions.json", {**doc, "weights_sha256": "0" * 64})
    with pytest.raises(InputError, match="no fold's predictions can be used .fold 0: its model was trained on "
                                         "since its predictions; fold 1: made with another config"):
        load_predictions(other)


def test_compare_reads_an_evaluation_written_before_its_settings_were_recorded(toy, evaluated, tmp_path):
    """Folds without the 'evaluation' record (older releases): a folder of only such folds is
    pooled whole, as before; beside recorded folds they are left out, saying why."""
    old = tmp_path / "old"
    shutil.copytree(evaluated[0], old)
    doc = json.loads((old / "fold_0" / "predictions.json").read_text())
    _write_fold(old, doc, 0, [c["id"] for c in doc["cases"]], None)
    legacy = load_predictions(old)
    assert legacy.ids == evaluated[1].ids and legacy.left_out == {}
    many = tmp_path / "many"  # pooled in the order of the folds: fold_10 after fold_2
    for fold in (10, 2, 0):
        _write_fold(many, doc, fold, [f"f{fold}_{n}" for n in range(2)], None)
    assert load_predictions(many).folds.tolist() == [0, 0, 2, 2, 10, 10]
    held = split_folds(read_manifest(toy / "data"), 2, seed=0)[1][1]
    _write_fold(old, doc, 1, held, {**doc["evaluation"], "test_ids": held})
    mixed = load_predictions(old)
    assert mixed.ids == held and mixed.left_out == {0: "written before MSKdeX recorded its settings"}


def test_the_settings_most_folds_were_made_with_are_pooled(toy, evaluated, tmp_path):
    """Of K = 3 folds, fold 0 made with another config: the config of folds 1 and 2 is pooled,
    not the lowest fold's."""
    doc = json.loads((evaluated[0] / "fold_0" / "predictions.json").read_text())
    key = {**doc["evaluation"], "k": 3}
    folder = tmp_path / "eval"
    for fold, (_, held) in enumerate(split_folds(read_manifest(toy / "data"), 3, seed=0)):
        config = {**key["config"], "lambda_is": 0.0} if fold == 0 else key["config"]
        _write_fold(folder, doc, fold, held, {**key, "config": config, "test_ids": held})
    preds = load_predictions(folder)
    assert sorted(set(preds.folds.tolist())) == [1, 2] and preds.left_out == {0: "made with another config"}


def test_compare_may_share_cases_with_any_fold_the_report_pools(toy, evaluated, tmp_path):
    """--compare is checked against every fold the report pools, not only those run now: an
    evaluation sharing cases only with the finished fold 1 in --out is compared when fold 0 runs."""
    doc = json.loads((evaluated[0] / "fold_0" / "predictions.json").read_text())
    held = split_folds(read_manifest(toy / "data"), 2, seed=0)[1][1]
    out, other = tmp_path / "eval", tmp_path / "other"
    shutil.copytree(evaluated[0], out)
    _write_fold(out, doc, 1, held, {**doc["evaluation"], "test_ids": held})
    _write_fold(other, doc, 0, held, {**doc["evaluation"], "test_ids": held})
    evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0], compare=other)
    with (out / "anova.csv").open() as fh:
        assert {r["n"] for r in csv.DictReader(fh)} == {str(len(held))}


def test_an_interrupted_fold_training_resumes_from_its_checkpoint(toy, tmp_path):
    """An evaluation stopped during a fold's training (in epoch 2, after epoch 1's checkpoint)
    continues that training when run again, not refusing its run folder as taken."""
    class Stopped(Exception):
        pass

    def stop_in_epoch_2(fraction, message):
        if "epoch 2/" in message:
            raise Stopped

    out, settings = tmp_path / "eval", {"epochs": 2, "checkpoint_every": 1}
    with pytest.raises(Stopped):
        evaluate(toy / "data", out, toy / "tiny.yaml", settings, k=2, folds=[0], progress=stop_in_epoch_2)
    run = out / "fold_0" / "run"
    assert (run / "checkpoints" / "epoch_0001.json").is_file() and not (run / "model.json").exists()
    preds = evaluate(toy / "data", out, toy / "tiny.yaml", settings, k=2, folds=[0])
    assert sorted(preds.ids) == sorted(split_folds(read_manifest(toy / "data"), 2, seed=0)[0][1])
    assert json.loads((run / "model.json").read_text())["config"]["epochs"] == 2


def test_muscle_means_average_every_muscle_without_the_papers_six():
    preds = _synthetic(0, 0.1, names=("psoas", "sartorius", "pelvis"))
    assert preds.muscles() == ["psoas", "sartorius"]
    assert preds.mean_muscle_pcc("volume") == pytest.approx(np.mean([m["volume"]["pcc"]
                                                                     for m in preds.object_metrics()[:2]]))


def test_anova_scores_the_cases_whose_mass_and_volume_errors_are_all_finite():
    """A case with a non-finite volume error is left out of the object's mass ANOVA too; one
    common case left gives n = 1 and undefined F and p, not an error."""
    from scipy import stats

    a, b = _synthetic(0, 0.1), _synthetic(1, 0.2)
    a.mass_pred[1:, 0] = np.nan
    a.volume_pred[2, 1] = np.inf
    first, second = anova(a, b)[:2]
    assert first["n"] == 1 and np.isnan(first["mass"]["f"]) and np.isnan(first["volume"]["p"])
    assert first["volume"]["mae_b"] == pytest.approx(abs(b.volume_pred[0, 0] - b.volume_true[0, 0]))
    keep = np.arange(12) != 2
    ea, eb = (np.abs(p.mass_pred[keep, 1] - p.mass_true[keep, 1]) for p in (a, b))
    assert second["n"] == 11 and second["mass"]["f"] == pytest.approx(stats.f_oneway(ea, eb).statistic)


def test_the_report_pools_every_finished_fold_of_this_run(toy, evaluated, tmp_path, capsys):
    """A run of one fold reports every finished fold in the folder made with the same config,
    K and dataset (and says which); a fold made otherwise is left out, with the reason."""
    from MSKdeXTraining.cli import main
    from MSKdeXTraining.fileio import write_json

    out = tmp_path / "eval"
    shutil.copytree(evaluated[0], out)
    both = evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[1])
    assert sorted(both.folds.tolist()) == [0] * 4 + [1] * 4 and not both.left_out
    again = evaluate(toy / "data", out, toy / "tiny.yaml", k=2, folds=[0])  # e.g. `mskdex demo` again
    assert again.ids == both.ids
    with (out / "predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8 * 9
    assert "8 held-out cases of 4 patients: folds 0, 1 of 2 (every finished fold" in (out / "report.html").read_text()
    doc = json.loads((out / "fold_1" / "predictions.json").read_text())
    doc["evaluation"]["config"]["lambda_is"] = 0.0
    write_json(out / "fold_1" / "predictions.json", doc)
    assert main(["evaluate", "--data", str(toy / "data"), "--out", str(out), "--config", str(toy / "tiny.yaml"),
                 "--k", "2", "--folds", "0"]) == 0
    assert "4 held-out cases: folds 0 of 2; fold 1 left out: made with another config" in capsys.readouterr().out
    assert "folds 0 of 2; fold 1 left out: made with another config" in (out / "metrics.md").read_text()
    with (out / "predictions.csv").open() as fh:
        assert {r["fold"] for r in csv.DictReader(fh)} == {"0"}


def test_report_files_are_utf8_whatever_the_locale(tmp_path):
    """Headers hold "×/÷": written as UTF-8 (as the HTML declares) also where the locale's
    encoding is ASCII."""
    import os
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from MSKdeXTraining.evaluation.report import *; "
            "t = Table(['mass \\u00d7/\\u00f7 fold 0'], [[1.5]]); d = Path(sys.argv[1]); write_csv(d / 'a.csv', t); "
            "s = [Section('s', 'x', [t])]; write_markdown(d / 'a.md', 't', s); write_html(d / 'a.html', 't', s)")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code, str(tmp_path)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("a.csv", "a.md", "a.html"):
        assert "mass ×/÷ fold 0" in (tmp_path / name).read_text(encoding="utf-8")


def test_ablation_checks_every_settings_config_before_training(tmp_path):
    """An infinite lambda_is (e.g. --lambdas 1e400) is refused before any setting trains or any
    folder is made, not reported afterwards as a diverged training."""
    import math

    from MSKdeXTraining.evaluation.ablation import ablation

    with pytest.raises(InputError, match=r"config key 'lambda_is' must be a finite number, got inf"):
        ablation(tmp_path / "no-dataset", tmp_path / "ablation", lambdas=(0.0, math.inf))
    assert not (tmp_path / "ablation").exists()


def test_ablation_refuses_settings_that_would_share_a_folder_before_training(toy, tmp_path):
    with pytest.raises(InputError, match=r"--lambdas \[100.0, 100.0000001\]: two settings would share"):
        ablation(toy / "data", tmp_path / "ablation", toy / "tiny.yaml", lambdas=(100.0, 100.0000001),
                 bone_losses=(False,), k=2)
    assert not (tmp_path / "ablation").exists()
