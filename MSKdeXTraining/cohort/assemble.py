"""Your own paired CTs and radiographs as a cohort (layout ``mskdex-cohort`` v1), ready for
``mskdex prepare``.

The pairs come as a CSV table (UTF-8), one row per radiograph: ``case`` (the case folder's
name), ``ct`` (a file or a DICOM series folder), ``labels``, ``xray`` (paths, relative to the
table's folder unless absolute) and optionally ``patient`` (default: the case; a patient's
radiographs stay in one fold), ``sdd_mm`` / ``sod_mm`` (source-to-detector / -isocentre
distances, else the DICOM's) and ``pixel_spacing_mm`` (at the detector, for files without a
spacing, e.g. PNG). Per case it writes ``ct.nii.gz`` (int16 HU) and ``labels.nii.gz``, cropped superior-inferior as
a synthetic case is (:func:`crop_to_region`: a CT that runs to the knees would put the hip off
the centre of the default AP view), the
radiograph as ``decompose`` will see it (``xray.mha``: windowed to [0, 1], bright =
attenuating) with its geometry and the reader's record (``xray.json``), and ``truth.json``:
each object's volume (cm3) and MDRR mass (g; lean muscle mass for muscles, from HU as the DRRs
compute it) from the 3D CT, with what it was made from. Every row's fields and paths are
checked, and every film's geometry read, before anything is written; cases are made in parallel,
each atomically, and a rerun keeps a case only if its row, its input files and the object map are
unchanged. It writes into a new or empty
folder or a cohort it wrote, and replaces only case folders it made, never one holding an input.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..ct_input import read_ct_and_labels
from ..dicom_radiograph import HIP_ABOVE_TABLE_MM
from ..errors import InputError
from ..fileio import file_sha256, marked_kind, read_json_object, remove_stale, write_json
from ..imaging.geometry import Geometry
from ..imaging.registration import radiograph_geometry, rigid_bodies
from ..imaging.volume import Volume, detector_image
from ..objects import ObjectMap, load_object_map
from ..parallel import run_jobs
from ..progress import Progress, silent
from ..radiograph_io import Radiograph, check_magnification, read_radiograph
from ..sidecar import SIDECAR_FORMAT, SIDECAR_VERSION
from .generate import (CASE_FILES, COHORT_FORMAT, TRUTH_FORMAT, VERSION, check_resume, complete_case_truth,
                       file_sizes, truth_objects)
from .patient import CROP_MARGIN_MM

#: Columns of the pairs table: required, then optional.
REQUIRED_COLUMNS = ("case", "ct", "labels", "xray")
OPTIONAL_COLUMNS = ("patient", "sdd_mm", "sod_mm", "pixel_spacing_mm")


def read_pairs(table: Path) -> list[dict]:
    """The rows of a pairs table, checked: the columns, case names usable as folder names (once
    each, also ignoring case), positive numbers where numbers belong, inputs that exist. Each
    row's ``where`` names the table and line; paths are resolved against the table's folder."""
    table = Path(table)
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [c.strip() for c in next(reader, [])]
            rows = [(reader.line_num, r) for r in reader if any(v.strip() for v in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{table}: cannot be read as a UTF-8 CSV table ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise InputError(f"{table}: columns {header}; missing {missing}, unknown {unknown} (expected "
                         f"{list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}, each once)")
    if not rows:
        raise InputError(f"{table}: no rows")
    pairs, seen = [], {}
    for line, values in rows:
        where = f"{table} line {line}"
        if len(values) != len(header):
            raise InputError(f"{where}: {len(values)} fields for {len(header)} columns (a comma in a path "
                             "must be quoted)")
        row = {c: v.strip() for c, v in zip(header, values)}
        case = row["case"]
        if not case or case.startswith(".") or "/" in case or "\\" in case:
            raise InputError(f"{where}: field 'case' must name a case folder (no '/', not hidden), got {case!r}")
        if (kind := marked_kind(case)) is not None:  # a cohort folder holding it would read as that kind's
            raise InputError(f"{where}: field 'case' {case!r} is a name that marks another kind of MSKdeX "
                             f"output folder ({kind}); choose another case name")
        if case.casefold() in seen:
            raise InputError(f"{where}: field 'case' {case!r} repeats line {seen[case.casefold()]} "
                             "(case folder names must differ, also in upper / lower case)")
        seen[case.casefold()] = line
        pair = {"case": case, "patient": row.get("patient") or case, "where": f"{where} (case {case!r})"}
        for key in ("ct", "labels", "xray"):
            if not row[key]:
                raise InputError(f"{where}: field {key!r} is empty")
            pair[key] = (table.parent / row[key]).resolve()
            if not pair[key].exists():
                raise InputError(f"{where}: field {key!r}: {pair[key]} does not exist")
        for key in ("sdd_mm", "sod_mm", "pixel_spacing_mm"):
            text = row.get(key, "")
            try:
                value = float(text) if text else None
            except ValueError:
                value = math.nan
            if value is not None and not 0 < value < math.inf:
                raise InputError(f"{where}: field {key!r} must be a number > 0 (mm), got {text!r}")
            pair[key] = value
        pairs.append(pair)
    return pairs


def source_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (a DICOM series: each name and its file's
    SHA-256, in name order)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return hashlib.sha256("".join(f"{f.relative_to(path)}\t{file_sha256(f)}\n" for f in files).encode()).hexdigest()


def _record(pair: dict, objects: ObjectMap, ct_sha256: str) -> dict:
    """What a case is made from: its row, its inputs' hashes (the CT's given) and the object map."""
    return {"ct": {"path": str(pair["ct"]), "sha256": ct_sha256},
            "labels": {"path": str(pair["labels"]), "sha256": source_sha256(pair["labels"])},
            "xray": {"path": str(pair["xray"]), "sha256": source_sha256(pair["xray"])},
            **{k: pair[k] for k in ("patient", "sdd_mm", "sod_mm", "pixel_spacing_mm")},
            "object_map": objects.to_json(), "hip_above_table_mm": HIP_ABOVE_TABLE_MM,
            "crop_margin_mm": CROP_MARGIN_MM}


def crop_to_region(ct: Volume, labels: Volume, objects: ObjectMap) -> tuple[Volume, Volume]:
    """CT and labels cropped superior-inferior to the objects not marked ``cut_at_region`` (the
    femur's shaft and TotalSegmentator's iliopsoas run on past the hip) plus
    :data:`CROP_MARGIN_MM`, the rule of the synthetic cohort: the CT centre, where the default AP
    view looks, is then the hip region's centre, and those objects are cut at its edges."""
    region = np.isin(labels.array, objects.region_labels())
    if not region.any():
        return ct, labels
    axis = labels.superior_axis
    keep = labels.extent(region, axis, CROP_MARGIN_MM)
    return ct.cropped(axis, keep), labels.cropped(axis, keep)


