"""``mskdex drr``: a CT and its label map -> object-wise WVDRR / VDRR / MDRR stacks + metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import progress_bar

HELP = ("Render the object-wise DRRs (WVDRR, VDRR cm, MDRR g/cm2) of a CT and its label map; "
        "writes wvdrr/vdrr/mdrr.nrrd and metrics.json (volume cm3, mass g: 3D vs DRR sums)")
#: Segmentation QC flags shown beside the sums (volume flags show as "implausible volume").
QC_FLAGS = ("metal", "sides_swapped", "truncated", "fragmented", "holes")


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    """Detector and X-ray geometry options (mm); defaults are those of ``Geometry()``."""
    from ..imaging.geometry import Geometry

    d = Geometry()
    group = parser.add_argument_group("geometry (mm)")
    group.add_argument("--rows", type=int, default=d.rows, help="detector rows (pixels)")
    group.add_argument("--cols", type=int, default=d.cols, help="detector columns (pixels)")
    group.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM",
                       default=list(d.pixel_spacing),
                       help="detector pixel spacing in mm: one value, or row and column")
    group.add_argument("--sdd", type=float, default=d.sdd, help="source-to-detector distance (mm)")
    group.add_argument("--sod", type=float, default=d.sod, help="source-to-isocentre distance (mm)")
    group.add_argument("--parallel", action="store_true", help="parallel-beam projection")


def geometry_from_args(args: argparse.Namespace):
    """The :class:`Geometry` described by :func:`add_geometry_arguments` options."""
    from ..errors import InputError
    from ..imaging.geometry import Geometry
    from ..radiograph_io import explicit_spacing

    try:
        return Geometry(rows=args.rows, cols=args.cols,
                        pixel_spacing=explicit_spacing(args.pixel_spacing),
                        sdd=args.sdd, sod=args.sod, parallel=args.parallel)
    except ValueError as e:
        raise InputError(f"geometry options: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path,
                        help="CT in HU (NIfTI, NRRD, MHA, ... or a DICOM series folder)")
    parser.add_argument("--labels", required=True, type=Path, help="label map on the CT grid")
    parser.add_argument("--objects", required=True,
                        help="object map of the label values: a JSON file or a built-in name (synthetic: "
                             "`mskdex cohort`'s labels; pelvic_reference, totalsegmentator)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--resample-labels", action="store_true",
                        help="resample the labels onto the CT grid (nearest neighbour) when the "
                             "grids differ, instead of refusing")
    parser.add_argument("--per-side", action="store_true",
                        help="render left and right of objects that declare sides as two objects")
    parser.add_argument("--device", default="auto", help="torch device: auto (the GPU if any), cpu, cuda or cuda:K")
    add_geometry_arguments(parser)


def run(args: argparse.Namespace) -> int:

    from ..drr import drr_from_files
    from ..training.distributed import pick_device

    geometry = geometry_from_args(args)
    with progress_bar("projecting", leave=False) as progress:
        result = drr_from_files(args.ct, args.labels, args.out, args.objects, geometry,
                                resample=args.resample_labels, per_side=args.per_side,
                                device=pick_device(args.device), progress=progress)
    m = result.metrics
    print(f"{'object':24s} {'volume cm3 (3D / DRR)':>24s} {'mass g (3D / DRR)':>22s}  flags")
    for r in m["objects"]:
        lost = 100 * r["lost_fraction"]["vdrr"]
        flags = [f for f, on in (("absent", r["absent"]),
                                 (f"outside FOV {f'{lost:.2f}' if lost >= 0.01 else '< 0.01'} %", lost > 0),
                                 ("implausible volume", r["implausible_volume"])) if on]
        flags += [f for f in m["qc"]["objects"][r["name"]]["flags"] if f in QC_FLAGS]
        print(f"{r['name']:24s} {r['volume_cm3_3d']:11.2f} / {r['volume_cm3_drr']:10.2f} "
              f"{r['mass_g_3d']:10.2f} / {r['mass_g_drr']:9.2f}  {', '.join(flags)}")
    print(f"wrote wvdrr.nrrd, vdrr.nrrd, mdrr.nrrd, metrics.json in {args.out}")
    for q in m["qc"]["objects"].values():  # absent or implausible objects are named below
        for flag, message in zip(q["flags"], q["messages"]):
            if flag in QC_FLAGS and message in m["qc"]["failed"]:
                print(f"warning: {message} (segmentation QC would exclude this case from a dataset)",
                      file=sys.stderr)
            elif flag in QC_FLAGS:
                print(f"note: {message}", file=sys.stderr)
    odd = m["absent"] + m["implausible_volume"]
    if len(odd) >= 2:
        print(f"warning: {len(odd)} of {len(m['objects'])} objects are absent or of implausible volume "
              f"({', '.join(odd)}): is {m['object_map']!r} (--objects) the map of {args.labels}?",
              file=sys.stderr)
    return 0
