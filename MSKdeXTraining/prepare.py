"""Turn a cohort (layout ``mskdex-cohort`` v1) into a training dataset (``mskdex-dataset`` v2).

Per case (docs/formats.md, "Prepared dataset v2"):

1. segmentation QC (:func:`MSKdeXTraining.qc.segmentation_qc`, with the CT: metal near an
   object, or a muscle cut by the scan, fails it); a failing case is excluded (and not
   registered) unless ``include_failed``;
2. 2D/3D registration of the pelvis and each femur to the radiograph, in the radiograph's own
   geometry (a film finer than 1 mm binned to about that;
   :func:`MSKdeXTraining.imaging.registration.register_bodies`); a body whose GC
   is below the threshold marks the case excluded (reason recorded) unless ``include_failed``;
   an object projecting partly off the detector always excludes it: its DRR sums would fall
   short of the CT truth, a wrong target rather than a QC verdict to overrule;
3. rendering on the case's *matched* detector (:meth:`Geometry.matched`: the dataset
   detector's pixels, the case's own source distances, the pixel spacing scaled by the case's
   magnification over the dataset's, so every case shows its patient at the same pixel size at
   the isocentre; values per area of that detector): the object-wise DRR stack (3, N, H, W)
   of the CT in its default AP pose (the unpaired targets), the aligned bones (3, 2, H, W:
   pelvis at the pelvis pose, femur = each femur at its own pose) at the *registered* poses
   (never the truth poses), and the radiograph resampled onto the same detector;
4. ``cases/<id>.safetensors`` and its manifest entry ``cases/<id>.json``, each written
   atomically: a finished case is skipped when the run is repeated (resume).

Sharding: shard ``i`` of ``n`` takes the cases whose index in ``cohort.json`` is ``i`` modulo
``n``. A run that prepares any case (or finds no manifest) rebuilds ``manifest.json`` from the case entries once all
cases have one, so the last shard to finish writes it; :func:`merge_manifest` does the same on
demand.
``prepare.json`` records the settings and the cohort (its identity hash, :func:`_cohort_sha256`,
and where it was last read from); a run with other settings or another cohort into the same
folder is refused, also a shard started at the same moment as one with other settings (the
first creates the record, :func:`~MSKdeXTraining.fileio.create_json`), while a cohort and
dataset moved elsewhere resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .cohort.generate import COHORT_FORMAT, TRUTH_FORMAT
from .cohort.generate import VERSION as COHORT_VERSION
from .drr_types import DRR_TYPES, DRR_UNITS
from .environment import environment
from .errors import InputError
from .fileio import (atomic_path, create_json, read_format_json, read_json_object, refuse_other_kind,
                     write_json)
from .imaging.geometry import Geometry, default_ap_pose, resample_image
from .imaging.projector import project_objects
from .imaging.registration import (RegistrationSettings, read_xray,
                                   register_bodies, rigid_bodies)
from .imaging.volume import read_ct, read_labels
from .objects import ALIGNED_BONES, ObjectMap
from .parallel import run_jobs
from .progress import Progress, silent
from .qc import segmentation_qc
from .radiograph_io import unit_range
from .sidecar import simulated
from .training.data import FORMAT, VERSION  # the dataset format its reader defines
SETTINGS_FILE = "prepare.json"
#: Largest fraction of an object that may project outside the detector in the default view.
MAX_LOST_FRACTION = 0.005
#: Longest side (pixels) of the default dataset detector: the paper's 512, so a clinical
#: film's 2000-3000 pixels (0.3-1 GB of DRRs per case) are not kept unasked.
DEFAULT_MAX_PX = 512
#: Largest side (pixels) a dataset detector may be given: 4x the paper's; 27 DRR channels of
#: 2048 x 2048 float32 are 450 MB per case.
MAX_PX = 2048


def read_cohort(cohort: Path) -> tuple[dict, ObjectMap]:
    """``cohort.json`` (validated) and its object map."""
    path = Path(cohort) / "cohort.json"
    meta = read_format_json(path, COHORT_FORMAT, COHORT_VERSION, ("object_map",), InputError,
                            "expected a cohort folder written by `mskdex cohort` or `mskdex assemble`")
    if meta.get("complete") is not True:
        raise InputError(f"{path}: field 'complete' is not true: the cohort is still being written or its "
                         "run was interrupted; rerun the command that wrote it (`mskdex cohort` or "
                         "`mskdex assemble`) to finish it")
    cases = meta.get("cases")
    if not isinstance(cases, list) or not cases:
        raise InputError(f"{path}: field 'cases' must be a non-empty list of case folder names")
    bad = [c for c in cases if not (isinstance(c, str) and c and c[0] != "." and not {"/", "\\"} & set(c))]
    if bad:
        raise InputError(f"{path}: field 'cases' holds {bad[0]!r}; expected names of case folders in the cohort "
                         "folder (no '/' or '\\', not hidden)")
    if len(set(cases)) != len(cases):
        twice = sorted({c for c in cases if cases.count(c) > 1})
        raise InputError(f"{path}: field 'cases' names {twice} more than once; expected each case folder once")
    patients = meta.get("patients", {})
    if not (isinstance(patients, dict) and set(patients) <= set(meta["cases"])
            and all(isinstance(v, str) and v for v in patients.values())):
        raise InputError(f"{path}: field 'patients' must map case names (of 'cases') to patient ids (strings)")
    return meta, ObjectMap.from_json(meta["object_map"], f"{path} (object_map)")


def dataset_geometry(cohort: Path, rows: int | None = None, cols: int | None = None) -> Geometry:
    """The first case's radiograph detector resampled to ``rows`` x ``cols``; by default its
    own pixels, at most :data:`DEFAULT_MAX_PX` on the longer side (same field of view). Given
    sizes must lie in 1..:data:`MAX_PX` and keep the pixels within 2x of square (InputError)."""
    meta, _ = read_cohort(cohort)
    _, g = read_xray(Path(cohort) / meta["cases"][0] / "xray.mha", require_distances=True)
    if rows is None and cols is None:
        f = DEFAULT_MAX_PX / max(g.rows, g.cols)
        return g if f >= 1 else g.resized(max(1, round(g.rows * f)), max(1, round(g.cols * f)))
    sized = g.resized(rows or cols, cols or rows)
    if not all(1 <= n <= MAX_PX for n in sized.shape):
        raise InputError(f"dataset detector {sized.rows} x {sized.cols} pixels: expected 1 to {MAX_PX} "
                         "on each side (--image-size, or --rows / --cols)")
    dy, dx = sized.pixel_spacing
    if max(dy, dx) / min(dy, dx) > 2.0:
        fov_rows, fov_cols = g.field_of_view_mm
        raise InputError(f"dataset detector {sized.rows} x {sized.cols} pixels over the films' "
                         f"{fov_rows:.0f} x {fov_cols:.0f} mm gives pixels of {dy:.3g} x {dx:.3g} mm; expected "
                         "nearly square pixels (within 2x): choose --rows / --cols in the films' proportions, "
                         "or leave the size out (the films' own pixels)")
    return sized


#: The reason of a case excluded because its input could not be read (tried again on a rerun).
UNREADABLE = "unreadable input"


def prepare_case(case_dir: Path, case_id: str, objects: ObjectMap, geometry: Geometry,
                 settings: RegistrationSettings, include_failed: bool, out: Path,
                 patient: str | None = None) -> dict:
    """Prepare one case (of ``patient``, default: its own) into ``out/cases``; returns its
    manifest entry (also written)."""
    t0 = time.perf_counter()
    entry: dict = {"id": case_id, "patient": patient or case_id, "file": None, "status": "excluded",
                   "reasons": [], "qc": {}, "registration": {}}
    try:
        ct, labels = read_ct(case_dir / "ct.nii.gz"), read_labels(case_dir / "labels.nii.gz")
        xray, xray_geometry = read_xray(case_dir / "xray.mha", require_distances=True)
        truth = _read_truth(case_dir / "truth.json", objects)
        qc = segmentation_qc(labels, objects, ct=ct)
    except InputError as e:  # excluded, so the other cases still make a dataset
        entry["reasons"].append(f"{UNREADABLE}: {e}")
        return _finish(entry, out, t0)
    entry["reasons"], entry["qc"] = list(qc.failed), qc.to_json()
    if qc.failed and not include_failed:
        return _finish(entry, out, t0)
    try:
        results = register_bodies(ct, labels, objects, xray, xray_geometry, settings=settings,
                                  source=str(case_dir / "labels.nii.gz"),
                                  check_mirror=not simulated(case_dir / "xray.mha"))  # an assembled film
    except InputError as e:
        entry["reasons"].append(f"registration impossible: {e}")
        return _finish(entry, out, t0)
    for name, r in results.items():
        entry["registration"][name] = r.to_json()
        if not r.ok:
            entry["reasons"].append(f"registration of {name} failed: {r.problem()}")
    g = xray_geometry.matched(geometry)
    try:  # unpaired targets: the CT in its own default AP view, centred on the CT
        drr = project_objects(ct, labels, objects, g, default_ap_pose(ct.center, g))
        aligned = _aligned_bones(ct, labels, objects, g, {k: r.pose for k, r in results.items()})
    except InputError as e:  # e.g. a registered pose that puts a bone behind the source
        entry["reasons"].append(f"rendering impossible: {e}")
        return _finish(entry, out, t0)
    tensors = {
        # in [0, 1] as decompose feeds the model: a raw radiograph is windowed the same way
        "xray": torch.from_numpy(resample_image(unit_range(xray)[0], xray_geometry, g)),
        "drr": drr.data.float().contiguous(),
        "aligned": aligned.data.float().contiguous(),
        "volume_cm3": torch.tensor([truth[n]["volume_cm3"] for n in objects.names], dtype=torch.float64),
        "mass_g": torch.tensor([truth[n]["mass_g"] for n in objects.names], dtype=torch.float64),
    }
    lost = drr.lost_fraction().max(axis=0)
    entry["qc"]["drr_lost_fraction"] = round(float(lost.max()), 6)
    outside = [n for n, f in zip(objects.names, lost) if f > MAX_LOST_FRACTION]
    if outside:
        entry["reasons"].append(f"objects partly outside the detector in the default AP view "
                                f"(> {MAX_LOST_FRACTION:.1%} lost): {outside}")
    entry["geometry"] = g.to_json()
    entry["file"] = f"cases/{case_id}.safetensors"
    entry["status"] = "ok" if not outside and (include_failed or not entry["reasons"]) else "excluded"
    with atomic_path(out / entry["file"]) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION), "id": case_id})
    return _finish(entry, out, t0)


def _finish(entry: dict, out: Path, t0: float) -> dict:
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    entry["environment"] = environment()  # shards may run on other machines: each case says where
    write_json(out / "cases" / f"{entry['id']}.json", entry)
    return entry


def _read_truth(path: Path, objects: ObjectMap) -> dict:
    data = read_format_json(path, TRUTH_FORMAT, COHORT_VERSION, ("objects",), InputError,
                            "every cohort case needs truth.json")
    found = data["objects"]
    if not isinstance(found, dict):
        raise InputError(f"{path}: field 'objects' must map object names to their volume and mass, got "
                         f"{type(found).__name__}")
    missing = [n for n in objects.names if n not in found]
    if missing:
        raise InputError(f"{path}: field 'objects' lacks {missing}")
    for name in objects.names:
        for key, unit in (("volume_cm3", "cm3"), ("mass_g", "g")):
            value = found[name].get(key) if isinstance(found[name], dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise InputError(f"{path}: field 'objects.{name}.{key}' must be a number >= 0 ({unit}), "
                                 f"got {value!r}")
    return found


def _aligned_bones(ct, labels, objects: ObjectMap, geometry: Geometry,
                   poses: dict[str, np.ndarray]):
    """(3, 2, H, W) DRRs of pelvis (at the pelvis pose) and femur (each side at its pose)."""
    bones = ObjectMap(objects.name, objects.select(ALIGNED_BONES).objects, "ignore")
    femur = objects["femur"]
    label_poses = {v: poses[f"femur_{side}"] for side in ("left", "right") for v in femur.sides[side]}
    return project_objects(ct, labels, bones, geometry, poses["pelvis"], label_poses=label_poses)


def merge_manifest(out: Path, cohort: Path | None = None) -> Path:
    """Rebuild ``out/manifest.json`` from the case entries; error if any case lacks one.
    ``cohort`` (default: where ``prepare.json`` says it was read from) must be the one prepared."""
    out = Path(out)
    settings = _read_settings(out)
    if cohort is None:
        cohort = Path(settings["cohort"])
        if not (cohort / "cohort.json").is_file():
            raise InputError(f"{out / SETTINGS_FILE}: field 'cohort' is {cohort}, which holds no cohort.json "
                             "(moved?); pass the cohort folder with --cohort")
    meta, objects = read_cohort(cohort)
    sha = _cohort_sha256(cohort, meta)
    # a dataset prepared before the hash was recorded knows its cohort by place only
    expected = settings.get("cohort_sha256", sha if str(Path(cohort).resolve()) == settings["cohort"] else None)
    if sha != expected:
        raise InputError(f"{out / SETTINGS_FILE}: this dataset was prepared from another cohort (field "
                         f"'cohort_sha256', of {settings['cohort']}/cohort.json); it cannot be merged from {cohort}")
    missing = [c for c in meta["cases"] if not (out / "cases" / f"{c}.json").is_file()]
    if missing:
        raise InputError(f"{out}: {len(missing)} case(s) not prepared yet (first: {missing[:5]}); "
                         "run the missing shards first")
    cases = [read_json_object(out / "cases" / f"{c}.json", ("status",), InputError) for c in meta["cases"]]
    for c in cases:  # kept by --include-failed before objects off the detector always excluded a case
        lost = c.get("qc", {}).get("drr_lost_fraction", 0.0)
        if c["status"] == "ok" and lost > MAX_LOST_FRACTION:
            c["status"] = "excluded"
            c["reasons"] = [*c.get("reasons", []), f"objects partly outside the detector in the default AP "
                            f"view (up to {lost:.1%} lost, > {MAX_LOST_FRACTION:.1%})"]
    manifest = {
        "format": FORMAT, "version": VERSION, "geometry": settings["geometry"],
        "objects": list(objects.names), "kinds": list(objects.kinds),
        "aligned_bones": list(ALIGNED_BONES), "drr_types": list(DRR_TYPES),
        "units": {**DRR_UNITS, "xray": "processed radiograph in [0, 1]", "volume_cm3": "cm3",
                  "mass_g": "g", "geometry": "mm"},
        "object_map": objects.to_json(), "cohort": str(Path(cohort).resolve()),
        "cohort_sha256": sha,
        "prepare": {k: v for k, v in settings.items() if k not in ("geometry", "cohort", "cohort_sha256")},
        "counts": {"cases": len(cases), "ok": sum(c["status"] == "ok" for c in cases),
                   "excluded": sum(c["status"] != "ok" for c in cases)},
        "cases": cases,
    }
    return write_json(out / "manifest.json", manifest)


def _to_prepare(entry: Path) -> bool:
    """Whether the case of manifest entry ``entry`` is (still) to prepare: no entry yet, or one of
    a case excluded because its input could not be read (a file missing or damaged then, perhaps
    mended since: tried again; a case excluded by QC or registration keeps its verdict)."""
    if not entry.is_file():
        return True
    try:
        doc = json.loads(entry.read_text(encoding="utf-8"))
        return doc["status"] == "excluded" and any(str(r).startswith(UNREADABLE) for r in doc["reasons"])
    except (OSError, ValueError, KeyError, TypeError):  # an entry cut short or edited: prepared again
        return True


def prepare_dataset(cohort: Path, out: Path, geometry: Geometry | None = None,
                    shard: tuple[int, int] = (0, 1), workers: int | None = None,
                    include_failed: bool = False, progress: Progress | None = None,
                    settings: RegistrationSettings | None = None) -> Path:
    """Prepare the cases of ``cohort`` (this shard's share) into ``out``; returns ``out``.

    ``geometry``: the dataset detector (default: the first radiograph's); ``shard`` (i, n);
    ``workers`` processes (default: all cores, at most one per case; 1 runs in this process); ``settings`` of the
    registration (default: the accurate preset). Finished cases are kept (resume), but for those
    excluded because their input could not be read, which are tried again.
    ``out/manifest.json`` is written when every case of the cohort is prepared.
    """
    cohort, out = Path(cohort), Path(out)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    refuse_other_kind(out, "dataset")
    meta, objects = read_cohort(cohort)
    rigid_bodies(objects)  # the map must name pelvis and sided femurs before any work starts
    geometry = geometry or dataset_geometry(cohort)
    settings = settings or RegistrationSettings()
    _check_settings(out, cohort, {"cohort_sha256": _cohort_sha256(cohort, meta), "geometry": geometry.to_json(),
                                  "registration": settings.to_json(), "include_failed": include_failed})
    todo = [c for k, c in enumerate(meta["cases"]) if k % n == i and _to_prepare(out / "cases" / f"{c}.json")]
    total = len(todo)
    report = progress or silent
    report(0.0, f"{total} case(s) to prepare in shard {i + 1}/{n}")
    patients = meta.get("patients", {})
    jobs = [(cohort / c, c, objects, geometry, settings, include_failed, out, patients.get(c)) for c in todo]
    for done, (_, entry) in enumerate(run_jobs(prepare_case, jobs, workers), 1):
        report(done / max(total, 1), f"{entry['id']}: {entry['status']}")
    if (total or not (out / "manifest.json").is_file()) and all(
            (out / "cases" / f"{c}.json").is_file() for c in meta["cases"]):
        merge_manifest(out, cohort)  # (a finished dataset's manifest stays as it is: its hash names it)
    return out


#: ``cohort.json``'s fields that decide how its cases were made (not the package version).
IDENTITY_FIELDS = ("format", "version", "seed", "size", "size_settings", "object_map", "generator")


def _cohort_sha256(cohort: Path, meta: dict) -> str:
    """A cohort's identity: the SHA-256 of the canonical JSON of :data:`IDENTITY_FIELDS` of its
    ``cohort.json`` (``meta``; the generator without ``code_version``; ``patients`` where given,
    since they decide the folds) and of each case's name with the SHA-256 of its ``truth.json``
    (which tells apart cohorts assembled by hand; of its canonical JSON without ``files`` where it
    records them, since compressed sizes depend on the zlib build, not on the cohort)."""
    identity = {k: meta.get(k) for k in IDENTITY_FIELDS + (("patients",) if "patients" in meta else ())}
    if isinstance(identity["generator"], dict):
        identity["generator"] = {k: v for k, v in identity["generator"].items() if k != "code_version"}
    truths = {c: Path(cohort) / c / "truth.json" for c in meta["cases"]}
    identity["truth_sha256"] = {c: _truth_sha256(t) if t.is_file() else None for c, t in truths.items()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _truth_sha256(path: Path) -> str:
    """SHA-256 of a case's ``truth.json``: of its bytes, or, where it records its case's file
    sizes (``files``), of its canonical JSON without them."""
    data = path.read_bytes()
    try:
        truth = json.loads(data)
    except ValueError:
        truth = None
    if isinstance(truth, dict) and "files" in truth:
        data = json.dumps({k: v for k, v in truth.items() if k != "files"}, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def _check_settings(out: Path, cohort: Path, settings: dict) -> None:
    """Refuse a dataset folder prepared with other settings or from another cohort; record the
    settings (and the cohort's current place) in ``prepare.json``."""
    path = out / SETTINGS_FILE
    new = json.loads(json.dumps(settings))
    where = str(cohort.resolve())
    if not create_json(path, {"cohort": where, **new}):  # shards started together: one records
        old = read_json_object(path, (), InputError)
        if isinstance(old.get("registration"), dict):
            old["registration"] = _current_registration_fields(path, old["registration"])
        recorded_at = old.pop("cohort", None)
        if recorded_at == where:  # a dataset prepared before the hash was recorded knows its cohort by place
            old.setdefault("cohort_sha256", new["cohort_sha256"])
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "registration" in diff and isinstance(old.get("registration"), dict):
                o, n = old["registration"], new.get("registration", {})
                diff.remove("registration")
                diff += sorted(f"registration.{k}" for k in set(o) | set(n) if o.get(k) != n.get(k))
            if "cohort_sha256" in diff:
                diff[diff.index("cohort_sha256")] = (
                    "cohort_sha256: the cohort there is another one now (its cohort.json or a truth.json changed)"
                    if recorded_at == where else f"cohort_sha256: prepared from {recorded_at}, not {where}")
            raise InputError(f"{path}: this dataset was prepared with other settings ({', '.join(diff)} "
                             "differ); use another --out folder or the same settings")
        write_json(path, {"cohort": where, **new})  # today's fields, the cohort's current place


def _current_registration_fields(path: Path, recorded: dict) -> dict:
    """A recorded registration setup in today's fields: fields added since held their defaults,
    except the restarts (session 15), which did not exist, so a resume with them is refused; the
    joint refinement's, removed since, are dropped where it was off (same poses) and refused
    where it was on."""
    recorded = {"restarts": [], "femur_restarts": [], **recorded}
    if recorded.pop("refine", False):
        raise InputError(f"{path}: this dataset was prepared with the registration's joint refinement "
                         "('refine': true), which this version no longer has; prepare into a new --out folder")
    recorded.pop("refine_max_gc_drop", None)
    defaults = json.loads(json.dumps(RegistrationSettings().to_json()))
    return {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}


def _read_settings(out: Path) -> dict:
    return read_json_object(out / SETTINGS_FILE, ("cohort", "geometry"), InputError,
                            f"{out} is not a dataset folder being prepared")
