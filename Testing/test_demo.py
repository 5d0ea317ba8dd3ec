"""A tiny end-to-end demo: cohort -> prepare -> train -> held-out evaluation, then resume."""

from __future__ import annotations

import pytest

from MSKdeXTraining.evaluation.demo import run_demo

from test_inference import tiny_config


@pytest.mark.slow
def test_tiny_demo_end_to_end_and_resume(tmp_path):
    config = tiny_config(tmp_path, epochs=1, image_size=32)
    out = tmp_path / "demo"
    preds = run_demo(out, n=4, seed=3, config=config, k=2, size="test", workers=2)
    assert len(preds.ids) == 2 and preds.mass_pred.shape == (2, 9)
    html = (out / "evaluation" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    model = out / "evaluation" / "fold_0" / "run" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    again = run_demo(out, n=4, seed=3, config=config, k=2, size="test", workers=2)
    assert model.stat().st_mtime_ns == stamp and again.ids == preds.ids
    assert (again.mass_pred == preds.mass_pred).all()
