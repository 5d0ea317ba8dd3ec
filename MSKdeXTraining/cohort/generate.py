"""Cohort orchestration: layout ``mskdex-cohort`` v1 (docs/formats.md), parallel, resumable,
deterministic.

Case ``i`` of a cohort with seed ``S`` draws all its random parameters from
``numpy.random.SeedSequence(S, spawn_key=(i,))`` first (:func:`sample_case`), then everything
is computed from those parameters (:func:`build_case`), so any case can be replayed alone and
the same seed gives the same bytes. A case is written into a hidden temporary folder that is
renamed to ``case_XXXX`` when complete; an interrupted run leaves only temporary folders,
which the next run removes and redoes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError, recorded, warn_again
from ..fileio import refuse_other_kind, remove_stale, write_json
from ..imaging import hu as hu_conv
from ..imaging.geometry import Geometry, default_ap_pose, rigid
from ..imaging.volume import Volume, detector_image
from ..objects import ObjectMap
from ..parallel import run_jobs
from ..progress import Progress, silent
from ..sidecar import SIDECAR_FORMAT, SIDECAR_VERSION
from .anatomy import (FEMUR, PELVIS_LABELS, Template, find_templates, load_template, synthetic_map,
                      template_settings)
from .patient import build_patient, sample_patient
from .radiograph import RigidBody, SimulatedRadiograph, XraySettings, simulate_radiograph

COHORT_FORMAT = "mskdex-cohort"
TRUTH_FORMAT = "mskdex-truth"
VERSION = 1
#: Version of the generator's model; a cohort refuses to resume under another one.
#: 2: CT cropped to pelvis, sacrum and muscles; radiograph centred on the CT centre.
#: 3: radiograph of the whole body (continued past the template's ends), window on the body.
#: 4: fat infiltration = a systemic (patient) level + a per-muscle deviation.
#: 5: soft tissue held to the bones near it and volume-corrected without flux into them.
GENERATOR_VERSION = 5
#: The files of a case; ``truth.json`` records the byte sizes of the others (``files``), so that
#: a resume remakes a case whose files were cut short (e.g. by a copy that stopped).
CASE_FILES = ("ct.nii.gz", "labels.nii.gz", "xray.mha", "xray.json", "truth.json")


@dataclass(frozen=True)
class CohortSize:
    """Resolution preset: CT voxel size (mm, isotropic) and detector (pixels, mm)."""

    ct_spacing_mm: float
    detector_px: int
    pixel_mm: float


#: Detector field of view (mm, square) of every size: it holds every object of the largest
#: patient (scale 1.12, muscles 1.3x, SID 1000 mm, isocentre 220 mm above the detector,
#: shifted 15 mm) in the radiograph's pose and in the default AP view about the CT centre,
#: whose projected extent reaches +-285 mm. Larger than a 43 cm cassette: the objects of big
#: patients magnified 1.28x span up to 57 cm.
DETECTOR_FOV_MM = 588.8

#: ``demo``: fast (about 2-3 s per case on 2 cores); ``full``: closer to clinical sampling;
#: ``test``: coarse, for quick checks.
SIZES = {
    "demo": CohortSize(3.0, 256, DETECTOR_FOV_MM / 256),
    "full": CohortSize(1.5, 512, DETECTOR_FOV_MM / 512),
    "test": CohortSize(5.0, 128, DETECTOR_FOV_MM / 128),
}


def case_id(index: int) -> str:
    """The id (and folder name) of case ``index`` of a cohort: ``case_0001``."""
    return f"case_{index:04d}"


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of case ``index`` of a cohort with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_case(rng: np.random.Generator, template: Template) -> dict:
    """All random parameters of one case: the patient and its radiograph (JSON-able)."""
    u = rng.uniform
    patient = sample_patient(rng, template)

    def femur() -> dict:
        return {"flexion_deg": float(u(-10.0, 15.0)), "abduction_deg": float(u(-10.0, 10.0)),
                "rotation_deg": float(u(-15.0, 15.0))}

    xray = {
        "sid_mm": float(u(1000.0, 1150.0)),
        "object_to_detector_mm": float(u(150.0, 220.0)),
        "isocentre_offset_mm": [float(u(-15, 15)), float(u(-10, 10)), float(u(-15, 15))],
        "pelvis_rotation_deg": [float(u(-5, 5)), float(u(-3, 3)), float(u(-5, 5))],
        "femur_left": femur(),
        "femur_right": femur(),
        "photons_per_pixel": float(np.exp(u(np.log(2e4), np.log(1e5)))),
        "scatter_fraction": float(u(0.05, 0.3)),
        "scatter_sigma_mm": float(u(25.0, 60.0)),
        "blur_sigma_px": float(u(0.5, 0.9)),
        "unsharp_weight": float(u(0.5, 1.5)),
        "unsharp_sigma_mm": float(u(15.0, 35.0)),
        "window_percentiles": [float(u(0.2, 2.0)), float(u(99.0, 99.9))],
        "gamma": float(u(1.0, 1.6)),
        "noise_seed": int(rng.integers(2**31)),
    }
    return {"patient": patient, "xray": xray}


def femur_motion(side: str, angles: dict, centre: np.ndarray) -> np.ndarray:
    """World (LPS) motion of a femur about its hip centre from anatomical angles (degrees).

    Flexion brings the knee anterior (-y), abduction brings it lateral (+x on the left,
    -x on the right), internal rotation turns the femur's front medially.
    """
    sign = 1.0 if side == "left" else -1.0
    rx = -angles["flexion_deg"]
    ry = -sign * angles["abduction_deg"]
    rz = -sign * angles["rotation_deg"]
    return rigid((rx, ry, rz), (0.0, 0.0, 0.0), centre)


def case_geometry(size: CohortSize, xray: dict) -> Geometry:
    """The perspective detector of a case's radiograph: ``size``'s pixels and the case's
    sampled ``xray`` distances (source-image ``sid_mm``, ``object_to_detector_mm``)."""
    sid = xray["sid_mm"]
    return Geometry(size.detector_px, size.detector_px, (size.pixel_mm, size.pixel_mm), sid,
                    sid - xray["object_to_detector_mm"], False)


def build_case(template: Template, params: dict, size: CohortSize
               ) -> tuple[Volume, Volume, SimulatedRadiograph, dict[str, np.ndarray], dict]:
    """CT, labels (cropped), radiograph (of the whole body), rigid-body poses (world->camera)
    and derived values of a case."""
    patient = build_patient(template, params["patient"], size.ct_spacing_mm)
    ct, labels, derived = patient.ct, patient.labels, patient.derived
    x = params["xray"]
    geometry = case_geometry(size, x)
    hips = {k: np.array(v) for k, v in derived["hip_centres_mm"].items()}
    centre = (hips["left"] + hips["right"]) / 2
    # centred on the CT centre (the region's centre, see patient.py), as the default AP view
    iso = ct.center + np.array(x["isocentre_offset_mm"])
    pelvis = default_ap_pose(iso, geometry) @ rigid(x["pelvis_rotation_deg"], (0, 0, 0), centre)
    poses = {"pelvis": pelvis}
    bodies = {"pelvis": RigidBody(PELVIS_LABELS, pelvis)}
    for side in ("left", "right"):
        p = pelvis @ femur_motion(side, x[f"femur_{side}"], hips[side])
        poses[f"femur_{side}"] = p
        bodies[f"femur_{side}"] = RigidBody((FEMUR[side],), p, tuple(hips[side]))
    settings = XraySettings(
        photons_per_pixel=x["photons_per_pixel"], scatter_fraction=x["scatter_fraction"],
        scatter_sigma_mm=x["scatter_sigma_mm"], blur_sigma_mm=x["blur_sigma_px"] * size.pixel_mm,
        window_percentiles=tuple(x["window_percentiles"]), gamma=x["gamma"],
        unsharp_weight=x["unsharp_weight"], unsharp_sigma_mm=x["unsharp_sigma_mm"],
        noise_seed=x["noise_seed"])
    radiograph = simulate_radiograph(patient.body_ct, patient.body_labels, geometry, pelvis,
                                     bodies, settings)
    return ct, labels, radiograph, poses, derived


def truth_objects(ct: Volume, labels: Volume, objects: ObjectMap) -> dict[str, dict]:
    """Volume (cm3) and MDRR mass (g; lean mass of muscles, bone mass of bones) of every
    object of ``objects`` in the CT (HU) and its label map."""
    hu = ct.array.astype(np.float64)
    out: dict[str, dict] = {}
    for o in objects.objects:
        sel = np.isin(labels.array, o.labels)
        rho = hu_conv.mdrr_density(hu[sel], o.is_muscle)
        out[o.name] = {"kind": o.kind, "volume_cm3": float(sel.sum() * ct.voxel_volume_cm3),
                       "mass_g": float(rho.sum() * ct.voxel_volume_cm3)}
    return out


def generate_case(index: int, seed: int, out: Path, size: str = "demo",
                  templates: list[Path] | None = None) -> Path:
    """Generate case ``index`` of the cohort ``seed`` into ``out/case_XXXX`` (atomically)."""
    preset = _size(size)
    dirs = find_templates(templates)
    template = load_template(dirs[index % len(dirs)])
    params = sample_case(case_rng(seed, index), template)
    try:
        with warnings.catch_warnings(record=True) as caught:
            ct, labels, radiograph, poses, derived = build_case(template, params, preset)
    finally:
        warn_again(recorded(caught), f"{case_id(index)}: ")  # named by their case
    final = Path(out) / case_id(index)
    tmp = Path(out) / f".{case_id(index)}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_image(ct.to_sitk(), tmp / "ct.nii.gz")
    _write_image(labels.to_sitk(), tmp / "labels.nii.gz")
    g = radiograph.geometry
    _write_image(detector_image(radiograph.image, g), tmp / "xray.mha")
    write_json(tmp / "xray.json", {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "geometry": g.to_json(),
        "effective_energy_kev": hu_conv.EFFECTIVE_ENERGY_KEV, "processing": radiograph.processing})
    write_json(tmp / "truth.json", {
        "format": TRUTH_FORMAT, "version": VERSION, "units": {"volume": "cm3", "mass": "g"},
        "files": file_sizes(tmp), "objects": truth_objects(ct, labels, synthetic_map()),
        "objects_per_side": truth_objects(ct, labels, synthetic_map().per_side()),
        "poses": {k: v.tolist() for k, v in poses.items()},
        "params": {"cohort_seed": seed, "index": index, "size": size, **params},
        "derived": derived})
    if final.is_dir() and complete_case_truth(final) is None:
        shutil.rmtree(final, ignore_errors=True)  # a damaged case folder (no truth, a file cut short): made again
    try:
        os.replace(tmp, final)
    except OSError:  # another run on this folder finished the case first: same seed, same bytes
        if complete_case_truth(final) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def generate_cohort(n: int, seed: int, out: Path, size: str = "demo", workers: int | None = None,
                    templates: list[Path] | None = None, progress: Progress | None = None) -> Path:
    """Generate (or finish) an ``n``-case cohort in ``out``; returns ``out``.

    ``workers`` processes (default: all cores, at most one per case; 1 runs in this process). Cases already complete
    are kept; a run with other settings than ``out/cohort.json`` records, or with a smaller
    ``n``, or into a folder of other files (:func:`check_resume`), is refused.
    """
    if n < 1:
        raise InputError(f"n must be >= 1 case, got {n}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    preset = _size(size)
    out = Path(out)
    dirs = find_templates(templates)
    header = {"format": COHORT_FORMAT, "version": VERSION, "seed": int(seed), "n": int(n),
              "size": size, "size_settings": asdict(preset),
              "object_map": synthetic_map().to_json(),
              "generator": {"name": "mskdex cohort", "version": GENERATOR_VERSION,
                            "code_version": __version__,
                            "templates": [d.name for d in dirs],
                            "template_sha256": {d.name: _template_digest(d) for d in dirs},
                            "effective_energy_kev": hu_conv.EFFECTIVE_ENERGY_KEV}}
    old = check_resume(out, header, ("format", "version", "seed", "size", "generator"))
    if isinstance(old.get("n"), int) and old["n"] > n:
        raise InputError(f"{out / 'cohort.json'}: the cohort has n = {old['n']} cases; a rerun may finish or "
                         f"extend it, not shrink it to {n}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ".case_*.partial-*")  # of runs killed while writing a case
    write_json(out / "cohort.json", {**header, "complete": False, "cases": []})
    todo = [i for i in range(n) if complete_case_truth(out / case_id(i)) is None]
    done = n - len(todo)
    report = progress or silent
    report(done / n, f"{done}/{n} cases")
    paths = [str(d) for d in dirs]
    jobs = [(i, seed, out, size, paths) for i in todo]
    try:
        for done, _ in enumerate(run_jobs(generate_case, jobs, workers), done + 1):
            report(done / n, f"{done}/{n} cases")
    except BaseException:
        if not old and not any((out / case_id(i) / "truth.json").is_file() for i in range(n)):
            (out / "cohort.json").unlink(missing_ok=True)  # a new cohort that made nothing binds no rerun
        raise
    write_json(out / "cohort.json", {**header, "complete": True, "cases": [case_id(i) for i in range(n)]})
    return out


def file_sizes(folder: Path) -> dict[str, int]:
    """Byte size of each of a case's :data:`CASE_FILES` but ``truth.json``, which records them."""
    return {name: (folder / name).stat().st_size for name in CASE_FILES if name != "truth.json"}


