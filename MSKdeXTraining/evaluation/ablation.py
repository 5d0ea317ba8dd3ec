"""Ablation of the OWIS loss weight and the aligned-bone loss (paper Table 2).

Every setting (``lambda_is`` x ``bone_loss``) is trained and evaluated on the same held-out
fold of the same K-fold split by patient, each in its own folder ``OUT/lis<L>_bone<0|1>/``
(resumable like :func:`~MSKdeXTraining.evaluation.crossval.run_folds`). Settings run in
parallel worker processes, the available cores split evenly between them. A one-way ANOVA
compares the config's own setting (the default: lambda_is 100 with the bone loss in the paper's
and the built-in configs) with the baseline (lambda_is 0 without it) when both were run, else
the best-scoring setting (chosen on the same held-out cases) with the baseline. A setting whose
training diverged (:class:`~MSKdeXTraining.errors.TrainingDiverged`) is reported as such (every
PCC n/a, never compared), the others still run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..environment import environment
from ..errors import InputError, TrainingDiverged
from ..fileio import refuse_other_kind, write_json
from ..objects import DISPLAY_NAMES
from ..parallel import run_jobs, worker_count
from ..progress import Progress, silent
from .crossval import Predictions, anova, mean_pcc_differences, run_folds
from .report import (Section, Table, anova_table, environment_section, markdown, write_csv, write_html,
                     write_markdown)
from .summary import difference_text

LAMBDAS = (0.0, 100.0, 1000.0)
BONE_LOSS = (False, True)
#: (lambda_is, bone_loss) of the baseline: neither OWIS nor the aligned-bone loss.
BASELINE = (0.0, False)


def setting_dir(out: Path, lambda_is: float, bone_loss: bool) -> Path:
    """The folder of one ablation setting: ``lis<lambda_is>_bone<0|1>`` in ``out``."""
    return Path(out) / f"lis{lambda_is:g}_bone{int(bone_loss)}"


def ablation(dataset: Path, out: Path, config: str | Path = "small",
             lambdas: tuple[float, ...] = LAMBDAS, bone_losses: tuple[bool, ...] = BONE_LOSS,
             k: int = 4, fold: int = 0, workers: int | None = None, overrides: dict | None = None,
             progress: Progress | None = None) -> list[dict]:
    """Train/evaluate every setting, write ``ablation_mass_pcc.csv``, ``ablation_volume_pcc.csv``,
    ``ablation.json``, ``ablation.md`` and ``report.html`` into ``out``; returns one row per
    setting with per-object PCCs (NaN, and ``diverged`` its message, where training diverged).

    ``workers`` parallel processes (default: min(settings, cores)); each uses
    ``cores // workers`` torch threads (one process: this one, with its own threads).
    """
    from ..training.config import load_config
    from ..training.data import read_manifest

    report = progress or silent
    refuse_other_kind(out, "ablation")
    cfg = load_config(config, overrides)
    settings = list(dict.fromkeys((float(l), bool(b)) for l in lambdas for b in bone_losses))
    folders = [setting_dir(out, *s) for s in settings]
    if len(set(folders)) < len(folders):
        raise InputError(f"--lambdas {list(lambdas)}: two settings would share an output folder "
                         f"({sorted(str(f.name) for f in folders)})")
    jobs = [(Path(dataset), setting_dir(out, *s), config,
             {**(overrides or {}), "lambda_is": s[0], "bone_loss": s[1]}, k, [fold]) for s in settings]
    for job in jobs:  # every setting's config is valid (e.g. a finite lambda_is) before any trains
        load_config(config, job[3])
    objects = list(read_manifest(dataset)["objects"])  # and the dataset can be read
    workers = worker_count(workers, len(settings))
    results: dict[tuple[float, bool], Predictions] = {}
    diverged: dict[tuple[float, bool], str] = {}
    report(0.0, f"{len(settings)} settings on {workers} process(es)")
    for index, preds in run_jobs(_run_setting, jobs, workers, max(1, (os.cpu_count() or 1) // workers)):
        s = settings[index]
        if isinstance(preds, str):
            diverged[s] = preds
        else:
            results[s] = preds
        report((len(results) + len(diverged)) / len(settings),
               f"lambda_is={s[0]:g} bone_loss={s[1]} {'diverged' if s in diverged else 'done'}")
    rows = [_row(s, results[s]) if s in results else _diverged_row(s, objects, diverged[s]) for s in settings]
    _write(Path(out), rows, results, k, fold, (float(cfg.lambda_is), bool(cfg.bone_loss)))
    return rows


def _run_setting(*job) -> Predictions | str:
    """:func:`run_folds` of one setting (``job`` its arguments); the message of a training that
    diverged instead of raising it, so the other settings still run."""
    try:
        return run_folds(*job)
    except TrainingDiverged as e:
        return str(e)


def _diverged_row(setting: tuple[float, bool], objects: list[str], message: str) -> dict:
    """The row of a setting whose training diverged: no predictions, every PCC NaN."""
    nan = {n: float("nan") for n in objects}
    return {"lambda_is": setting[0], "bone_loss": setting[1], "n": 0, "mass_pcc": nan, "volume_pcc": dict(nan),
            "mean_muscle_mass_pcc": float("nan"), "mean_muscle_volume_pcc": float("nan"),
            "mean_muscle_mass_pcc_ci": [float("nan")] * 2, "mean_muscle_volume_pcc_ci": [float("nan")] * 2,
            "diverged": message}


def _row(setting: tuple[float, bool], preds: Predictions) -> dict:
    per = preds.object_metrics()
    return {"lambda_is": setting[0], "bone_loss": setting[1], "n": len(preds.ids),
            "mass_pcc": {m["object"]: m["mass"]["pcc"] for m in per},
            "volume_pcc": {m["object"]: m["volume"]["pcc"] for m in per},
            "mean_muscle_mass_pcc": preds.mean_muscle_pcc("mass"),
            "mean_muscle_volume_pcc": preds.mean_muscle_pcc("volume"),
            "mean_muscle_mass_pcc_ci": list(preds.mean_muscle_pcc_ci("mass")),
            "mean_muscle_volume_pcc_ci": list(preds.mean_muscle_pcc_ci("volume"))}


def table2(rows: list[dict], quantity: str = "mass") -> Table:
    """The paper's Table 2 layout: lambda_is, with L_B, PCC per object, mean over muscles and its
    95 % confidence interval; the caption names the settings whose training diverged (their row
    all n/a)."""
    names = list(rows[0][f"{quantity}_pcc"])
    header = ["lambda_is", "with L_B"] + [DISPLAY_NAMES.get(n, n) for n in names] + ["muscle mean", "low", "high"]
    body = [[f"{r['lambda_is']:g}", f"({r['bone_loss']})"] + [r[f"{quantity}_pcc"][n] for n in names]
            + [r[f"mean_muscle_{quantity}_pcc"], *r[f"mean_muscle_{quantity}_pcc_ci"]] for r in rows]
    what = "Lean muscle mass and bone mass" if quantity == "mass" else "Muscle and bone volume"
    failed = [f"lambda_is {r['lambda_is']:g} ({r['bone_loss']})" for r in rows if r.get("diverged")]
    return Table(header, body, f"{what} estimation accuracy (PCC), held-out cases n = {max(r['n'] for r in rows)}; "
                 "low, high: the muscle mean's 95 % confidence interval (BCa bootstrap over the patients)"
                 + (f"; training diverged, so n/a: {', '.join(failed)}" if failed else ""), {"low": 2, "high": 2})


def compared_setting(results: dict[tuple[float, bool], Predictions],
                     default: tuple[float, bool]) -> tuple[tuple[float, bool], str] | None:
    """The setting the ANOVA compares with :data:`BASELINE` and why: ``default`` (the config's
    own setting) when it was run, else the best by muscle-mean lean-mass PCC ("best"; a setting
    whose mean is undefined never is); None without the baseline or another setting."""
    if BASELINE not in results:
        return None
    if default in results and default != BASELINE:
        return default, "default"
    scored = [s for s in results if s != BASELINE and np.isfinite(results[s].mean_muscle_pcc("mass"))]
    return (max(scored, key=lambda s: results[s].mean_muscle_pcc("mass")), "best") if scored else None


def _write(out: Path, rows: list[dict], results: dict, k: int, fold: int, default: tuple[float, bool]) -> Path:
    mass, volume = table2(rows, "mass"), table2(rows, "volume")
    text = (f"Each setting trained on the same {k - 1}/{k} of the patients (fold {fold} held out) "
            "and scored on the held-out cases. Baseline: lambda_is = 0 without the bone loss. Muscle "
            "mean n/a: a muscle's PCC is undefined (e.g. a constant prediction), so is the mean."
            + "".join(f"\n\nTraining diverged, so no predictions (every PCC n/a, never compared): "
                      f"lambda_is={r['lambda_is']:g}, L_B={r['bone_loss']}: {r['diverged']}"
                      for r in rows if r.get("diverged")))
    sections = [Section("Ablation (paper Table 2 layout)", text, [mass, volume])]
    compared, record = compared_setting(results, default), None
    if compared is not None:
        (lis, bone), why = compared
        label = f"lambda_is={lis:g}, L_B={bone}"
        rows_anova = anova(results[(lis, bone)], results[BASELINE])
        differences = mean_pcc_differences(results[(lis, bone)], results[BASELINE], "the baseline")
        record = {"lambda_is": lis, "bone_loss": bone, "chosen": why, "rows": rows_anova,
                  "mean_pcc_difference": differences}
        default_diverged = any((r["lambda_is"], r["bone_loss"]) == default and r.get("diverged") for r in rows)
        what = ("the config's default setting" if why == "default" else
                "the best setting by muscle-mean lean-mass PCC, chosen on these same held-out cases "
                f"(the default setting {'diverged' if default_diverged else 'was not run'})")
        sections.append(Section(f"{why.capitalize()} setting vs baseline",
                                f"One-way ANOVA of the absolute errors: {what} ({label}) against the baseline. "
                                + difference_text(differences, label, "the baseline")
                                + (" Chosen as the best on these cases, it is favoured by the choice." if why == "best"
                                   else ""),
                                [anova_table(rows_anova, label, "baseline")]))
    sections.append(environment_section())
    write_csv(out / "ablation_mass_pcc.csv", mass)
    write_csv(out / "ablation_volume_pcc.csv", volume)
    write_json(out / "ablation.json", {"format": "mskdex-ablation", "version": 1, "k": k,
                                       "fold": fold, "rows": rows, "anova": record, "environment": environment()})
    write_markdown(out / "ablation.md", "MSKdeX ablation", sections)
    return write_html(out / "report.html", "MSKdeX ablation", sections)


def print_table2(rows: list[dict]) -> str:
    """Table 2 (mass PCC) as Markdown text for the terminal."""
    return markdown(table2(rows, "mass"))
