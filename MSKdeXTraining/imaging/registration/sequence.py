"""The pelvis and both femurs of a CT registered in turn: each femur from the registered pelvis."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...errors import InputError
from ...objects import ObjectMap
from ...progress import Progress
from ..geometry import Geometry, default_ap_pose
from ..volume import Volume
from .bodies import default_isocenter, femoral_head_center, rigid_bodies, rigid_body
from .optimise import register_bone
from .settings import RegistrationResult, RegistrationSettings


def _require_voxels(labels: Volume, bodies: dict[str, tuple[int, ...]], source: str) -> None:
    for name, values in bodies.items():
        if not np.isin(labels.array, values).any():
            raise InputError(f"{source}: body {name!r} (label values {list(values)}) has no voxels; "
                             "registration needs the pelvis and both femurs")


def register_body(ct: Volume, labels: Volume, objects: ObjectMap, name: str, radiograph: np.ndarray,
                  geometry: Geometry, start_pose: np.ndarray | None = None,
                  pelvis_pose: np.ndarray | None = None,
                  settings: RegistrationSettings | None = None, progress: Progress | None = None,
                  source: str = "label map") -> RegistrationResult:
    """Register one body of :func:`rigid_bodies` (``pelvis``, ``femur_left``, ``femur_right``)
    as :func:`register_bodies` does.

    Start: ``start_pose`` (world -> camera) if given; else a femur starts from ``pelvis_pose``
    (the registered pelvis, the CT's hip posture) and the pelvis, or a femur without it, from
    the AP view about :func:`default_isocenter` (the pelvis then with the in-plane search).
    """
    values = rigid_body(objects, name)
    _require_voxels(labels, {name: values}, source)
    settings = settings or RegistrationSettings()
    default = start_pose is None and (name == "pelvis" or pelvis_pose is None)
    start = (default_ap_pose(default_isocenter(labels, objects), geometry) if default
             else np.asarray(start_pose if start_pose is not None else pelvis_pose, float))
    if name == "pelvis":
        search = settings.start_search_mm
        if default:
            settings = replace(settings, grid_search_mm=(search, search / 6))
        return register_bone(ct, labels, values, radiograph, geometry, start, settings, progress)
    femur = replace(settings, scale=settings.femur_scale, translation_sd_mm=settings.femur_translation_sd_mm,
                    gc_threshold=max(settings.gc_threshold, settings.femur_gc_threshold),
                    restarts=settings.femur_restarts)
    return register_bone(ct, labels, values, radiograph, geometry, start, femur, progress,
                         femoral_head_center(labels, values))


def register_bodies(ct: Volume, labels: Volume, objects: ObjectMap, radiograph: np.ndarray,
                    geometry: Geometry, start_pose: np.ndarray | None = None,
                    settings: RegistrationSettings | None = None,
                    progress: Progress | None = None,
                    source: str = "label map", check_mirror: bool = False) -> dict[str, RegistrationResult]:
    """Register the pelvis, then each femur, of one CT to its radiograph. ``source`` names
    the label map in the error raised, before any work, for a body without voxels.

    With ``check_mirror`` the pelvis is also registered to the film mirrored left-right (one
    more registration): the pelvis is nearly symmetric, so a film stored mirrored registers too,
    at a wrong pose, with a GC above the threshold; if the mirror fits at least as well, the
    pelvis result is not ok (:attr:`RegistrationResult.mirrored`).

    The pelvis (with sacrum) starts from ``start_pose`` (default: the AP view about
    :func:`default_isocenter`, with a search over in-plane shifts of +-``settings.start_search_mm``).
    Each femur then starts from the registered pelvis pose (the CT's hip posture), turns
    about its head (:func:`femoral_head_center`), has a translation prior of
    ``settings.femur_translation_sd_mm`` (the head stays in the acetabulum) and restarts its
    last CMA-ES level from ``settings.femur_restarts`` (flexion, which an AP film hardly shows).
    """
    bodies = rigid_bodies(objects)
    _require_voxels(labels, bodies, source)
    names = list(bodies)

    steps = names + ["pelvis, film mirrored"] * check_mirror

    def sub(step: int) -> Progress:
        def report(f: float, msg: str) -> None:
            if progress is not None:
                progress((step + f) / len(steps), f"{steps[step]}: {msg}")
        return report

    results: dict[str, RegistrationResult] = {}
    for k, name in enumerate(names):
        results[name] = register_body(ct, labels, objects, name, radiograph, geometry,
                                      start_pose if name == "pelvis" else None,
                                      results["pelvis"].pose if "pelvis" in results else None,
                                      settings, sub(k), source)
    if check_mirror:  # from the default start: a given start pose is the film's
        mirror = register_body(ct, labels, objects, "pelvis", np.ascontiguousarray(radiograph[:, ::-1]), geometry,
                               None, None, settings, sub(len(names)), source)
        pelvis = results["pelvis"]
        results["pelvis"] = replace(pelvis, mirror_gc=mirror.gc, ok=pelvis.ok and pelvis.gc > mirror.gc)
    return results
