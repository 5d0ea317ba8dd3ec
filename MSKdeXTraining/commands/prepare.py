"""``mskdex prepare``: a cohort -> a training dataset (layout ``mskdex-dataset`` v2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import positive_int, progress_bar

HELP = ("Prepare a cohort for training: segmentation QC, bone registration, object-wise DRRs "
        "(default AP pose), aligned bone DRRs (registered poses), resampled radiographs; "
        "parallel, resumable, shardable")


#: Excluded cases listed with their reasons after a run (the manifest lists them all).
SHOWN_EXCLUDED = 20


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..imaging.registration import PRESETS

    parser.add_argument("--cohort", type=Path, help="cohort folder (written by `mskdex cohort` or `mskdex assemble`)")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=int, metavar="PX",
                      help="square dataset detector (pixels), same field of view as the radiographs "
                           "(default: the first radiograph's detector, at most 512 pixels a side)")
    size.add_argument("--rows", type=int, help="dataset detector rows (with --cols)")
    parser.add_argument("--cols", type=int, help="dataset detector columns (with --rows)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                        help="prepare only cases with index %% N == I (for cluster jobs; default: 0/1, all)")
    parser.add_argument("--workers", type=positive_int, help="processes (default: all cores)")
    parser.add_argument("--include-failed", action="store_true",
                        help="keep cases failing segmentation QC or registration (reasons stay "
                             "in the manifest); objects off the detector still exclude a case")
    parser.add_argument("--preset", default="accurate", choices=PRESETS,
                        help="registration settings: accurate or fast")
    parser.add_argument("--merge", action="store_true",
                        help="only rebuild manifest.json from the case files of all shards")


def run(args: argparse.Namespace) -> int:
    from ..imaging.registration import RegistrationSettings
    from ..errors import InputError
    from ..fileio import read_json_object
    from ..prepare import dataset_geometry, merge_manifest, prepare_dataset

    if args.merge:
        path = merge_manifest(args.out, args.cohort)
        print(f"wrote {path}")
        return 0
    if args.cohort is None:
        raise InputError("--cohort is required (unless --merge)")
    if (args.rows is None) != (args.cols is None):
        raise InputError("--rows and --cols go together; or use --image-size")
    for option in ("image_size", "rows", "cols"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise InputError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    rows = args.image_size if args.image_size is not None else args.rows
    cols = args.image_size if args.image_size is not None else args.cols
    geometry = dataset_geometry(args.cohort, rows, cols)
    with progress_bar("preparing") as progress:
        out = prepare_dataset(args.cohort, args.out, geometry, args.shard, args.workers,
                              args.include_failed, progress,
                              RegistrationSettings.preset(args.preset))
    manifest = out / "manifest.json"
    if manifest.is_file():
        rebuild = f"rebuild it from the case entries: mskdex prepare --merge --out {out}"
        try:
            written = read_json_object(manifest, ("counts", "cases"))
        except InputError as e:
            raise InputError(f"{e}; {rebuild}") from None
        counts, cases = written["counts"], written["cases"]
        if not (isinstance(counts, dict) and all(isinstance(counts.get(k), int) for k in ("ok", "excluded", "cases"))
                and isinstance(cases, list) and all(isinstance(c, dict) for c in cases)):
            raise InputError(f"{manifest}: fields 'counts' (ok, excluded, cases) or 'cases' are not as prepare "
                             f"writes them (edited by hand?); {rebuild}")
        kept = sum(bool(c.get("status") == "ok" and c.get("reasons")) for c in cases)
        failing = (f" ({kept} of them failing QC or registration, kept by --include-failed: see their "
                   "'reasons' there)" if kept else "")
        print(f"wrote {manifest}: {counts['ok']} ok{failing}, {counts['excluded']} excluded of {counts['cases']}")
        excluded = [c for c in cases if c.get("status") == "excluded"]
        for c in excluded[:SHOWN_EXCLUDED]:
            print(f"  excluded {c.get('id')}: {'; '.join(map(str, c.get('reasons') or ['no reason recorded']))}")
        if len(excluded) > SHOWN_EXCLUDED:
            print(f"  ... and {len(excluded) - SHOWN_EXCLUDED} more excluded: their 'reasons' in {manifest}")
        if not counts["ok"]:  # nothing to train on: an error, the manifest kept for its reasons
            raise InputError(f"{manifest}: none of the {counts['cases']} case(s) was prepared ok; each case's "
                             "'reasons' there say why")
    else:
        print(f"shard {args.shard[0]}/{args.shard[1]} done in {out}; the manifest is written when "
              "all shards are (or run `mskdex prepare --merge --out DATASET`)")
    return 0
