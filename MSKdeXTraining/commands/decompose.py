"""``mskdex decompose``: a radiograph (or a folder of them) -> object-wise DRRs, volumes, masses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import progress_bar

HELP = ("Decompose radiographs with a trained model: per-object DRR stacks, volume (cm3), "
        "lean muscle / bone mass (g), a 90 % interval from the model's held-out errors (calibration.json, "
        "written by `mskdex train --fold`, `mskdex evaluate` or `mskdex calibrate`), the spread over test-time augmentations and an "
        "out-of-distribution flag")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..dicom_radiograph import HIP_ABOVE_TABLE_MM

    parser.add_argument("--model", required=True, type=Path, help="model run folder (mskdex train)")
    parser.add_argument("--xray", required=True, type=Path,
                        help="radiograph file (DICOM DX/CR, NIfTI/NRRD/MHA, PNG/JPEG/TIFF/BMP) or a folder of them")
    parser.add_argument("--out", type=Path, default=Path("decomposition"),
                        help="output folder (in folder mode: one sub-folder per radiograph and all their "
                             "tables in decompositions.csv)")
    parser.add_argument("--recursive", action="store_true",
                        help="folder mode: read the sub-folders too (a PACS export's PATIENT/STUDY/SERIES "
                             "tree); results mirror the tree under --out")
    spacing = parser.add_mutually_exclusive_group()
    spacing.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM",
                         help="detector pixel spacing in mm (one value, or row and column) for every "
                              "file, over the file's own value; PNG/JPEG/TIFF/BMP and files without a "
                              "usable spacing need it or --pixel-spacing-if-missing")
    spacing.add_argument("--pixel-spacing-if-missing", type=float, nargs="+", metavar="MM",
                         help="as --pixel-spacing, but only for the files without a usable spacing "
                              "(none, or a placeholder); the others keep their own")
    parser.add_argument("--magnification", type=float, metavar="M",
                        help="magnification at the hips, SDD / SOD, 1-2 (default: from the file: DICOM "
                             f"(0018,1114), else (0018,1110) / ((0018,1111) - {HIP_ABOVE_TABLE_MM:g} mm), "
                             "else a calibrated PixelSpacing; a cohort film's sidecar; else the model's "
                             "reference, noted)")
    parser.add_argument("--tta", type=int, default=8,
                        help="test-time augmentations for the TTA SD columns, the model's sensitivity "
                             "(1 = none, at most 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    parser.add_argument("--device", default="auto", help="torch device: auto (the GPU if any), cpu, cuda or cuda:K")


def _inputs(path: Path, recursive: bool = False, out: Path | None = None) -> list[Path]:
    """The radiograph files of ``path``: itself, or a folder's (hidden files, the DRR stacks of
    earlier results (``decomposition_<type>.nii.gz``) and, with ``recursive``, the output folder
    ``out`` when it lies inside, left out; an ``out`` that is the folder or holds it is refused
    then, as its results would be read back)."""
    from ..errors import InputError
    from ..inference import output_files
    from ..radiograph_formats import SUFFIXES, is_radiograph_file

    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        skip = out.resolve() if recursive and out is not None else None
        if skip is not None and path.resolve().is_relative_to(skip):
            raise InputError(f"--out {out}: is or holds the input folder {path}; with --recursive the results "
                             "would be read back as radiographs: choose an output folder outside it, "
                             "or a sub-folder of it")
        results = {f.name for f in output_files(Path()).values()}
        files = sorted(p for p in found if p.is_file() and is_radiograph_file(p) and p.name not in results
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)
                       and not (skip and p.resolve().is_relative_to(skip)))
        if not files:
            hint = ("" if recursive or not any(p.is_dir() for p in path.iterdir())
                    else "; it has sub-folders: --recursive reads them too")
            raise FileNotFoundError(f"{path}: folder holds no radiograph files "
                                    f"({', '.join(s for s in SUFFIXES if s)}, or DICOM without a suffix){hint}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    return [path]


def _check_out(out: Path) -> None:
    """Before any work: refuse an ``--out`` that is, or lies under, an existing file."""
    from ..errors import InputError
    from ..fileio import blocking_file

    blocking = blocking_file(out)
    if blocking is not None:
        raise InputError(f"--out {out}: {'it' if blocking == out else blocking} is a file; expected a folder "
                         "(new or existing) for the results")


def run(args: argparse.Namespace) -> int:
    from ..batch import BATCH_TABLE, decompose_file, decompose_files, write_batch_table
    from ..fileio import refuse_other_kind, refuse_overwrite
    from ..inference import Decomposer, check_seed, check_tta, output_files
    from ..radiograph_io import check_magnification, explicit_spacing

    check_tta(args.tta, "--tta")
    check_seed(args.seed, "--seed")
    if args.magnification is not None:
        check_magnification(args.magnification, "--magnification", "give the film's SDD / SOD at the hips")
    spacing = explicit_spacing(args.pixel_spacing)
    missing = explicit_spacing(args.pixel_spacing_if_missing, "--pixel-spacing-if-missing")
    _check_out(args.out)
    refuse_other_kind(args.out, "decomposition")  # before the model is loaded
    single = args.xray.is_file()
    if single:
        for path in output_files(args.out).values():
            refuse_overwrite(path, [args.xray])
    decomposer = Decomposer.from_run(args.model, device=args.device)
    if single:
        summary, result = decompose_file(decomposer, args.xray, args.out, spacing, args.tta, args.seed,
                                         args.magnification, missing)
        if result is None:
            print(f"{args.out} already holds this decomposition of {args.xray} (same content, options "
                  "and model); nothing to do")
            return 0
        print(_format(result.table, (result.model["calibration"] or {}).get("level")))
        _print_ood(args.xray.name, result.ood.flag, result.ood.reasons)
        print(f"wrote {summary['files']['csv']}, {summary['files']['json']} and the DRR stacks in {args.out}")
        return 0
    files = _inputs(args.xray, args.recursive, args.out)
    with progress_bar("decompose") as bar:
        summaries = decompose_files(decomposer, files, args.out, spacing, args.tta, args.seed, bar,
                                    args.magnification, args.xray if args.recursive else None, missing)
    earlier = (args.out / BATCH_TABLE).is_file()
    table = write_batch_table(summaries, args.out, args.xray)
    done = [s for s in summaries if "ood" in s]
    failed = [s for s in summaries if "error" in s]
    for s in done:
        _print_ood(str(Path(s["input"]).relative_to(args.xray)), s["ood"], s["reasons"])
    for s in failed:
        print(s.get("traceback", ""), end="", file=sys.stderr)  # a bug: where it arose
        print(f"mskdex decompose: error: {s['error']}", file=sys.stderr)
    if done:
        print(f"{len(done)} radiograph(s), {sum(s['seconds'] for s in done) / len(done):.2f} s each; "
              f"{sum(s['ood'] for s in done)} flagged out-of-distribution; results in {args.out}")
    skipped = [s for s in summaries if s.get("skipped")]
    if skipped:
        print(f"{len(skipped)} radiograph(s) already decomposed with these options and model in {args.out}: skipped")
    if table is not None:
        print(f"all their tables in {table}" + (" (not those of the files that could not be used)" if failed else ""))
    elif earlier:
        print(f"{args.out / BATCH_TABLE} removed: it listed an earlier run's results, not this run's (their "
              "folders are kept; that run's command, run again, skips them and writes the table again)",
              file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(summaries)} file(s) could not be used (listed above)", file=sys.stderr)
    return 2 if failed else 0


def _format(table: list[dict], level: float | None) -> str:
    def span(low: float | None, high: float | None) -> str:
        return f"{'-':>15s}" if low is None else f"{f'{low:.1f}-{high:.1f}':>15s}"

    def sd(value: float | None) -> str:
        return f"{'-':>7s}" if value is None else f"{value:7.1f}"

    head = f"{100 * level:.0f} % interval" if level else "interval"
    lines = [f"{'object':22s} {'kind':6s} {'volume cm3':>10s} {head:>15s} {'TTA SD':>7s}"
             f" {'mass g':>9s} {head:>15s} {'TTA SD':>7s}"]
    for r in table:
        lines.append(f"{r['object']:22s} {r['kind']:6s} {r['volume_cm3']:10.1f} "
                     f"{span(r['volume_low_cm3'], r['volume_high_cm3'])} {sd(r['volume_sd_cm3'])}"
                     f" {r['mass_g']:9.1f} {span(r['mass_low_g'], r['mass_high_g'])} {sd(r['mass_sd_g'])}")
    lines.append(f"interval: {100 * level:.0f} % prediction interval calibrated on the model's held-out cases "
                 "(calibration.json): marginal over patients, not for flagged films, without the error of an "
                 "assumed magnification or a hand-given spacing (see the notes)"
                 if level else "interval: none (the model has no calibration.json: see the note)")
    lines.append("TTA SD: spread over the test-time augmentations (--tta), the model's sensitivity, "
                 "not an error bar (docs/evaluation.md); - with --tta 1")
    return "\n".join(lines)


def _print_ood(name: str, flag: bool, reasons: list[str]) -> None:
    """The out-of-distribution warning (its reasons) and, flagged or not, the notes (assumed or
    user-given values, checks not made, missing intervals)."""
    from ..ood import split_notes

    flags, notes = split_notes(reasons)
    if flag:
        print(f"WARNING {name}: out-of-distribution - " + "; ".join(flags), file=sys.stderr)
    for note in notes:
        print(f"NOTE {name}: {note}", file=sys.stderr)
