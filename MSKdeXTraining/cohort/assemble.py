"""Your own paired CTs and radiographs as a cohort (layout ``mskdex-cohort`` v1), ready for
``mskdex prepare``.

The pairs come as a CSV table, one row per radiograph: ``case`` (the case folder's name),
``ct``, ``labels``, ``xray`` (paths, relative to the table's folder unless absolute) and
optionally ``patient`` (default: the case; radiographs of one patient stay in one fold),
``sdd_mm`` / ``sod_mm`` (source-to-detector / -isocentre distances, else the DICOM's) and
``pixel_spacing_mm`` (for files without a spacing, e.g. PNG). Per case it writes
``ct.nii.gz`` and ``labels.nii.gz`` (the inputs, converted), ``xray.mha`` (the radiograph's
values, bright = attenuating) with its ``xray.json`` geometry, and ``truth.json``: each
object's volume (cm3) and MDRR mass (g; lean muscle mass for muscles, from HU as the DRRs
compute it) from the 3D CT. Cases are written atomically and a rerun skips finished ones.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..fileio import file_sha256, read_json_object, write_json
from ..imaging.registration import read_xray, rigid_bodies
from ..imaging.volume import check_same_grid, detector_image, read_ct, read_labels
from ..objects import ObjectMap, load_object_map
from ..radiograph_io import SIDECAR_FORMAT, SIDECAR_VERSION
from .generate import COHORT_FORMAT, TRUTH_FORMAT, VERSION, truth_objects

#: Columns of the pairs table: required, then optional.
REQUIRED_COLUMNS = ("case", "ct", "labels", "xray")
OPTIONAL_COLUMNS = ("patient", "sdd_mm", "sod_mm", "pixel_spacing_mm")

Progress = Callable[[float, str], None]


def read_pairs(table: Path) -> list[dict]:
    """The rows of a pairs table (paths resolved against its folder), checked: the required
    columns, unique case names usable as folder names, numbers where numbers belong."""
    table = Path(table)
    try:
        with table.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{table}: cannot be read as a CSV table ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise InputError(f"{table}: columns {columns}; missing {missing}, unknown {unknown} (expected "
                         f"{list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)})")
    if not rows:
        raise InputError(f"{table}: no rows")
    pairs, seen = [], set()
    for line, row in enumerate(rows, 2):
        where = f"{table} line {line}"
        case = (row["case"] or "").strip()
        if not case or case.startswith(".") or "/" in case or "\\" in case:
            raise InputError(f"{where}: field 'case' must name a case folder (no '/', not hidden), got {case!r}")
        if case in seen:
            raise InputError(f"{where}: field 'case' {case!r} appears twice")
        seen.add(case)
        pair = {"case": case, "patient": (row.get("patient") or "").strip() or case, "line": line}
        for key in ("ct", "labels", "xray"):
            if not (row[key] or "").strip():
                raise InputError(f"{where}: field {key!r} is empty")
            pair[key] = table.parent / row[key].strip()
        for key in ("sdd_mm", "sod_mm", "pixel_spacing_mm"):
            text = (row.get(key) or "").strip()
            try:
                pair[key] = float(text) if text else None
            except ValueError:
                raise InputError(f"{where}: field {key!r} must be a number (mm), got {text!r}") from None
        pairs.append(pair)
    return pairs


def assemble_case(pair: dict, objects: ObjectMap, out: Path) -> Path:
    """Write one case of the pairs table into ``out/<case>`` (atomically); returns the folder."""
    where = f"line {pair['line']} (case {pair['case']!r})"
    try:
        ct, labels = read_ct(pair["ct"]), read_labels(pair["labels"])
        check_same_grid(ct, labels, str(pair["ct"]), str(pair["labels"]))
        spacing = (pair["pixel_spacing_mm"],) * 2 if pair["pixel_spacing_mm"] is not None else None
        xray, geometry = read_xray(pair["xray"], spacing, pair["sdd_mm"], pair["sod_mm"],
                                   require_distances=True)
    except InputError as e:
        raise InputError(f"pairs table {where}: {e}") from None
    final = out / pair["case"]
    tmp = out / f".{pair['case']}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sitk.WriteImage(ct.to_sitk(), str(tmp / "ct.nii.gz"), True)
        sitk.WriteImage(labels.to_sitk(), str(tmp / "labels.nii.gz"), True)
        sitk.WriteImage(detector_image(xray, geometry), str(tmp / "xray.mha"), True)
        write_json(tmp / "xray.json", {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
                                       "geometry": geometry.to_json(), "source": str(pair["xray"])})
        write_json(tmp / "truth.json", {
            "format": TRUTH_FORMAT, "version": VERSION, "units": {"volume": "cm3", "mass": "g"},
            "objects": truth_objects(ct, labels, objects),
            "sources": {k: {"path": str(pair[k]), "sha256": file_sha256(pair[k])}
                        for k in ("ct", "labels", "xray")}})
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def assemble_cohort(table: Path, objects: str | Path | ObjectMap, out: Path,
                    progress: Progress | None = None) -> Path:
    """Assemble the pairs of ``table`` (:func:`read_pairs`) with the object map ``objects``
    into the cohort folder ``out`` (resumable: finished cases are kept; a folder assembled
    from another table or map is refused). Returns ``out``."""
    table, out = Path(table), Path(out)
    pairs = read_pairs(table)
    omap = objects if isinstance(objects, ObjectMap) else load_object_map(objects)
    rigid_bodies(omap)  # prepare registers the pelvis and each femur: the map must name them
    header = {"format": COHORT_FORMAT, "version": VERSION, "object_map": omap.to_json(),
              "generator": {"name": "mskdex assemble", "code_version": __version__,
                            "pairs_sha256": file_sha256(table)},
              "patients": {p["case"]: p["patient"] for p in pairs}}
    path = out / "cohort.json"
    if path.is_file():
        old = read_json_object(path, (), InputError)
        same = {k: v for k, v in (old.get("generator") or {}).items() if k != "code_version"} == \
            {k: v for k, v in header["generator"].items() if k != "code_version"}
        if not same or old.get("object_map") != header["object_map"]:
            raise InputError(f"{path}: this folder holds a cohort assembled from another pairs table or "
                             "object map (fields 'generator.pairs_sha256', 'object_map'); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {**header, "complete": False, "cases": []})
    report = progress or (lambda f, m: None)
    for k, pair in enumerate(pairs):
        if not (out / pair["case"] / "truth.json").is_file():
            assemble_case(pair, omap, out)
        report((k + 1) / len(pairs), pair["case"])
    write_json(path, {**header, "complete": True, "cases": [p["case"] for p in pairs]})
    return out
