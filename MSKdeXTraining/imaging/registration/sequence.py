"""The pelvis and both femurs of a CT registered in turn, then refined jointly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ...errors import InputError
from ...objects import ObjectMap
from ..geometry import Geometry, default_ap_pose
from ..volume import Volume
from .bodies import default_isocenter, femoral_head_center, rigid_bodies
from .optimise import _Objective, register_bone
from .render import BodyRenderer, SoftTissueRenderer, render_body
from .settings import Progress, RegistrationResult, RegistrationSettings

Job = tuple[np.ndarray, RegistrationSettings, np.ndarray | None]
"""A body's registration setup: start pose (world -> camera), settings, rotation centre (LPS mm;
None: the body's centroid)."""


def _body_job(name: str, bodies: dict[str, tuple[int, ...]], labels: Volume, objects: ObjectMap,
              geometry: Geometry, settings: RegistrationSettings, start_pose: np.ndarray | None,
              pelvis_pose: np.ndarray | None) -> tuple[Job, RegistrationSettings]:
    """The body's :data:`Job` and the settings of its first pass (the pelvis from the default
    view adds the in-plane start search)."""
    default = start_pose is None and (name == "pelvis" or pelvis_pose is None)
    start = (default_ap_pose(default_isocenter(labels, objects), geometry) if default
             else np.asarray(start_pose if start_pose is not None else pelvis_pose, float))
    if name == "pelvis":
        search = settings.start_search_mm
        first = replace(settings, grid_search_mm=(search, search / 6)) if default else settings
        return (start, settings, None), first
    femur = replace(settings, scale=settings.femur_scale, translation_sd_mm=settings.femur_translation_sd_mm,
                    gc_threshold=max(settings.gc_threshold, settings.femur_gc_threshold))
    return (start, femur, femoral_head_center(labels, bodies[name])), femur


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
    as the first pass of :func:`register_bodies` does, without the joint refinement (which
    needs every body).

    Start: ``start_pose`` (world -> camera) if given; else a femur starts from ``pelvis_pose``
    (the registered pelvis, the CT's hip posture) and the pelvis, or a femur without it, from
    the AP view about :func:`default_isocenter` (the pelvis then with the in-plane search).
    """
    bodies = rigid_bodies(objects)
    if name not in bodies:
        raise InputError(f"bone: expected one of {sorted(bodies)}, got {name!r}")
    _require_voxels(labels, {name: bodies[name]}, source)
    settings = settings or RegistrationSettings()
    (start, _, centre), first = _body_job(name, bodies, labels, objects, geometry, settings, start_pose,
                                          pelvis_pose)
    return register_bone(ct, labels, bodies[name], radiograph, geometry, start, first, progress, centre)


def register_bodies(ct: Volume, labels: Volume, objects: ObjectMap, radiograph: np.ndarray,
                    geometry: Geometry, start_pose: np.ndarray | None = None,
                    settings: RegistrationSettings | None = None,
                    progress: Progress | None = None,
                    source: str = "label map") -> dict[str, RegistrationResult]:
    """Register the pelvis, then each femur, of one CT to its radiograph, then (with
    ``settings.refine``) refine them jointly (:func:`refine_jointly`). ``source`` names the
    label map in the error raised, before any work, for a body without voxels.

    The pelvis (with sacrum) starts from ``start_pose`` (default: the AP view about
    :func:`default_isocenter`, with a search over in-plane shifts of +-``settings.start_search_mm``).
    Each femur then starts from the registered pelvis pose (the CT's hip posture), turns
    about its head (:func:`femoral_head_center`) and has a translation prior of
    ``settings.femur_translation_sd_mm`` (the head stays in the acetabulum).
    """
    settings = settings or RegistrationSettings()
    bodies = rigid_bodies(objects)
    _require_voxels(labels, bodies, source)
    names = list(bodies)
    steps = (2 if settings.refine else 1) * len(names)

    def sub(step: int, name: str) -> Progress:
        def report(f: float, msg: str) -> None:
            if progress is not None:
                progress((step + f) / steps, f"{name}: {msg}")
        return report

    results: dict[str, RegistrationResult] = {}
    jobs: dict[str, Job] = {}
    for k, name in enumerate(names):
        pelvis_pose = results["pelvis"].pose if "pelvis" in results else None
        jobs[name], first = _body_job(name, bodies, labels, objects, geometry, settings,
                                      start_pose if name == "pelvis" else None, pelvis_pose)
        start, _, centre = jobs[name]
        results[name] = register_bone(ct, labels, bodies[name], radiograph, geometry, start, first,
                                      sub(k, name), centre)
    if settings.refine:
        results = refine_jointly(ct, labels, bodies, radiograph, geometry, results, jobs,
                                 lambda name, k: sub(len(names) + k, f"refine {name}"))
    return results


def refine_jointly(ct: Volume, labels: Volume, bodies: dict[str, tuple[int, ...]],
                   radiograph: np.ndarray, geometry: Geometry,
                   results: dict[str, RegistrationResult],
                   jobs: dict[str, Job],
                   progress: Callable[[str, int], Progress]) -> dict[str, RegistrationResult]:
    """Refine each registered body in turn at full resolution, its DRR summed with the rest
    of the patient at the current poses: the other bodies' DRRs and soft-tissue shares (fixed)
    and its own share (warped with it; :class:`SoftTissueRenderer`).

    ``jobs[name]``: the body's (start pose, settings, rotation centre) of the first pass. A
    refinement losing more than ``refine_max_gc_drop`` (settings) of the body's own GC (both poses
    scored in the first pose's GC region) is rejected.
    ``seconds``, ``evaluations`` and ``level_gc`` of a result cover both passes.
    """
    names = list(bodies)
    results = dict(results)
    t0 = time.perf_counter()
    soft = SoftTissueRenderer(ct, labels, bodies, geometry, results["pelvis"].pose)
    drrs = {n: render_body(ct, labels, bodies[n], results[n].pose, geometry) for n in names}
    shares = {n: soft.render(n, results[n].pose, geometry) for n in names}
    setup_s = (time.perf_counter() - t0) / len(names)
    for k, name in enumerate(names):
        t0 = time.perf_counter()
        start, settings, centre = jobs[name]
        full = [lv for lv in settings.levels if lv.geometry(geometry).shape == geometry.shape]
        rest = sum(drrs[n] + shares[n] for n in names if n != name)
        refine = replace(settings, levels=tuple(full or settings.levels[-1:]), grid_search_mm=None)
        first = results[name]
        refined = register_bone(ct, labels, bodies[name], radiograph, geometry, start, refine,
                                progress(name, k), centre, rest, first.params, shares[name])
        best = first
        gc_first, gc_refined = _own_gc(ct, labels, bodies[name], radiograph, geometry, start, settings,
                                       first.center_cam, first.params, [first.params, refined.params])
        if gc_refined >= gc_first - settings.refine_max_gc_drop:  # else pulled away: keep the first
            best = refined
            drrs[name] = render_body(ct, labels, bodies[name], best.pose, geometry)
            shares[name] = soft.render(name, best.pose, geometry)
        results[name] = replace(best, evaluations=first.evaluations + refined.evaluations,
                                level_gc=first.level_gc + refined.level_gc,
                                seconds=first.seconds + setup_s + time.perf_counter() - t0)
    return results


def _own_gc(ct: Volume, labels: Volume, body_labels: tuple[int, ...], radiograph: np.ndarray,
            geometry: Geometry, start_pose: np.ndarray, settings: RegistrationSettings,
            center_cam: np.ndarray, params_ref: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """The body's own GC (its DRR alone) at each of ``params`` (deg, mm, about ``center_cam``
    after ``start_pose``), all within the one GC region around ``params_ref``."""
    scale = np.asarray(settings.scale, float)
    obj = _Objective(BodyRenderer(ct, labels, body_labels),
                     torch.from_numpy(np.asarray(radiograph, np.float32)), geometry, start_pose,
                     center_cam, scale, settings, np.asarray(params_ref, float) / scale)
    xs = np.asarray(params, float) / scale
    return -obj(xs) + obj.penalty(xs)