def read_film(pair: dict) -> tuple[Radiograph, Geometry]:
    """The radiograph of a row and its geometry, with the source distances it must have."""
    spacing = (pair["pixel_spacing_mm"],) * 2 if pair["pixel_spacing_mm"] is not None else None
    radiograph = read_radiograph(pair["xray"], spacing, spacing_option="column pixel_spacing_mm")
    geometry = radiograph_geometry(radiograph, pair["xray"], pair["sdd_mm"], pair["sod_mm"], require_distances=True,
                                   distances_option="columns sdd_mm / sod_mm")
    check_magnification(geometry.magnification, f"{pair['xray']}: SDD / SOD",
                        "give sdd_mm and sod_mm (mm) in the table")
    return radiograph, geometry


def _refuse_inputs_in_cases(pairs: list[dict], out: Path) -> None:
    """Raise InputError naming the row and field if an input lies in a case folder of ``out``
    (the folder of any row): making that case would replace the folder, input and all."""
    folders = {_file_id(out / p["case"]): out / p["case"] for p in pairs if (out / p["case"]).exists()}
    for pair in pairs:
        for key in ("ct", "labels", "xray"):
            inside = next((folders[i] for i in map(_file_id, (pair[key], *pair[key].parents)) if i in folders), None)
            if inside is not None:
                raise InputError(f"{pair['where']}: field {key!r}: {pair[key]} lies in the case folder {inside}, "
                                 "which assemble replaces; expected inputs outside the cases of --out (move them, "
                                 "or choose another --out)")


def _refuse_foreign_case(folder: Path) -> None:
    """Raise InputError if ``folder`` exists but is not a case that assemble made (its
    ``truth.json`` records ``assembled_from``, and it holds :data:`CASE_FILES` only): a rerun
    replaces its own cases, never a folder of the user's."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        why = "not a folder"
    elif other := sorted(p.name for p in folder.iterdir() if p.name not in CASE_FILES):
        why = f"it also holds {other}"
    else:
        truth = folder / "truth.json"
        try:
            record = read_json_object(truth) if truth.is_file() else {}
        except InputError as e:  # e.g. cut short by a copy that stopped
            why = f"its truth.json is unreadable, e.g. cut short: {e}"
        else:
            if "assembled_from" in record:
                return
            why = "no truth.json with field 'assembled_from'"
    raise InputError(f"{folder}: exists but is no case that assemble made ({why}); assemble replaces only "
                     "its own cases: move it away or choose another --out")


def _file_id(path: Path) -> tuple[int, int]:
    """The (device, inode) of a file or folder: the same on every path to it."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


@contextmanager
def _naming_row(pair: dict) -> Iterator[None]:
    """Errors inside name the table, line and case."""
    try:
        yield
    except InputError as e:
        raise InputError(f"{pair['where']}: {e}") from None


