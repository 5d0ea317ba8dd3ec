"""``mskdex register``: 2D/3D registration of the pelvis and femurs of a CT to a radiograph."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import progress_bar

HELP = ("Register the pelvis (with sacrum) and each femur of a CT to a radiograph (6-DoF, "
        "gradient correlation); writes poses.json and QC overlays (qc_<body>.png)")

POSES_FORMAT = "mskdex-poses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..imaging.registration import PRESETS

    parser.add_argument("--ct", required=True, type=Path, help="CT in HU (NIfTI, NRRD, MHA, DICOM folder)")
    parser.add_argument("--labels", required=True, type=Path, help="label map on the CT grid")
    parser.add_argument("--xray", required=True, type=Path,
                        help="radiograph (DICOM, MHA/NRRD/NIfTI, PNG/JPEG/TIFF/BMP), bright = attenuating")
    parser.add_argument("--objects", required=True,
                        help="object map of the label values: JSON file or built-in name (synthetic: `mskdex "
                             "cohort`'s labels; totalsegmentator); needs 'pelvis' and a 'femur' with left/right sides")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM",
                        help="detector pixel spacing (mm): one value or row and column; required "
                             "when the file has none (PNG/JPEG/TIFF/BMP, placeholder DICOM spacing)")
    parser.add_argument("--sdd", type=float, help="source-to-detector distance (mm); default: the "
                                                  "radiograph's xray.json or DICOM (0018,1110), else 1100")
    parser.add_argument("--sod", type=float, help="source-to-isocentre distance (mm); default: the "
                                                  "radiograph's xray.json or DICOM magnification, else 880")
    parser.add_argument("--preset", default="accurate", choices=PRESETS,
                        help="registration settings: accurate (~1-4 s per bone, 1 thread) or fast (~1-3 s, more failures)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the CMA-ES search")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from ..ct_input import read_ct_and_labels
    from ..fileio import refuse_existing, staged_folder, write_json
    from ..imaging.qc_images import overlay_image, write_qc_figure
    from ..imaging.registration import (RegistrationSettings, read_xray, register_bodies,
                                        render_body, rigid_bodies, working_film)
    from ..objects import load_object_map
    from ..radiograph_io import explicit_spacing
    from ..sidecar import simulated

    spacing = explicit_spacing(args.pixel_spacing)
    objects = load_object_map(args.objects)
    bodies = rigid_bodies(objects)
    refuse_existing([args.out / name for name in ["poses.json", "qc_all.png", *(f"qc_{b}.png" for b in bodies)]],
                    [args.ct, args.labels, args.xray])
    ct, labels = read_ct_and_labels(args.ct, args.labels, objects)
    xray, geometry = read_xray(args.xray, spacing, args.sdd, args.sod)
    settings = replace(RegistrationSettings.preset(args.preset), seed=args.seed)
    with progress_bar("registering", leave=False) as progress:
        results = register_bodies(ct, labels, objects, xray, geometry, settings=settings, progress=progress,
                                  source=str(args.labels), check_mirror=not simulated(args.xray))
    drrs = []
    ok = all(r.ok for r in results.values())
    xray, shown = working_film(xray, geometry)  # the overlays at the registration's resolution
    with staged_folder(args.out, last="poses.json") as stage:  # poses.json marks the set complete
        for name, r in results.items():
            drr = render_body(ct, labels, bodies[name], r.pose, shown)
            drrs.append(drr)
            state = "ok" if r.ok else ("MIRRORED? the mirrored film fits better" if r.mirrored
                                       else "LOW: registration failed")
            write_qc_figure(stage / f"qc_{name}.png", overlay_image(xray, drr),
                            f"{name}: GC {r.gc:.3f} {state}", flagged=not r.ok)
        title = "  ".join(f"{n} GC {r.gc:.2f}{'' if r.ok else ' LOW'}" for n, r in results.items())
        write_qc_figure(stage / "qc_all.png", overlay_image(xray, np.stack(drrs)), title, flagged=not ok)
        write_json(stage / "poses.json", {
            "format": POSES_FORMAT, "version": 1, "geometry": geometry.to_json(),
            "ct": str(args.ct), "labels": str(args.labels), "xray": str(args.xray),
            "object_map": objects.name, "settings": settings.to_json(),
            "pose_convention": "4x4 world (LPS mm) -> camera (mm), see docs/formats.md",
            "bodies": {n: {**r.to_json(), "labels": list(bodies[n])} for n, r in results.items()}})
    for name, r in results.items():
        print(f"{name:12s} GC {r.gc:.3f} {'ok' if r.ok else 'FAILED: ' + r.problem()} ({r.seconds:.1f} s)")
    print(f"wrote poses.json and qc_*.png in {args.out}")
    return 0 if ok else 1
