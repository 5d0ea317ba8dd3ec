"""The evaluation's outputs: predictions CSV, metric tables, figures and the HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration import LEVEL, QUANTITIES, read_calibration
from ..fileio import file_sha256
from ..objects import DEFAULT_MUSCLES
from . import figures
from .crossval import ROW_HEADER, Predictions, anova, case_images
from .report import (Section, Table, agreement_table, anova_table, image_table, markdown,
                     write_csv, write_html, write_markdown)

#: Objects of the paper's Fig. 4, shown in the decomposition panel when present.
PANEL_OBJECTS = ("gluteus_maximus", "gluteus_medius", "pelvis", "sacrum")


def representative_case(preds: Predictions) -> int:
    """Index of the case with the median mean relative lean-mass error over the muscles."""
    muscles = [i for i, k in enumerate(preds.kinds) if k == "muscle"] or list(range(len(preds.names)))
    rel = np.abs(preds.mass_pred[:, muscles] - preds.mass_true[:, muscles]) / \
        np.maximum(preds.mass_true[:, muscles], 1e-9)
    score = rel.mean(axis=1)
    return int(np.argsort(score)[len(score) // 2])


def write_evaluation(out: Path, preds: Predictions, dataset: Path, title: str,
                     compare: Predictions | None = None, compare_label: str = "") -> Path:
    """Write every output of an evaluation into ``out``; returns the path of report.html."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "predictions.csv", Table(ROW_HEADER, preds.rows()))
    per_object = preds.object_metrics()
    agree = agreement_table(per_object)
    images = image_table(preds.image_metrics())
    write_csv(out / "metrics.csv", agree)
    write_csv(out / "image_metrics.csv", images)
    folds = sorted(set(preds.folds.tolist()))
    summary = (f"{len(preds.ids)} held-out cases of {len(set(preds.patients))} patients, folds {folds}. "
               f"Mean lean-mass PCC over the muscles: {preds.mean_muscle_pcc('mass'):.3f}; "
               f"mean volume PCC: {preds.mean_muscle_pcc('volume'):.3f}; "
               f"mean lean-density PCC: {preds.mean_muscle_pcc('density'):.3f}.")
    sections = [Section("Per-object accuracy", summary, [agree]), Section("Bone DRRs", "", [images])]
    intervals = interval_table(out, folds, preds.names)
    if intervals is None:
        (out / "intervals.csv").unlink(missing_ok=True)  # from an earlier run whose models are gone
    else:
        write_csv(out / "intervals.csv", intervals)
        sections.append(Section(
            "Prediction intervals", "What `mskdex decompose` reports with each fold's model: the "
            f"{100 * LEVEL:.0f} % interval of a prediction p is [p / f, p x f], f = e^q from that "
            "model's held-out cases (split conformal, calibration.json; n/a: too few cases).", [intervals]))
    if compare is not None:
        rows = anova(preds, compare)
        table = anova_table(rows, "this", compare_label or "other")
        write_csv(out / "anova.csv", table)
        sections.append(Section("Comparison (one-way ANOVA)", "", [table]))
    m = representative_case(preds)
    figs = [(figures.scatter_figure(preds.mass_true, preds.mass_pred, preds.names,
                                    "Lean muscle mass / bone mass", "g", out / "scatter_mass.png",
                                    preds.folds), "Mass: predicted vs ground truth (colour: fold)"),
            (figures.scatter_figure(preds.volume_true, preds.volume_pred, preds.names,
                                    "Volume", "cm3", out / "scatter_volume.png", preds.folds),
             "Volume: predicted vs ground truth (colour: fold)")]
    run = out / f"fold_{preds.folds[m]}" / "run"
    if (run / "model.safetensors").is_file():  # (not when the fold's model has been removed)
        xray, pred, ref = case_images(run, dataset, preds.ids[m])
        show = [n for n in PANEL_OBJECTS if n in preds.names] or preds.names[:4]
        figs.append((figures.decomposition_figure(
            xray, pred, ref, preds.names, out / "decomposition.png", show,
            title=f"case {preds.ids[m]} (median error), held out in fold {preds.folds[m]}"),
            "Decomposition of a representative held-out case: predicted vs reference "
            "(CT DRRs; aligned DRRs for the registered bones)"))
    sections.append(Section("Figures", "", [], figs))
    write_markdown(out / "metrics.md", title, sections)
    return write_html(out / "report.html", title, sections)


def interval_table(out: Path, folds: list[int], names: list[str]) -> Table | None:
    """Per object, the interval factors e^q (mass, volume) of each fold's model that has a
    ``calibration.json``; None when none has."""
    docs = {}
    for f in folds:
        run = out / f"fold_{f}" / "run"
        if (run / "model.safetensors").is_file():  # checked against the weights, as decompose does
            doc = read_calibration(run, file_sha256(run / "model.safetensors"), names)
            if doc is not None:
                docs[f] = doc
    if not docs:
        return None
    factor = lambda q: float("nan") if q is None else float(np.exp(q))
    header = ["object"] + [f"{q} ×/÷ fold {f}" for q in QUANTITIES for f in docs]
    rows = [[n] + [factor(docs[f]["objects"][n][f"{q}_log_q"]) for q in QUANTITIES for f in docs]
            for n in names]
    return Table(header, rows, digits={h: 2 for h in header[1:]})


def print_table(preds: Predictions) -> str:
    """The per-object table as Markdown text (for the terminal)."""
    text = markdown(agreement_table(preds.object_metrics()))
    muscles = [n for n in DEFAULT_MUSCLES if n in preds.names]
    return text + (f"\nMean lean-mass PCC over {len(muscles)} muscles: {preds.mean_muscle_pcc('mass'):.3f} "
                   f"(volume {preds.mean_muscle_pcc('volume'):.3f}, "
                   f"lean density {preds.mean_muscle_pcc('density'):.3f})\n")
