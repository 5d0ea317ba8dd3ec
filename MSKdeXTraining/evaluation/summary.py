"""The evaluation's outputs: predictions CSV, metric tables, figures and the HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration import LEVEL, QUANTITIES, read_calibration
from ..fileio import file_sha256
from . import figures
from .crossval import AGREEMENT_QUANTITIES, ROW_HEADER, Predictions, anova, case_images, mean_pcc_differences
from .report import (Section, Table, agreement_table, anova_table, environment_section, image_table, markdown,
                     write_csv, write_html, write_markdown)

#: Objects of the paper's Fig. 4, shown in the decomposition panel when present.
PANEL_OBJECTS = ("gluteus_maximus", "gluteus_medius", "pelvis", "sacrum")


def representative_case(preds: Predictions) -> int:
    """Index of the case with the median mean relative lean-mass error over the muscles (among
    the cases where it is finite, if any)."""
    muscles = [i for i, k in enumerate(preds.kinds) if k == "muscle"] or list(range(len(preds.names)))
    with np.errstate(invalid="ignore"):
        rel = np.abs(preds.mass_pred[:, muscles] - preds.mass_true[:, muscles]) / \
            np.maximum(preds.mass_true[:, muscles], 1e-9)
    score = rel.mean(axis=1)
    order = [int(i) for i in np.argsort(score) if np.isfinite(score[i])] or list(range(len(score)))
    return order[len(order) // 2]


def write_evaluation(out: Path, preds: Predictions, dataset: Path, title: str,
                     compare: Predictions | None = None, compare_label: str = "") -> Path:
    """Write every output of an evaluation into ``out``; returns the path of report.html. All
    tables (the comparison with ``compare`` too) are computed before any file is written, the
    figures drawn before the tables are written (a figure that fails leaves the tables and
    report of the last run; figures drawn before it are already new), and outputs that no
    longer apply (intervals.csv, anova.csv, decomposition.png) are removed."""
    agree = agreement_table(preds.object_metrics(intervals=True))
    images = image_table(preds.image_metrics())
    folds = sorted(set(preds.folds.tolist()))
    intervals = interval_table(out, folds, preds.names)
    comparison = None if compare is None else anova_table(
        anova(preds, compare, f"--compare {compare_label}"), "this", compare_label or "other")
    difference = None if compare is None else difference_text(
        mean_pcc_differences(preds, compare, f"--compare {compare_label}"), "this", compare_label or "the other")
    m = representative_case(preds)
    run = out / f"fold_{preds.folds[m]}" / "run"
    panel = case_images(run, dataset, preds.ids[m]) if (run / "model.safetensors").is_file() else None

    summary = (f"{len(preds.ids)} held-out cases of {len(set(preds.patients))} patients: {preds.folds_text()} "
               "(every finished fold in this folder made with this config, K and dataset). "
               + mean_pcc_text(preds) + "\n\n" + preds.warnings_text()).strip()
    sections = [Section("Per-object accuracy", summary, [agree]), Section("Bone DRRs", "", [images])]
    if intervals is not None:
        sections.append(Section(
            "Prediction intervals", "What `mskdex decompose` reports with each fold's model: the "
            f"{100 * LEVEL:.0f} % interval of a prediction p is [p / f, p x f], f = e^q from that "
            "model's held-out cases (split conformal over patients, calibration.json; n/a: too few "
            "patients).", [intervals]))
    if comparison is not None:
        sections.append(Section("Comparison (one-way ANOVA)", f"{compare_label or 'The other evaluation'}: "
                                f"{len(compare.ids)} held-out cases, {compare.folds_text()}. {difference}",
                                [comparison]))

    out.mkdir(parents=True, exist_ok=True)  # figures first: one that fails leaves the tables as they were
    figs = [(figures.scatter_figure(preds.mass_true, preds.mass_pred, preds.names,
                                    "Lean muscle mass / bone mass", "g", out / "scatter_mass.png",
                                    preds.folds), "Mass: predicted vs ground truth (colour: fold)"),
            (figures.scatter_figure(preds.volume_true, preds.volume_pred, preds.names,
                                    "Volume", "cm3", out / "scatter_volume.png", preds.folds),
             "Volume: predicted vs ground truth (colour: fold)")]
    if panel is None:  # the fold's model has been removed
        (out / "decomposition.png").unlink(missing_ok=True)
    else:
        show = [n for n in PANEL_OBJECTS if n in preds.names] or preds.names[:4]
        figs.append((figures.decomposition_figure(
            *panel, preds.names, out / "decomposition.png", show,
            title=f"case {preds.ids[m]} (median error), held out in fold {preds.folds[m]}"),
            "Decomposition of a representative held-out case: predicted vs reference "
            "(CT DRRs; aligned DRRs for the registered bones, none where the registration failed)"))
    sections += [Section("Figures", "", [], figs), environment_section()]
    write_csv(out / "predictions.csv", Table(ROW_HEADER, preds.rows()))
    write_csv(out / "metrics.csv", agree)
    write_csv(out / "image_metrics.csv", images)
    for name, table in (("intervals.csv", intervals), ("anova.csv", comparison)):
        if table is None:  # from an earlier run (models since removed; --compare)
            (out / name).unlink(missing_ok=True)
        else:
            write_csv(out / name, table)
    write_markdown(out / "metrics.md", title, sections)
    return write_html(out / "report.html", title, sections)


def _with_ci(value: float, low: float, high: float, signed: bool = False) -> str:
    """``value`` (3 decimals) with its interval in brackets (2 decimals; 3 and signed for a
    difference), or "(no interval)"; n/a for an undefined value."""
    if not np.isfinite(value):
        return "n/a"
    form = "+.3f" if signed else ".2f"
    interval = (f"({low:{form}} to {high:{form}})" if np.isfinite(low) and np.isfinite(high) else "(no interval)")
    return f"{value:{'+.3f' if signed else '.3f'}} {interval}"


def mean_pcc_text(preds: Predictions) -> str:
    """The muscle-mean PCCs of lean mass, volume and lean density with their 95 % confidence
    intervals (bootstrap over the patients), and how many muscles they average (n/a: a muscle's
    PCC is undefined, so is their mean)."""
    text = {q: _with_ci(preds.mean_muscle_pcc(q), *preds.mean_muscle_pcc_ci(q)) for q in AGREEMENT_QUANTITIES}
    return (f"Mean lean-mass PCC over {len(preds.muscles())} muscles: {text['mass']}; mean volume PCC: "
            f"{text['volume']}; mean lean-density PCC: {text['density']} (in brackets: 95 % confidence "
            "interval, BCa bootstrap over the patients, none with fewer than 3 or where a resample's PCC is "
            "undefined; n/a: undefined, as a muscle's PCC is).")


def difference_text(differences: dict[str, dict], this: str, other: str) -> str:
    """:func:`~MSKdeXTraining.evaluation.crossval.mean_pcc_differences` as a sentence: ``this``
    minus ``other``."""
    text = {q: _with_ci(d["difference"], d["low"], d["high"], signed=True) + f" on {d['n']} cases"
            for q, d in differences.items()}
    return (f"Muscle-mean PCC, {this} minus {other}, on their common cases: lean mass {text['mass']}, volume "
            f"{text['volume']} (in brackets: 95 % confidence interval, paired BCa bootstrap over the patients; "
            "an interval that holds 0 does not show a difference).")


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
    """The per-object table, the muscle means, the folds pooled and any warning, as text for the
    terminal."""
    lines = [markdown(agreement_table(preds.object_metrics())), mean_pcc_text(preds),
             f"{len(preds.ids)} held-out cases: {preds.folds_text()}", preds.warnings_text()]
    return "\n".join(line for line in lines if line) + "\n"
