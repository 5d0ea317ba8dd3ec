"""Batch decomposition: radiograph files into result folders, resumably (``mskdex decompose``).

Each file gets a folder (:func:`output_names`) holding what
:meth:`~MSKdeXTraining.inference.Decomposition.write` writes, the JSON last, which records what
the result was made from (``source.batch``: the file's SHA-256, the options, the SHA-256s of
the model and its calibration). A re-run skips a folder done from the same content, options
and model, redoes one that an interrupted write left without its JSON and refuses to overwrite
any other (:func:`decompose_file`); a file that cannot be used does not stop the others
(:func:`decompose_files`). :func:`write_batch_table` gathers a batch's tables into one CSV.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from pathlib import Path

from .decomposition_table import TABLE_VERSION, write_tables_csv
from .dicom_radiograph import HIP_ABOVE_TABLE_MM
from .errors import INPUT_ERRORS, STORAGE_ERRNOS
from .fileio import file_sha256, refuse_other_kind
from .inference import Decomposer, Decomposition, output_files
from .progress import Progress, silent
from .radiograph_formats import stem as file_stem
from .radiograph_io import MISSING_SPACING_FIELD, MISSING_SPACING_OPTION, SpacingMissing, read_radiograph
from .sidecar import read_sidecar_path


#: The re-run key's entry of ``missing_spacing`` (``--pixel-spacing-if-missing``).
FALLBACK_KEY = "pixel_spacing_if_missing"


def output_names(inputs: list[Path], root: Path | None = None) -> list[str]:
    """Output folder names of radiographs in batch mode: each file name without its format
    suffix (``1.2.840.1.dcm`` -> ``1.2.840.1``); where two inputs of a folder would share one
    (``hip.dcm``, ``hip.png``), the suffix is kept with ``_`` for ``.`` (``hip_dcm``, ``hip_png``).
    With ``root`` (a folder read with its sub-folders), each name is prefixed with its file's
    folder relative to ``root`` (``PAT1/STUDY1/IM00001``)."""
    stems = [file_stem(p) for p in inputs]
    keys = [(p.parent, s) if root else s for p, s in zip(inputs, stems)]  # clashes within a folder
    counts = Counter(keys)
    names = [s + "_" + p.name[len(s):].lstrip(".").replace(".", "_") if counts[key] > 1 else s
             for s, p, key in zip(stems, inputs, keys)]
    if root is not None:
        names = [(p.parent.relative_to(root) / n).as_posix() for p, n in zip(inputs, names)]
    twice = {n for n, count in Counter(names).items() if count > 1}
    if twice:
        clash = sorted(str(p) for p, n in zip(inputs, names) if n in twice)
        raise FileExistsError(f"radiographs whose results would share a folder name ({', '.join(sorted(twice))}): "
                              f"{clash}; rename one of each")
    return names


def decompose_file(decomposer: Decomposer, path: Path, target: Path,
                   pixel_spacing: tuple[float, float] | None = None, tta: int = 8, seed: int = 0,
                   magnification: float | None = None, missing_spacing: tuple[float, float] | None = None
                   ) -> tuple[dict, Decomposition | None]:
    """Decompose one radiograph file into the folder ``target``; returns a summary (input,
    output, ood flag, reasons, output paths, seconds) and the result (None when ``target``
    already holds the result of the same file content, settings and model: ``skipped``).
    ``pixel_spacing``, ``magnification`` and ``missing_spacing`` go to :func:`read_radiograph`.
    A ``target`` holding any other decomposition, or another kind of MSKdeX output (a dataset,
    a model run...), is refused (FileExistsError), never overwritten (files without
    ``decomposition.json``, which is written last, are the leftovers of an interrupted run and
    are redone); an unusable file raises :class:`InputError`."""
    sidecar = read_sidecar_path(path)  # a NIfTI/NRRD/MHA file's: other formats read none
    options = {"table_version": TABLE_VERSION,
               "pixel_spacing": None if pixel_spacing is None else list(pixel_spacing),
               "magnification": magnification, "tta": tta, "seed": seed,
               "model_sha256": decomposer.origin.get("weights_sha256"),
               "model_json_sha256": decomposer.origin.get("metadata_sha256"),
               "calibration_sha256": (decomposer.origin["calibration"] or {}).get("sha256"),
               "sidecar_sha256": None if sidecar is None else file_sha256(sidecar),
               "hip_above_table_mm": HIP_ABOVE_TABLE_MM}  # how DICOM source distances are read
    # a spacing for files without one is an option of the results that used it only
    fallback = {} if missing_spacing is None else {FALLBACK_KEY: list(missing_spacing)}
    summary = {"input": str(path), "output": str(target)}
    refuse_other_kind(target, "decomposition")
    done = output_files(target)["json"]  # written last: without it, other files are leftovers
    if done.is_file():                     # of an interrupted write, redone below
        redo = f"choose another output folder (--out) or delete {done} to redo it"
        recorded = _recorded_batch_key(done, path, redo)
        key = {"input_sha256": file_sha256(path), **options, **(fallback if FALLBACK_KEY in recorded else {})}
        if recorded.get("table_version") != TABLE_VERSION:
            raise FileExistsError(f"{done}: written by another MSKdeX version (decomposition format "
                                  f"v{recorded.get('table_version', 1)}; this one writes v{TABLE_VERSION}); {redo}")
        if recorded != key:
            changed = ", ".join(k for k in {**key, **recorded} if recorded.get(k) != key.get(k))
            raise FileExistsError(f"{done}: holds a result of other input content, settings or model "
                                  f"than {path} with these options (differs in: {changed}); {redo}")
        return {**summary, "skipped": True}, None
    t0 = time.perf_counter()
    radiograph = read_radiograph(path, pixel_spacing, magnification, missing_spacing=missing_spacing,
                                 magnification_option="--magnification")
    result = decomposer.decompose(radiograph, tta=tta, seed=seed)
    used = fallback if radiograph.source["spacing_field"] == MISSING_SPACING_FIELD else {}
    result.source["batch"] = {"input_sha256": result.source["sha256"], **options, **used}
    paths = result.write(target)
    return {**summary, "ood": result.ood.flag, "reasons": result.ood.reasons,
            "seconds": time.perf_counter() - t0, "files": {k: str(v) for k, v in paths.items()}}, result


def decompose_files(decomposer: Decomposer, inputs: list[Path], out: Path,
                    pixel_spacing: tuple[float, float] | None = None, tta: int = 8, seed: int = 0,
                    progress: Progress | None = None, magnification: float | None = None,
                    root: Path | None = None, missing_spacing: tuple[float, float] | None = None
                    ) -> list[dict]:
    """Decompose every file in ``inputs`` into ``out/<name>/`` (:func:`output_names`, with
    ``root`` the folder whose sub-folders ``inputs`` come from;
    :func:`decompose_file`); returns one summary per file (``error`` for a file that could not
    be used, which does not stop the others: its input error, or any other exception with its
    type and, under ``traceback``, where it arose, a bug to report, but an output that cannot
    be written (:data:`~.errors.STORAGE_ERRNOS`) stops the batch; ``skipped`` for one already
    done, so an interrupted batch resumes). An output folder holding a result of other input,
    settings or model is that file's error (FileExistsError's message), never overwritten."""
    report = progress or silent
    summaries = []
    for k, (path, name) in enumerate(zip(inputs, output_names(inputs, root))):
        report(k / max(1, len(inputs)), f"{path.name}")
        try:
            summaries.append(decompose_file(decomposer, path, out / name, pixel_spacing, tta, seed,
                                            magnification, missing_spacing)[0])
        except INPUT_ERRORS as e:  # one file's bad input or refused output folder, reported with the others
            hint = (f"; {MISSING_SPACING_OPTION} gives a spacing to the files without one only"
                    if isinstance(e, SpacingMissing) else "")
            summaries.append({"input": str(path), "output": str(out / name), "error": f"{e}{hint}"})
        except Exception as e:  # a bug on one file: reported with its traceback, the others go on
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                raise  # a read-only or full disk fails every file alike: the batch stops
            summaries.append({"input": str(path), "output": str(out / name),
                              "error": f"{path}: {type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    report(1.0, "done")
    return summaries


#: The CSV of all radiographs of a batch, in its output folder.
BATCH_TABLE = "decompositions.csv"


def write_batch_table(summaries: list[dict], out: Path, root: Path) -> Path | None:
    """``out/decompositions.csv``: the tables of a batch's decomposed radiographs (this run's
    and those skipped as done before; not the files that could not be used), one line per
    radiograph and object: ``radiograph`` (its path relative to the input folder ``root``),
    ``result`` (its folder relative to ``out``), then the table's columns and OOD flag, read
    back from each result's ``decomposition.json``. None when none was (a table of an earlier
    run is removed then: it would not be this run's; the caller says so)."""
    tables = []
    for s in summaries:
        if "error" in s:
            continue
        record = json.loads(output_files(Path(s["output"]))["json"].read_text(encoding="utf-8"))
        first = {"radiograph": Path(s["input"]).relative_to(root).as_posix(),
                 "result": Path(s["output"]).relative_to(out).as_posix()}
        tables.append((first, record["objects"], bool(record["ood"]["flag"])))
    if not tables:
        (out / BATCH_TABLE).unlink(missing_ok=True)
        return None
    return write_tables_csv(tables, out / BATCH_TABLE)


def _recorded_batch_key(table: Path, path: Path, redo: str) -> dict:
    """What the batch result ``table`` was made from (its ``source.batch``); FileExistsError
    saying why it cannot be compared with ``path``'s run (unreadable, or no such record), then
    ``redo``."""
    try:
        content = json.loads(table.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FileExistsError(f"{table}: cannot be read as a decomposition ({e}); {redo}") from None
    source = content.get("source") if isinstance(content, dict) else None
    key = source.get("batch") if isinstance(source, dict) else None
    if not isinstance(key, dict):
        raise FileExistsError(f"{table}: a decomposition without the record of what a batch made it from "
                              f"(field source.batch: written by the Python API or Slicer?), so it cannot be "
                              f"matched to {path}; {redo}")
    return key
