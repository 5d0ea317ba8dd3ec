"""Object-wise DRRs of a CT and its label map: read, validate, render, write, check.

The high-level entry point of the DRR engine, shared by ``mskdex drr``, the Slicer module
and the dataset preparation. :func:`render_drr` works on volumes in memory,
:func:`drr_from_files` adds reading, validation and output.

Outputs (``write_drr``): one stack per DRR type, ``wvdrr.nrrd``, ``vdrr.nrrd``,
``mdrr.nrrd``: 3D float32 images of size (cols, rows, N objects); the first two axes are the
detector with spacing = detector pixel spacing (mm) and origin at the centre of pixel (0, 0)
in detector (u, v) mm, the third axis is the object (spacing 1). The NRRD header holds
``mskdex_format``, ``mskdex_version``, ``drr_type``, ``units``, ``objects`` (JSON list),
``geometry`` and ``pose`` (JSON). ``metrics.json`` (format ``mskdex-drr-metrics`` v1) holds,
per object, volume (cm3) and mass (g) from the 3D voxels and from the DRR sums, and (written
by :func:`drr_from_files`) the segmentation QC of the CT and labels (``qc``: metal near an
object, objects cut by the scan range, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .ct_input import read_ct_and_labels
from .drr_types import DRR_TYPES, DRR_UNITS
from .errors import InputError
from .fileio import refuse_existing, refuse_overwrite, staged_folder, write_json
from .imaging import hu as hu_conv
from .imaging.geometry import Geometry, default_ap_pose
from .imaging.projector import DRRStack, project_objects
from .imaging.volume import Volume, detector_image
from .objects import ObjectMap, load_object_map
from .progress import Progress
from .qc import plausible_volume, segmentation_qc, volume_flag

METRICS_FORMAT = "mskdex-drr-metrics"
STACK_FORMAT = "mskdex-drr-stack"
FORMAT_VERSION = 1
#: Relative tolerance between DRR sums and 3D values (objects inside the field of view).
SUM_TOLERANCE = 1e-3
#: What to do about a label map on another grid than the CT's.
RESAMPLE_OPTION = "resample the labels onto the CT grid (`--resample-labels`: nearest neighbour)"


@dataclass
class DRRResult:
    """A rendered stack, its metrics (JSON-ready dict) and the pose used (world->camera)."""

    stack: DRRStack
    metrics: dict
    pose: np.ndarray


def voxel_metrics(ct: Volume, labels: Volume, objects: ObjectMap,
                  source: str = "label map") -> dict[str, np.ndarray]:
    """Per-object values straight from the 3D voxels (float64).

    Returns ``voxels`` (N,), ``volume_cm3`` (N,), ``mass_g`` (N,) (MDRR mass: lean mass for
    muscles, mass for bones) and ``attenuation_cm2`` (N,) (integral of mu over the volume; the
    WVDRR sum equals it only in parallel geometry, since line integrals weight by depth).
    """
    table = objects.lookup_table(labels.array, source)
    obj = table.astype(np.int16)[labels.array.reshape(-1)]  # small dtype: CTs are large
    inside = np.flatnonzero(obj >= 0)
    obj = obj[inside].astype(np.int64)
    hu = ct.array.reshape(-1)[inside].astype(np.float64)
    is_muscle = np.array([o.is_muscle for o in objects.objects])[obj]
    n, v = len(objects), ct.voxel_volume_cm3
    return {
        "voxels": np.bincount(obj, minlength=n),
        "volume_cm3": np.bincount(obj, minlength=n) * v,
        "mass_g": np.bincount(obj, hu_conv.mdrr_density(hu, is_muscle), minlength=n) * v,
        "attenuation_cm2": np.bincount(obj, hu_conv.attenuation(hu), minlength=n) * v,
    }


def view_center(labels: Volume, objects: ObjectMap) -> np.ndarray:
    """Isocentre (LPS mm) of the default view of a CT: the centre of the bounding box of its
    hip-region objects (those not marked ``cut_at_region``; else of all mapped objects), the
    label map's centre when it holds none. A CT running past the hip then still shows it."""
    for values in (objects.region_labels(), [v for o in objects.objects for v in o.labels]):
        mask = np.isin(labels.array, values)
        if mask.any():
            return labels.box_center(mask)
    return labels.center


