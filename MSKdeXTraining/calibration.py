"""Calibrated prediction intervals from a model's held-out errors (split conformal prediction).

``mskdex train --fold k/K`` (at its end), ``mskdex evaluate`` (for each fold's model) and ``mskdex
calibrate`` write ``RUN/calibration.json`` (format ``mskdex-calibration`` v1) from the model's
held-out cases: per object and quantity (volume, mass) the conformal
quantile ``q`` of the log error ``|ln(predicted / true)|`` at :data:`LEVEL`. A new prediction
``p`` then has the interval ``[p e^-q, p e^q]``, which holds the truth with probability at least
:data:`LEVEL` for a radiograph of a new patient drawn like the held-out ones (Vovk et al. 2005;
Angelopoulos & Bates 2021): not for one flagged out-of-distribution. The patients, not their
films, are what is exchangeable (the folds split by patient), so each held-out patient counts
once, with the largest error over their films (valid for each film of a new patient, Dunn et
al. 2022); with one film per patient that is the plain case-wise quantile. With ``n`` held-out
patients, ``q`` is the ``ceil((n + 1) LEVEL)``-th smallest error; with too few (``n < 9`` at
0.9) there is none. The file names the model weights it calibrates; :func:`read_calibration`
refuses another's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import file_sha256, read_format_json, write_json

FORMAT = "mskdex-calibration"
VERSION = 1
#: Coverage of the intervals.
LEVEL = 0.9
QUANTITIES = {"mass": ("mass_true_g", "mass_pred_g"), "volume": ("volume_true_cm3", "volume_pred_cm3")}


def conformal_quantile(errors: np.ndarray, level: float = LEVEL) -> float | None:
    """The ``ceil((n + 1) level)``-th smallest of ``n`` errors; None when that exceeds ``n`` or
    is infinite."""
    errors = np.sort(np.asarray(errors, float))
    k = math.ceil((len(errors) + 1) * level)
    return float(errors[k - 1]) if k <= len(errors) and np.isfinite(errors[k - 1]) else None


def min_patients(level: float = LEVEL) -> int:
    """The fewest held-out patients that give an interval at ``level`` (9 at 0.9)."""
    return next(n for n in range(1, 10**6) if math.ceil((n + 1) * level) <= n)


def log_errors(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``|ln(pred / true)|``; infinite where either is not positive (never inside an interval)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ok = (true > 0) & (pred > 0)
    return np.where(ok, np.abs(np.log(np.where(ok, pred, 1.0) / np.where(ok, true, 1.0))), np.inf)


def patient_max(errors: np.ndarray, patient: np.ndarray) -> np.ndarray:
    """Each patient's largest of ``errors`` (one per case; ``patient`` the case's patient index,
    0 to P - 1)."""
    largest = np.full(int(patient.max()) + 1 if len(patient) else 0, -np.inf)
    np.maximum.at(largest, patient, np.asarray(errors, float))
    return largest


def fit_calibration(predictions: dict, level: float = LEVEL) -> dict:
    """The calibration document of a predictions document (``mskdex-predictions``: held-out
    cases of the model whose weights' SHA-256 it records, each with its ``patient``; a case
    without one counts as its own patient)."""
    cases = predictions["cases"]
    patients, patient = np.unique([str(c.get("patient", f"case {c['id']}")) for c in cases], return_inverse=True)
    objects = {}
    for i, name in enumerate(predictions["objects"]):
        objects[name] = {"n": len(cases)}
        for quantity, (true_key, pred_key) in QUANTITIES.items():
            errors = log_errors([c[true_key][i] for c in cases], [c[pred_key][i] for c in cases])
            objects[name][f"{quantity}_log_q"] = conformal_quantile(patient_max(errors, patient), level)
    return {"format": FORMAT, "version": VERSION, "level": level,
            "weights_sha256": predictions["weights_sha256"],
            "method": "split conformal over patients: q = ceil((n + 1) level)-th smallest of the n held-out "
                      "patients' largest |ln(pred / true)| over their films; interval [p exp(-q), p exp(q)]",
            "held_out_ids": [c["id"] for c in cases], "held_out_patients": len(patients),
            "objects": objects}


def write_calibration(run: str | Path, predictions: dict) -> Path:
    """Write ``run/calibration.json`` from the held-out predictions of the model in ``run``
    (refused for predictions made by other weights), atomically."""
    run = Path(run)
    weights = file_sha256(run / "model.safetensors")
    if predictions.get("weights_sha256") != weights:
        raise InputError(f"{run}: the predictions to calibrate with were made by weights "
                         f"{predictions.get('weights_sha256')!r}, not by this run's ({weights!r})")
    return write_json(run / "calibration.json", fit_calibration(predictions))


def read_calibration(run: str | Path, weights_sha256: str, names: list[str]) -> dict | None:
    """``run/calibration.json`` checked against the model (its weights' SHA-256 and objects),
    with the file's own ``sha256`` added; None when the run has none."""
    path = Path(run) / "calibration.json"
    if not path.is_file():
        return None
    doc = read_format_json(path, FORMAT, VERSION, ("level", "weights_sha256", "objects", "held_out_ids"))
    if doc["weights_sha256"] != weights_sha256:
        raise InputError(f"{path}: field 'weights_sha256' is {doc['weights_sha256']!r}, but "
                         f"model.safetensors has {weights_sha256!r}: it calibrates another model (trained "
                         "on since?); re-run `mskdex calibrate` (or `mskdex evaluate` on the evaluation "
                         "holding this run), which predicts its held-out cases again, or delete calibration.json")
    objects = doc["objects"]
    if not isinstance(objects, dict) or sorted(objects) != sorted(names) or not all(
            isinstance(objects[n], dict) and all(_is_log_q(objects[n].get(f"{q}_log_q")) for q in QUANTITIES)
            for n in names):
        raise InputError(f"{path}: field 'objects' must map each of the model's objects {names} to "
                         "its 'volume_log_q' and 'mass_log_q', each null or a finite number >= 0")
    if not (isinstance(doc["level"], float) and 0.5 <= doc["level"] <= 0.99):
        raise InputError(f"{path}: field 'level' must be a coverage from 0.5 to 0.99, got {doc['level']!r}")
    if not isinstance(doc["held_out_ids"], list):
        raise InputError(f"{path}: field 'held_out_ids' must be a list of case ids")
    patients, cases = doc.get("held_out_patients"), len(doc["held_out_ids"])
    if "held_out_patients" in doc and not (isinstance(patients, int) and not isinstance(patients, bool)
                                           and min(cases, 1) <= patients <= cases):
        raise InputError(f"{path}: field 'held_out_patients' must be a count from 1 to the number of "
                         f"held-out cases ({cases}), got {patients!r}")
    return {**doc, "sha256": file_sha256(path)}


def held_out_patients(calibration: dict) -> int:
    """How many held-out patients calibrate ``calibration``; a file written before 0.3.5 counted
    its cases (each case then calibrated as its own patient)."""
    return calibration.get("held_out_patients", len(calibration["held_out_ids"]))


def _is_log_q(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value) and value >= 0)


def interval(value: float, log_q: float | None) -> tuple[float | None, float | None]:
    """``(value e^-q, value e^q)``; (None, None) without a quantile."""
    if log_q is None:
        return None, None
    return value * math.exp(-log_q), value * math.exp(log_q)
