"""MSKdeX batch mode: decompose one radiograph headless and write the results table.

Inside Slicer::

    Slicer --no-main-window --python-script mskdex_batch.py --model RUN --xray X --out table.csv

or under plain Python with the slicer-core wheel (``python mskdex_batch.py ...``). The
radiograph goes through the same MRML nodes and pipeline as the module's Decompose button;
``--scene DIR`` also saves the scene (radiograph, DRR layers, table, chart) for Slicer, and
``--json FILE`` the full record (``decomposition.json`` of ``mskdex decompose``: OOD reasons,
notes, source, model). Output targets are checked before any work: an existing ``--out`` or
``--json`` and a ``--scene`` that is a file or a non-empty folder are refused (exit 2, naming
it); nothing is overwritten.

Exit codes: 0 success, 2 bad input (message names the file/field), 1 unexpected error.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

# The module folder holds MSKdeXLib (and, in an installed extension, MSKdeXTraining).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mskdex_batch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="model run folder (model.safetensors + model.json)")
    p.add_argument("--xray", required=True, type=Path,
                   help="radiograph: DICOM DX/CR, NIfTI/NRRD/MHA, PNG/JPEG/TIFF/BMP")
    p.add_argument("--out", required=True, type=Path,
                   help="results table to write (.csv; volumes cm3, masses g); must not exist")
    p.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM",
                   help="detector pixel spacing (row [column]) in mm; required for PNG/JPEG/TIFF/BMP")
    p.add_argument("--magnification", type=float, metavar="M",
                   help="magnification at the patient, SDD / SOD (default: the file's, else the "
                        "model's reference, noted)")
    p.add_argument("--tta", type=int, default=8,
                   help="test-time augmentations for the uncertainty (1 = none, at most 32; default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-time augmentations (default 0)")
    p.add_argument("--scene", type=Path, help="also save the MRML scene (.mrml + data files) in this folder "
                                            "(new or empty)")
    p.add_argument("--json", type=Path, help="also write the full record here (.json: the table under 'objects', "
                                           "out-of-distribution reasons, notes, source, model; must not exist)")
    return p


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run; returns the exit code (errors are printed, never raised)."""
    args = build_parser().parse_args(argv)
    from MSKdeXLib.dependencies import require_python

    try:
        require_python()
    except RuntimeError as e:
        print(f"mskdex_batch: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        import slicer

        from MSKdeXTraining.decomposition_table import write_table_csv
        from MSKdeXTraining.errors import INPUT_ERRORS
        from MSKdeXTraining.fileio import refuse_existing, write_json
        from MSKdeXTraining.inference import check_seed, check_tta

        from MSKdeXLib.pipeline import Pipeline
        from MSKdeXLib.results_table import table_rows
        from MSKdeXLib.scene_io import check_scene_folder, save_scene
    except ImportError as e:
        print(f"mskdex_batch: error: {e}. Most likely PyTorch (or another package MSKdeX needs) is missing: "
              "inside 3D Slicer, install the PyTorch extension, then click 'Check dependencies' in the MSKdeX "
              "module; elsewhere, use a Python environment with MSKdeX, torch and slicer-core installed.",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        check_tta(args.tta, "--tta")
        check_seed(args.seed, "--seed")
        refuse_existing([args.out] + ([args.json] if args.json else []), [args.xray, args.model],
                        chosen="file name")
        if args.json is not None and args.json.resolve() == args.out.resolve():
            raise FileExistsError(f"--json {args.json}: the same path as --out; choose another file")
        if args.scene is not None:
            check_scene_folder(args.scene)
            if args.scene.resolve() in (args.out.resolve(), args.json and args.json.resolve()):
                raise FileExistsError(f"--scene {args.scene}: the same path as --out or --json; choose another folder")
        scene = getattr(slicer, "mrmlScene", None)  # the application's scene inside Slicer
        if scene is None:
            scene = slicer.vtkMRMLScene()
        pipeline = Pipeline(scene)
        node = pipeline.load_radiograph(args.xray, args.pixel_spacing, args.magnification)

        def report(fraction: float, message: str) -> None:
            print(f"mskdex_batch: {100 * fraction:3.0f}% {message}", flush=True)

        out = pipeline.decompose(args.model, node, tta=args.tta, seed=args.seed, progress=report)
        write_table_csv(table_rows(out.table), args.out, out.decomposition.ood.flag)
        if args.json is not None:
            write_json(args.json, out.decomposition.record())
        if args.scene is not None:
            save_scene(scene, args.scene, "mskdex")
        ood = out.decomposition.ood
        flags, notes = ood.split()
        if ood.flag:
            print("mskdex_batch: warning: out of distribution: " + "; ".join(flags), file=sys.stderr)
        for note in notes:
            print(f"mskdex_batch: note: {note}", file=sys.stderr)
        print(f"mskdex_batch: wrote {args.out}{f' and {args.json}' if args.json else ''} "
              f"({len(out.decomposition.table)} objects)")
        return EXIT_OK
    except INPUT_ERRORS as e:
        print(f"mskdex_batch: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except Exception:  # report anything else with its traceback, and fail
        traceback.print_exc()
        return EXIT_ERROR


def main() -> None:
    code = run(sys.argv[1:])
    try:
        import slicer

        if hasattr(slicer, "app"):  # inside Slicer: quit the application with the code
            slicer.util.exit(code)
            return
    except ImportError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
