"""A tiny end-to-end demo: cohort -> prepare -> train -> held-out evaluation, then resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MSKdeXTraining.evaluation.demo import run_demo

from test_inference import tiny_config


@pytest.mark.slow
def test_tiny_demo_end_to_end_and_resume(tmp_path):
    config = tiny_config(tmp_path, epochs=1, image_size=32)
    out = tmp_path / "demo"
    preds = run_demo(out, n=4, seed=3, config=config, k=2, size="test", workers=2)
    assert len(preds.ids) == 2 and preds.mass_pred.shape == (2, 9)
    assert np.isfinite(preds.mass_pred).all() and (preds.mass_pred > 0).all() and (preds.volume_pred > 0).all()
    # the truth is the cohort's 3D CT truth, and the scored cases are the ones the model held out
    for i, case in enumerate(preds.ids):
        truth = json.loads((out / "cohort" / case / "truth.json").read_text())["objects"]
        np.testing.assert_allclose(preds.mass_true[i], [truth[n]["mass_g"] for n in preds.names], rtol=1e-12)
    split = json.loads((out / "evaluation" / "fold_0" / "run" / "model.json").read_text())["split"]
    assert sorted(split["test_ids"]) == sorted(preds.ids) and not set(preds.ids) & set(split["train_ids"])
    html = (out / "evaluation" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    stamped = [out / "evaluation" / "fold_0" / "run" / "model.safetensors", out / "dataset" / "manifest.json",
               *sorted((out / "cohort").glob("*/truth.json"))]
    stamps = [p.stat().st_mtime_ns for p in stamped]
    again = run_demo(out, n=4, seed=3, config=config, k=2, size="test", workers=2)
    assert [p.stat().st_mtime_ns for p in stamped] == stamps and again.ids == preds.ids  # nothing redone
    assert (again.mass_pred == preds.mass_pred).all()
