"""``mskdex calibrate``: the prediction intervals of a model from its held-out cases."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import progress_bar

HELP = ("Calibrate a model's prediction intervals: predict the cases it held out (trained with "
        "--fold k/K) and write RUN/calibration.json, which decompose turns into 90 % intervals")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model run folder (mskdex train --fold k/K)")
    parser.add_argument("--data", required=True, type=Path, help="the prepared dataset it was trained on")
    parser.add_argument("--device", default="auto", help="torch device: auto (as training), cpu, cuda or cuda:K")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.crossval import calibrate_run
    from ..training.distributed import pick_device

    with progress_bar("calibrate") as bar:
        path = calibrate_run(args.model, args.data, progress=bar, device=pick_device(args.device))
    print_calibration(path)
    return 0


def print_calibration(path: Path) -> None:
    """Print a calibration file's interval factors, per object."""
    import json
    import math

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    print(f"wrote {path}: {len(doc['held_out_ids'])} held-out cases of {doc['held_out_patients']} patients; "
          f"{100 * doc['level']:.0f} % interval of a prediction p: p ×/÷ f")
    factor = lambda q: "n/a (too few patients)" if q is None else f"f = {math.exp(q):.2f}"
    for name, o in doc["objects"].items():
        print(f"  {name:22s} mass {factor(o['mass_log_q']):>20s}   volume {factor(o['volume_log_q']):>20s}")
