"""``mskdex ablation``: lambda_is x bone loss on one held-out fold (paper Table 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import positive_int, progress_bar
from .evaluate import add_training_arguments

HELP = ("Ablation of the OWIS weight lambda_is and the aligned-bone loss on one held-out fold; "
        "writes the paper's Table 2 layout (PCC per object) and an HTML report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset (mskdex prepare)")
    parser.add_argument("--out", required=True, type=Path, help="ablation folder (one sub-folder per setting)")
    add_training_arguments(parser)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 100.0, 1000.0],
                        help="values of lambda_is (OWIS loss weight)")
    parser.add_argument("--bone-loss", choices=("both", "on", "off"), default="both",
                        help="with and/or without the aligned-bone loss L_B")
    parser.add_argument("--fold", type=int, default=0, help="held-out fold (0-based)")
    parser.add_argument("--workers", type=positive_int, help="parallel training processes (default: one per core, at most one per setting)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..evaluation.ablation import ablation, print_table2
    from ..training.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    for key, option in (("lambda_is", "--lambdas"), ("bone_loss", "--bone-loss")):
        if key in overrides:
            raise InputError(f"--set {key}: the ablation trains the {option} values; put the value there "
                             f"(to choose the setting compared with the baseline, set {key} in a --config file)")
    bone = {"both": (False, True), "on": (True,), "off": (False,)}[args.bone_loss]
    with progress_bar("ablation") as bar:
        rows = ablation(args.data, args.out, args.config, tuple(args.lambdas), bone, args.k,
                        args.fold, args.workers, overrides, progress=bar)
    print(print_table2(rows))
    print(f"report: {args.out / 'report.html'}")
    return 0
