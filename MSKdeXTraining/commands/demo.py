"""``mskdex demo``: the whole pipeline on bundled anatomy, with a held-out evaluation report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import positive_int, progress_bar
from .evaluate import add_training_arguments

HELP = ("End-to-end demo: synthetic cohort from the bundled anatomy -> prepare -> train the small "
        "configuration -> evaluate on held-out patients -> table and HTML report (resumable)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cohort.generate import SIZES

    parser.add_argument("--out", type=Path, default=Path("mskdex-demo"),
                        help="demo folder; re-running with the same folder continues")
    parser.add_argument("--n", type=int, default=96, help="number of synthetic patients")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo",
                        help="cohort resolution preset (mskdex cohort --help)")
    parser.add_argument("--workers", type=positive_int, help="processes for cohort and prepare (default: all cores)")
    parser.add_argument("--registration", choices=("accurate", "fast"), default="accurate",
                        help="bone registration preset used by prepare (fast: fewer evaluations)")
    parser.add_argument("--dataset-px", type=positive_int, default=128,
                        help="prepared dataset detector size in pixels (same field of view)")
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.demo import run_demo
    from ..training.config import parse_overrides
    from ..evaluation.summary import print_table

    t0 = time.perf_counter()
    with progress_bar("demo") as bar:
        preds = run_demo(args.out, args.n, args.seed, args.config, args.k, args.size, args.workers,
                         parse_overrides(args.overrides), args.registration, args.dataset_px, progress=bar)
    print(print_table(preds))
    print(f"report: {args.out / 'evaluation' / 'report.html'} ({time.perf_counter() - t0:.0f} s)")
    return 0
