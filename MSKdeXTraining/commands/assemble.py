"""``mskdex assemble``: your own paired CTs and radiographs -> a cohort folder for ``mskdex prepare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import positive_int, progress_bar

HELP = ("Assemble your own paired CTs, label maps and radiographs (a CSV table) into a cohort folder "
        "with ground truth from the CT (layout mskdex-cohort v1), ready for mskdex prepare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path,
                        help="CSV table, one row per radiograph: case, ct, labels, xray [, patient, sdd_mm, "
                             "sod_mm, pixel_spacing_mm]; paths relative to the table's folder")
    parser.add_argument("--objects", required=True,
                        help="object map of the label maps: a built-in name or a JSON file (it must name "
                             "the pelvis and the femur with sides)")
    parser.add_argument("--out", required=True, type=Path,
                        help="cohort folder to write: new, empty, or one that assemble wrote (resumed)")
    parser.add_argument("--workers", type=positive_int, default=None, help="parallel processes (default: all cores)")


def run(args: argparse.Namespace) -> int:
    import json

    from ..cohort.assemble import assemble_cohort
    from ..fileio import refuse_overwrite

    refuse_overwrite(args.out, [args.pairs])
    with progress_bar("assemble") as progress:
        made = assemble_cohort(args.pairs, args.objects, args.out, args.workers, progress)
    meta = json.loads((args.out / "cohort.json").read_text(encoding="utf-8"))
    kept = len(meta["cases"]) - len(made)
    print(f"cohort of {len(meta['cases'])} cases ({len(set(meta['patients'].values()))} patients) in {args.out}: "
          f"{len(made)} made" + (f", {kept} kept as an earlier run made them" if kept else "")
          + f"; next: mskdex prepare --cohort {args.out} --out DATASET")
    return 0
