"""Calibrated prediction intervals: the conformal quantile, the calibration file and its checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from MSKdeXTraining.calibration import conformal_quantile, fit_calibration, interval, log_errors
from MSKdeXTraining.errors import InputError


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    errors = np.random.default_rng(0).permutation(np.arange(1, 20) / 10.0)  # 0.1 ... 1.9, n = 19
    assert conformal_quantile(errors, 0.9) == pytest.approx(1.8)   # ceil(20 x 0.9) = 18th smallest
    assert conformal_quantile(errors, 0.5) == pytest.approx(1.0)   # ceil(20 x 0.5) = 10th
    assert conformal_quantile(errors[:8], 0.9) is None             # ceil(9 x 0.9) = 9 > 8 cases
    assert conformal_quantile([0.1] * 9 + [np.inf], 0.9) is None   # the 10th is infinite: no interval


def test_log_errors_and_interval():
    np.testing.assert_allclose(log_errors([100.0, 50.0, 0.0, 10.0], [150.0, 25.0, 5.0, -1.0]),
                               [math.log(1.5), math.log(2.0), np.inf, np.inf])
    low, high = interval(200.0, math.log(1.5))
    assert (low, high) == (pytest.approx(200.0 / 1.5), pytest.approx(300.0))
    assert interval(200.0, None) == (None, None)


def test_intervals_cover_new_cases_at_their_level():
    """Split conformal: calibrated on one half of exchangeable cases, the intervals hold the
    truth of the other half in about 90 % of cases (averaged over many splits)."""
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(400):
        true = rng.uniform(200, 2000, 40)
        pred = true * np.exp(rng.normal(0, 0.3, 40))
        doc = {"objects": ["m"], "weights_sha256": "sha",
               "cases": [{"id": str(i), "volume_true_cm3": [t], "volume_pred_cm3": [p], "mass_true_g": [t],
                          "mass_pred_g": [p]} for i, (t, p) in enumerate(zip(true[:20], pred[:20]))]}
        q = fit_calibration(doc)["objects"]["m"]["mass_log_q"]
        covered.append(np.mean(np.abs(np.log(pred[20:] / true[20:])) <= q))
    assert 0.88 <= np.mean(covered) <= 0.94  # expected (ceil(21 x 0.9) = 19) / 21 = 0.905


def test_intervals_cover_every_film_of_a_new_patient_at_their_level():
    """Two films per patient share the patient's error: calibrated over 12 held-out patients
    (each counted once, by their larger error), the intervals hold the truth of both films of a
    new patient in about 12/13 of patients; counting the 24 films as exchangeable would cover
    both films of only about 88 %."""
    rng = np.random.default_rng(2)
    covered, case_wise = [], []
    for _ in range(400):
        true = rng.uniform(200, 2000, (24, 1)).repeat(2, axis=1)
        errors = rng.normal(0, 0.3, (24, 1)) + rng.normal(0, 0.1, (24, 2))
        pred = true * np.exp(errors)
        doc = {"objects": ["m"], "weights_sha256": "sha",
               "cases": [{"id": f"{p}_{j}", "patient": f"p{p}", "volume_true_cm3": [true[p, j]],
                          "volume_pred_cm3": [pred[p, j]], "mass_true_g": [true[p, j]],
                          "mass_pred_g": [pred[p, j]]} for p in range(12) for j in range(2)]}
        calibration = fit_calibration(doc)
        assert calibration["held_out_patients"] == 12 and calibration["objects"]["m"]["n"] == 24
        covered.append(np.mean((np.abs(errors[12:]) <= calibration["objects"]["m"]["mass_log_q"]).all(axis=1)))
        for c in doc["cases"]:
            c["patient"] = c["id"]
        q = fit_calibration(doc)["objects"]["m"]["mass_log_q"]
        case_wise.append(np.mean((np.abs(errors[12:]) <= q).all(axis=1)))
    assert 0.90 <= np.mean(covered) <= 0.95  # expected ceil(13 x 0.9) / 13 = 0.923
    assert np.mean(case_wise) < 0.89


def test_a_calibration_of_other_weights_or_objects_is_refused(tmp_path):
    from MSKdeXTraining.calibration import read_calibration
    from MSKdeXTraining.fileio import write_json

    doc = {"objects": ["m"], "weights_sha256": "abc", "cases": [
        {"id": "a", "volume_true_cm3": [1.0], "volume_pred_cm3": [1.1], "mass_true_g": [1.0], "mass_pred_g": [0.9]}]}
    calibration = fit_calibration(doc)
    write_json(tmp_path / "calibration.json", calibration)
    assert read_calibration(tmp_path, "abc", ["m"])["objects"]["m"]["n"] == 1
    with pytest.raises(InputError, match="calibration.json: field 'weights_sha256' is 'abc'.*another model"):
        read_calibration(tmp_path, "def", ["m"])
    with pytest.raises(InputError, match="calibration.json: field 'objects' must map"):
        read_calibration(tmp_path, "abc", ["m", "n"])
    for bad in (-0.1, float("inf"), True, "0.2"):  # q is null or a finite number >= 0
        calibration["objects"]["m"]["mass_log_q"] = bad
        (tmp_path / "calibration.json").write_text(json.dumps(calibration))
        with pytest.raises(InputError, match="each null or a finite number >= 0"):
            read_calibration(tmp_path, "abc", ["m"])
    for bad in (0, 2, True, 1.0):  # one held-out case: one patient
        (tmp_path / "calibration.json").write_text(json.dumps({**fit_calibration(doc), "held_out_patients": bad}))
        with pytest.raises(InputError, match="field 'held_out_patients' must be a count from 1 to the number"):
            read_calibration(tmp_path, "abc", ["m"])
    from MSKdeXTraining.calibration import held_out_patients

    del calibration["held_out_patients"]  # written before 0.3.5: each case calibrated as a patient
    write_json(tmp_path / "calibration.json", calibration | {"objects": fit_calibration(doc)["objects"]})
    assert held_out_patients(read_calibration(tmp_path, "abc", ["m"])) == 1
    del calibration["held_out_ids"]
    write_json(tmp_path / "calibration.json", calibration)
    with pytest.raises(InputError, match="held_out_ids"):
        read_calibration(tmp_path, "abc", ["m"])
    assert read_calibration(tmp_path / "none", "abc", ["m"]) is None


def test_calibrating_with_predictions_of_other_weights_is_refused(tmp_path):
    from MSKdeXTraining.calibration import write_calibration

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(InputError, match="made by weights 'old', not by this run's"):
        write_calibration(tmp_path, {"weights_sha256": "old", "objects": [], "cases": []})
    assert not (tmp_path / "calibration.json").exists()


def test_a_null_prediction_is_an_infinite_error():
    """predictions.json holds a non-finite prediction as null: never inside an interval."""
    cases = [{"id": str(i), "volume_true_cm3": [100.0], "volume_pred_cm3": [100.0 + i], "mass_true_g": [100.0],
              "mass_pred_g": [100.0 + i]} for i in range(10)]
    doc = {"objects": ["m"], "weights_sha256": "sha", "cases": cases}
    assert fit_calibration(doc)["objects"]["m"]["mass_log_q"] == pytest.approx(math.log(1.09))
    cases[0]["mass_pred_g"] = [None]
    assert fit_calibration(doc)["objects"]["m"]["mass_log_q"] is None  # the 10th smallest error is infinite


def test_a_calibration_of_an_implausible_level_or_without_a_case_list_is_refused(tmp_path):
    """read_calibration holds 'level' to a coverage (a float) from 0.5 to 0.99 and
    'held_out_ids' to a list; 9 held-out patients are the fewest that give a 90 % interval."""
    import re

    from MSKdeXTraining.calibration import min_patients, read_calibration
    from MSKdeXTraining.fileio import write_json

    assert (min_patients(0.9), min_patients(0.5)) == (9, 1)
    doc = {"objects": ["m"], "weights_sha256": "abc", "cases": [
        {"id": "a", "volume_true_cm3": [1.0], "volume_pred_cm3": [1.1], "mass_true_g": [1.0], "mass_pred_g": [0.9]}]}
    calibration = fit_calibration(doc)
    for level in (0.3, 1.0, 1, "0.9"):
        write_json(tmp_path / "calibration.json", {**calibration, "level": level})
        message = f"field 'level' must be a coverage from 0.5 to 0.99, got {level!r}"
        with pytest.raises(InputError, match=re.escape(message)):
            read_calibration(tmp_path, "abc", ["m"])
    write_json(tmp_path / "calibration.json", {**calibration, "held_out_ids": "a"})
    with pytest.raises(InputError, match="field 'held_out_ids' must be a list of case ids"):
        read_calibration(tmp_path, "abc", ["m"])
    write_json(tmp_path / "calibration.json", {**calibration, "level": 0.5})
    assert read_calibration(tmp_path, "abc", ["m"])["level"] == 0.5
