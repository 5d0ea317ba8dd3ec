"""``mskdex evaluate``: K-fold cross-validation by patient with the paper's metrics and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import progress_bar

HELP = ("K-fold cross-validation (split by patient) on a prepared dataset: per-object PCC, "
        "ICC(2,1), MAE of mass (g) and volume (cm3), bone PSNR/SSIM, figures, HTML report")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by evaluate, ablation and demo."""
    parser.add_argument("--config", default="small", help="training config: built-in name or YAML/JSON file")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. epochs=20 lambda_is=100")
    parser.add_argument("--k", type=int, default=4, help="number of cross-validation folds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset (mskdex prepare)")
    parser.add_argument("--out", required=True, type=Path,
                        help="evaluation folder (fold runs, predictions, tables, figures, report.html)")
    add_training_arguments(parser)
    parser.add_argument("--folds", type=int, nargs="+", metavar="I",
                        help="train/predict only these folds (0-based; default all K); the report pools "
                             "every finished fold in --out made with the same config, K and dataset")
    parser.add_argument("--compare", type=Path,
                        help="another evaluation folder (same objects, shared held-out cases; checked "
                             "before training): one-way ANOVA of the absolute errors per object")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.crossval import evaluate
    from ..training.config import parse_overrides
    from ..evaluation.summary import print_table

    with progress_bar("evaluate") as bar:
        preds = evaluate(args.data, args.out, args.config, parse_overrides(args.overrides), args.k,
                         args.folds, args.compare, progress=bar)
    print(print_table(preds))
    print(f"report: {args.out / 'report.html'}")
    return 0
