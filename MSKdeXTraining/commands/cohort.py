"""``mskdex cohort``: generate a synthetic paired CT / X-ray cohort with known ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from . import positive_int, progress_bar

HELP = "Generate a synthetic cohort of paired CTs and radiographs (layout mskdex-cohort v1)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cohort.generate import SIZES

    parser.add_argument("--n", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (same seed, same bytes)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: new, empty, or a cohort of the same settings (resumed)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo",
                        help="resolution preset: " + "; ".join(
                            f"{k} = {v.ct_spacing_mm:g} mm CT, {v.detector_px}x{v.detector_px} "
                            f"detector at {v.pixel_mm:.2f} mm" for k, v in SIZES.items()))
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="parallel processes (default: all cores)")
    parser.add_argument("--templates", type=Path, nargs="+", default=None, metavar="DIR",
                        help="template folders (label map + template.json, see docs/cohort.md); "
                             "default: the bundled pelvic templates")


def run(args: argparse.Namespace) -> int:
    from ..cohort.generate import generate_cohort

    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    with progress_bar("cohort") as progress:
        out = generate_cohort(args.n, args.seed, args.out, args.size, args.workers,
                              args.templates, progress)
    print(f"cohort of {args.n} cases in {out}")
    return 0