def complete_case_truth(folder: Path) -> dict | None:
    """The ``truth.json`` of the case in ``folder`` when it holds the :data:`CASE_FILES` of the
    sizes that file records (cases made before release 0.3.7 record none: then the files need
    only be there); None for a case missing, damaged or cut short."""
    try:
        truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
        if not isinstance(truth, dict):
            return None
        if "files" not in truth:
            return truth if all((folder / name).is_file() for name in CASE_FILES) else None
        return truth if truth["files"] == file_sizes(folder) else None
    except (OSError, ValueError):
        return None


def _template_digest(folder: Path) -> str:
    """SHA-256 over a template's files and the ``template.json`` it uses (a resumed cohort
    must be made from the same templates, not only from folders of the same names)."""
    digest = hashlib.sha256()
    settings = template_settings(folder)[1]
    for path in sorted(p for p in folder.iterdir() if p.is_file()) + ([settings] if settings else []):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _size(size: str) -> CohortSize:
    if size not in SIZES:
        raise InputError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return SIZES[size]


def check_resume(out: Path, header: dict, keys: tuple[str, ...]) -> dict:
    """The ``cohort.json`` of ``out`` if it agrees with this run's ``header`` on ``keys`` (the
    package's version aside): a run resumes its own cohort. Refuses (InputError) another
    cohort, and a folder that holds anything (hidden files aside) but no ``cohort.json``: a
    cohort never writes into a folder of other files (:func:`~..fileio.refuse_other_kind` names
    the MSKdeX output it holds). Returns {} for a new or empty folder."""
    refuse_other_kind(out, "cohort")
    path = out / "cohort.json"
    if not path.is_file():
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise InputError(f"{out}: holds files but no cohort.json; expected a new or empty folder, or a cohort "
                             "to resume; choose another --out")
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e}); remove the folder or choose another --out") from None
    if not isinstance(old, dict):
        raise InputError(f"{path}: expected a JSON object (a cohort header), got {type(old).__name__}; "
                         "remove the folder or choose another --out")
    # the generator's version says what the cases are; the package's version (code_version) is
    # recorded only; a header written before templates were hashed is compared on what it recorded
    recorded = old.get("generator")
    ignored = {"code_version"} | ({"template_sha256"} if isinstance(recorded, dict) and
                                   "template_sha256" not in recorded else set())
    old = {**old, "generator": _without(old.get("generator"), ignored)}
    header = {**header, "generator": _without(header["generator"], ignored)}
    for key in keys:
        if old.get(key) != header[key]:
            raise InputError(f"{path}: field {key!r} is {old.get(key)!r} but this run has "
                             f"{header[key]!r}; resume with the same settings or choose another --out")
    return old


def _without(d: object, keys: set[str]) -> object:
    """A dict without ``keys`` (anything else as it is)."""
    return {k: v for k, v in d.items() if k not in keys} if isinstance(d, dict) else d


def _write_image(image: sitk.Image, path: Path) -> None:
    """Write with compression; ITK writes no time stamps, so equal images give equal bytes."""
    sitk.WriteImage(image, str(path), True)