def render_drr(ct: Volume, labels: Volume, objects: ObjectMap, geometry: Geometry | None = None,
               pose: np.ndarray | None = None, device: str = "cpu", source: str = "label map",
               progress: Progress | None = None) -> DRRResult:
    """Render the (3, N, H, W) stack and compare its sums with the 3D values.

    ``pose`` (4x4 world->camera, mm) defaults to the AP view (:func:`imaging.geometry.default_ap_pose`)
    centred on the objects (:func:`view_center`). Objects absent from the labels get zero
    channels and ``"absent": true`` in the metrics.
    """
    geometry = geometry or Geometry()
    pose = (default_ap_pose(view_center(labels, objects), geometry) if pose is None
            else np.asarray(pose, float))
    stack = project_objects(ct, labels, objects, geometry, pose, device=device, source=source,
                            progress=progress)
    return DRRResult(stack, drr_metrics(stack, voxel_metrics(ct, labels, objects, source),
                                        objects, ct.voxel_volume_cm3), pose)


def drr_metrics(stack: DRRStack, voxels: dict[str, np.ndarray], objects: ObjectMap,
                voxel_cm3: float) -> dict:
    """JSON-ready metrics: per object 3D and DRR-sum volume/mass, lost fractions, flags.

    ``implausible_volume``: objects present whose 3D volume lies outside their range
    (:func:`.qc.plausible_volume`; a label file read with another map's values shows so).
    """
    sums, lost = stack.sums(), stack.lost_fraction()
    rows = []
    for i, o in enumerate(objects.objects):
        v3, m3 = float(voxels["volume_cm3"][i]), float(voxels["mass_g"][i])
        vd, md = float(sums[1, i]), float(sums[2, i])
        implausible = volume_flag(v3, plausible_volume(o.name)) if v3 > 0 else None
        rows.append({
            "name": o.name, "kind": o.kind, "labels": list(o.labels),
            "voxels": int(voxels["voxels"][i]), "absent": bool(voxels["voxels"][i] == 0),
            "volume_cm3_3d": v3, "volume_cm3_drr": vd, "mass_g_3d": m3, "mass_g_drr": md,
            "attenuation_cm2_3d": float(voxels["attenuation_cm2"][i]),
            "wvdrr_sum_cm2": float(sums[0, i]),
            "lost_fraction": {t: float(lost[k, i]) for k, t in enumerate(DRR_TYPES)},
            "volume_rel_error": _rel(vd, v3), "mass_rel_error": _rel(md, m3),
            "implausible_volume": None if implausible is None else implausible[1],
        })
    worst = max((max(abs(r["volume_rel_error"]), abs(r["mass_rel_error"])) for r in rows), default=0)
    return {"format": METRICS_FORMAT, "version": FORMAT_VERSION, "object_map": objects.name,
            "geometry": stack.geometry.to_json(), "voxel_volume_cm3": voxel_cm3,
            "units": {"volume": "cm3", "mass": "g", "attenuation": "cm2", **DRR_UNITS},
            "absent": [r["name"] for r in rows if r["absent"]],
            "outside_fov": [r["name"] for r in rows if r["lost_fraction"]["vdrr"] > 0],
            "implausible_volume": [r["name"] for r in rows if r["implausible_volume"]],
            "max_rel_error": worst, "sums_within_tolerance": bool(worst <= SUM_TOLERANCE),
            "objects": rows}


def _rel(a: float, b: float) -> float:
    return 0.0 if a == b else (a - b) / b if b else float("inf")


