"""``mskdex train``: train the decomposition model on a prepared dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import progress_bar

HELP = "Train the decomposition model (G: radiograph -> object-wise DRRs) on a prepared dataset."


def parse_fold(text: str) -> tuple[int, int]:
    """``"k/K"`` -> (k, K) with 0 <= k < K (k counts from 0)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold must look like k/K (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < n or n < 2:
        raise argparse.ArgumentTypeError(f"--fold k/K needs K >= 2 and 0 <= k < K, got {text!r}")
    return k, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.config import builtin_configs

    parser.add_argument("--config", default="small",
                        help=f"built-in config {builtin_configs()} or a YAML/JSON file")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder (mskdex prepare)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (model + checkpoints)")
    parser.add_argument("--fold", type=parse_fold, default=None, metavar="k/K",
                        help="train on all folds but k of a K-fold split by patient (k from 0); the held-out "
                             "fold then calibrates the model's prediction intervals (calibration.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. epochs=10 lambda_is=0 bone_loss=false")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:K (overrides the config)")


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_config, parse_overrides
    from ..training.distributed import launched_rank, pick_device
    from ..training.trainer import train

    overrides = parse_overrides(args.set)
    if args.device:
        overrides["device"] = args.device
    config = load_config(args.config, overrides)
    with progress_bar("training") as progress:
        out = train(config, args.data, args.out, fold=args.fold, resume=args.resume, progress=progress)
    if launched_rank() != 0:  # under torchrun, rank 0 wrote the model and calibrates it
        return 0
    print(f"model written to {out / 'model.safetensors'} (+ model.json)")
    if args.fold is not None:
        # the held-out cases calibrate the model's prediction intervals (as `mskdex calibrate`)
        from ..evaluation.crossval import calibrate_run
        from .calibrate import print_calibration

        with progress_bar("calibrate") as bar:
            print_calibration(calibrate_run(out, args.data, progress=bar, device=pick_device(config.device)))
    return 0