def assemble_case(pair: dict, objects: ObjectMap, out: Path, record: dict) -> None:
    """Write one case into ``out/<case>`` (atomically, replacing an outdated one) with the
    ``record`` of what it is made from (:func:`_record`)."""
    ct, labels = read_ct_and_labels(pair["ct"], pair["labels"], objects)
    objects.lookup_table(labels.array, str(pair["labels"]))  # label values the map does not claim: now, not in prepare
    ct, labels = crop_to_region(ct, labels, objects)
    radiograph, geometry = read_film(pair)
    xray, _ = radiograph.windowed()  # as decompose does
    hu = np.rint(ct.array)
    ct_image = ct.with_array(hu.astype(np.int16) if np.array_equal(hu, ct.array) and
                             np.abs(hu).max() < 32768 else ct.array.astype(np.float32)).to_sitk()
    label_type = np.uint8 if labels.array.max() < 256 else np.uint16
    final, tmp = out / pair["case"], out / f".{pair['case']}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sitk.WriteImage(ct_image, str(tmp / "ct.nii.gz"), True)
        sitk.WriteImage(labels.with_array(labels.array.astype(label_type)).to_sitk(),
                        str(tmp / "labels.nii.gz"), True)
        sitk.WriteImage(detector_image(xray, geometry), str(tmp / "xray.mha"), True)
        write_json(tmp / "xray.json", {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
                                       "geometry": geometry.to_json(), "source": radiograph.source})
        write_json(tmp / "truth.json", {
            "format": TRUTH_FORMAT, "version": VERSION, "units": {"volume": "cm3", "mass": "g"},
            "files": file_sizes(tmp), "objects": truth_objects(ct, labels, objects), "assembled_from": record})
        _refuse_foreign_case(final)
        shutil.rmtree(final, ignore_errors=True)  # an outdated case (its row or inputs changed)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assemble_pair(pair: dict, objects: ObjectMap, out: Path, ct_sha256: str) -> bool:
    """Make the case of one row (its CT's SHA-256 ``ct_sha256``) unless it is there already from
    the same row, inputs and map (:func:`_record`), and whole; returns whether it was made.
    Errors name the table, line and case."""
    with _naming_row(pair):
        folder, record = out / pair["case"], _record(pair, objects, ct_sha256)
        if (complete_case_truth(folder) or {}).get("assembled_from") == record:
            return False
        assemble_case(pair, objects, out, record)
        return True


def assemble_cohort(table: Path, objects: str | Path | ObjectMap, out: Path, workers: int | None = None,
                    progress: Progress | None = None) -> list[str]:
    """Assemble the pairs of ``table`` (:func:`read_pairs`) with the object map ``objects``
    into the cohort folder ``out`` with ``workers`` processes (default: all cores); returns the
    cases made by this call, in the table's order. Resumable: a case whose row, inputs and map
    are unchanged is kept, any other is made (again). Refuses, before any work, an input inside
    a case folder of ``out``, a folder ``out`` of other files or another cohort, and a case
    folder that assemble did not make."""
    table, out = Path(table), Path(out)
    pairs = read_pairs(table)
    omap = objects if isinstance(objects, ObjectMap) else load_object_map(objects)
    rigid_bodies(omap)  # prepare registers the pelvis and each femur: the map must name them
    header = {"format": COHORT_FORMAT, "version": VERSION, "object_map": omap.to_json(),
              "generator": {"name": "mskdex assemble", "code_version": __version__},
              "patients": {p["case"]: p["patient"] for p in pairs}}
    _refuse_inputs_in_cases(pairs, out)
    check_resume(out, header, ("format", "version", "generator"))
    ct_patient: dict[str, dict] = {}
    ct_hashes = [source_sha256(pair["ct"]) for pair in pairs]  # once: the jobs' records take them
    for pair, ct_sha256 in zip(pairs, ct_hashes):  # films' geometry, CTs' patients: before any case is written
        with _naming_row(pair):
            _refuse_foreign_case(out / pair["case"])
            read_film(pair)
        seen = ct_patient.setdefault(ct_sha256, pair)
        if seen["patient"] != pair["patient"]:
            raise InputError(f"{pair['where']}: its CT is that of {seen['where']}, of patient {seen['patient']!r}, "
                             f"but its patient is {pair['patient']!r}: one CT, one patient (or folds would mix them)")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ".*.partial-*")  # of runs killed while writing a case
    write_json(out / "cohort.json", {**header, "complete": False, "cases": []})
    report = progress or silent
    jobs = [(pair, omap, out, ct_sha256) for pair, ct_sha256 in zip(pairs, ct_hashes)]
    made = []
    for done, (k, was_made) in enumerate(run_jobs(assemble_pair, jobs, workers), 1):
        report(done / len(pairs), f"{pairs[k]['case']} {'made' if was_made else 'kept'}")
        if was_made:
            made.append(k)
    write_json(out / "cohort.json", {**header, "complete": True, "cases": [p["case"] for p in pairs]})
    return [pairs[k]["case"] for k in sorted(made)]