def write_drr(result: DRRResult, out_dir: str | Path, inputs: list[str | Path] = ()) -> dict[str, Path]:
    """Write ``wvdrr.nrrd``, ``vdrr.nrrd``, ``mdrr.nrrd`` and, last, ``metrics.json``
    (:func:`~MSKdeXTraining.fileio.staged_folder`)."""
    out_dir = Path(out_dir)
    stack = result.stack
    g = stack.geometry
    data = stack.data.detach().float().cpu().numpy()
    names = {**{t: f"{t}.nrrd" for t in DRR_TYPES}, "metrics": "metrics.json"}
    for name in names.values():
        refuse_overwrite(out_dir / name, list(inputs))
    with staged_folder(out_dir, last=names["metrics"]) as stage:
        for k, t in enumerate(DRR_TYPES):
            image = detector_image(data[k], g)  # (N, H, W) -> size (W, H, N)
            for key, value in {"mskdex_format": STACK_FORMAT, "mskdex_version": str(FORMAT_VERSION),
                               "drr_type": t, "units": DRR_UNITS[t], "objects": json.dumps(stack.names),
                               "geometry": json.dumps(g.to_json()),
                               "pose": json.dumps(np.asarray(result.pose).tolist())}.items():
                image.SetMetaData(key, value)
            sitk.WriteImage(image, str(stage / names[t]), True)
        write_json(stage / names["metrics"], dict(result.metrics, files={t: names[t] for t in DRR_TYPES}))
    return {k: out_dir / name for k, name in names.items()}


def read_drr_stack(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read one stack written by :func:`write_drr`: array (N, H, W) and its metadata."""
    image = sitk.ReadImage(str(path))
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    if meta.get("mskdex_format") != STACK_FORMAT:
        raise InputError(f"{path}: field 'mskdex_format' must be {STACK_FORMAT!r}, "
                         f"got {meta.get('mskdex_format')!r}")
    if meta.get("mskdex_version") != str(FORMAT_VERSION):
        raise InputError(f"{path}: field 'mskdex_version' must be {FORMAT_VERSION}, "
                         f"got {meta.get('mskdex_version')!r}")
    for key in ("objects", "geometry", "pose"):
        try:
            meta[key] = json.loads(meta[key])
        except (KeyError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: field {key!r} missing or not JSON ({e})") from None
    return sitk.GetArrayFromImage(image), meta


def drr_from_files(ct_path: str | Path, labels_path: str | Path, out_dir: str | Path,
                   objects: str | Path | ObjectMap = "synthetic", geometry: Geometry | None = None,
                   resample: bool = False, per_side: bool = False, device: str = "cpu",
                   progress: Progress | None = None) -> DRRResult:
    """Read CT + labels (:func:`~MSKdeXTraining.ct_input.read_ct_and_labels`: on one grid, holding
    the map's objects, in HU), render every object's DRRs and write them to ``out_dir``.

    ``objects`` is an :class:`ObjectMap`, a built-in map name or a JSON path; ``per_side``
    splits objects that declare sides into ``<name>_left`` / ``<name>_right``.
    """
    whole = objects if isinstance(objects, ObjectMap) else load_object_map(objects)
    omap = whole.per_side() if per_side else whole
    refuse_existing([Path(out_dir) / f"{t}.nrrd" for t in DRR_TYPES] + [Path(out_dir) / "metrics.json"],
                    [ct_path, labels_path])
    ct, labels = read_ct_and_labels(ct_path, labels_path, omap, resample, RESAMPLE_OPTION)
    result = render_drr(ct, labels, omap, geometry, device=device, source=str(labels_path),
                        progress=progress)
    qc = segmentation_qc(labels, omap, ct=ct)
    swapped = segmentation_qc(labels, whole).objects.items() if per_side else ()  # split objects have no sides
    for name, q in swapped:  # to compare: the whole objects' check, on each side
        if "sides_swapped" in q.flags:
            for side in whole[name].sides:
                qc.objects[f"{name}_{side}"].flags.append("sides_swapped")
                qc.objects[f"{name}_{side}"].messages.append(q.messages[q.flags.index("sides_swapped")])
    result.metrics.update(ct=str(ct_path), labels=str(labels_path), resampled_labels=resample,
                          qc=qc.to_json())
    write_drr(result, out_dir, [ct_path, labels_path])
    return result
