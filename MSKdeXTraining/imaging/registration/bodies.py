"""The rigid bodies of a label map (pelvis + sacrum, each femur), their centres and surface
points, and the registration error measures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ...errors import InputError
from ...objects import RIGID_BODIES, ObjectMap, ObjectMapError
from ..geometry import Geometry, apply, fit_sphere, project
from ..volume import Volume


def rigid_bodies(objects: ObjectMap) -> dict[str, tuple[int, ...]]:
    """Label values of each rigid body (:data:`~MSKdeXTraining.objects.RIGID_BODIES`): ``pelvis``
    (pelvis + sacrum), ``femur_left/right``.

    The femur object must declare ``sides`` with ``left`` and ``right`` label values.
    """
    try:
        pelvis = objects["pelvis"].labels
        femur = objects["femur"]
    except KeyError as e:
        raise ObjectMapError(f"{objects.title}: registration needs the objects "
                             f"'pelvis' and 'femur' ({e})") from None
    if "sacrum" in objects.names:
        pelvis = pelvis + objects["sacrum"].labels
    if not {"left", "right"} <= set(femur.sides):
        raise ObjectMapError(f"{objects.title}: object 'femur' needs \"sides\" with "
                             f"'left' and 'right' label values to register each femur, got "
                             f"{sorted(femur.sides)}")
    return dict(zip(RIGID_BODIES, (tuple(pelvis), tuple(femur.sides["left"]), tuple(femur.sides["right"]))))


def rigid_body(objects: ObjectMap, name: str) -> tuple[int, ...]:
    """Label values of the rigid body ``name`` (:func:`rigid_bodies`); InputError naming the
    field ``bone`` unless it is one of them."""
    bodies = rigid_bodies(objects)
    if name not in bodies:
        raise InputError(f"bone: expected one of {sorted(bodies)}, got {name!r}")
    return bodies[name]


def body_centroid(labels: Volume, body_labels: tuple[int, ...]) -> np.ndarray:
    """World (LPS mm) centroid of the voxels of a body; :class:`InputError` if it has none."""
    idx = np.argwhere(np.isin(labels.array, body_labels))
    if idx.size == 0:
        raise InputError(f"label map has no voxels with values {list(body_labels)}")
    return apply(labels.affine, idx.mean(axis=0)[::-1])


def default_isocenter(labels: Volume, objects: ObjectMap) -> np.ndarray:
    """Start isocentre (LPS mm) of the pelvis search: the midpoint of the femoral heads.

    Hip radiographs are centred on the hip joints; the pelvis search then covers in-plane
    offsets of +-``RegistrationSettings.start_search_mm`` from there. Without both femurs: the image centre.
    """
    bodies = rigid_bodies(objects)
    try:
        heads = [femoral_head_center(labels, bodies[f"femur_{side}"]) for side in ("left", "right")]
    except (KeyError, InputError):
        return labels.center
    return (heads[0] + heads[1]) / 2


def surface_points(labels: Volume, body_labels: tuple[int, ...], max_points: int | None = 4000
                   ) -> np.ndarray:
    """World (LPS mm) centres of a body's surface voxels, evenly thinned to ``max_points``
    (None: all of them)."""
    mask = np.isin(labels.array, body_labels)
    if not mask.any():
        raise InputError(f"label map has no voxels with values {list(body_labels)}")
    # erode only the body's bounding box (plus one voxel): same surface, far less work
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1)
                for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    idx = np.argwhere(mask[box] & ~ndimage.binary_erosion(mask[box])) + [s.start for s in box]
    if max_points is not None:
        idx = idx[:: max(1, len(idx) // max_points)]
    return apply(labels.affine, idx[:, ::-1].astype(float))


def registration_errors(true_pose: np.ndarray, found_pose: np.ndarray, points_world: np.ndarray,
                        geometry: Geometry) -> dict[str, float]:
    """Errors of a found pose at ``points_world`` (LPS mm), e.g. :func:`surface_points`.

    ``projected_mm``: mean 2D distance on the detector (mm) between the points projected with
    the true and the found pose; ``mtre_mm``: mean 3D distance (camera frame, mm);
    ``depth_mm``: mean absolute error along the central ray (mm).
    """
    a, b = apply(true_pose, points_world), apply(found_pose, points_world)
    pa, pb = project(a, geometry), project(b, geometry)
    d2 = (pa - pb) * np.array(geometry.pixel_spacing)
    return {"projected_mm": float(np.linalg.norm(d2, axis=1).mean()),
            "mtre_mm": float(np.linalg.norm(a - b, axis=1).mean()),
            "depth_mm": float(np.abs(a[:, 2] - b[:, 2]).mean())}


def femoral_head_center(labels: Volume, femur_labels: tuple[int, ...], depth_mm: float = 40.0,
                        radius_mm: tuple[float, float] = (15.0, 32.0), tolerance_mm: float = 1.5,
                        trials: int = 400, min_inliers: float = 0.2) -> np.ndarray:
    """Femoral head centre (LPS mm): a sphere fitted to the femur's surface near its top.

    Among the femur's surface voxels within ``depth_mm`` of its top (the head, but also the
    greater trochanter and the neck), a seeded RANSAC over sphere fits to 4 points, radius
    within ``radius_mm``, keeps the sphere with the most points within ``tolerance_mm`` of
    its surface (a head holds 35-50 % of them), refitted to those points. Without a sphere
    holding ``min_inliers`` of them (a stump, a coarse label), the centroid of the points.
    """
    def plausible(sphere: tuple[np.ndarray, float] | None) -> bool:
        return sphere is not None and radius_mm[0] <= sphere[1] <= radius_mm[1]

    pts = surface_points(labels, femur_labels, max_points=None)
    pts = pts[pts[:, 2] >= pts[:, 2].max() - depth_mm]
    pts = pts[np.lexsort(np.round(pts, 6).T[::-1])]  # the same samples whatever the file's axis order
    rng = np.random.default_rng(0)
    best, best_count = None, 0
    for _ in range(trials if len(pts) >= 4 else 0):
        sphere = fit_sphere(pts[rng.choice(len(pts), 4, replace=False)])
        if not plausible(sphere):
            continue
        count = int(_on_sphere(pts, sphere, tolerance_mm).sum())
        if count > best_count:
            best, best_count = sphere, count
    if best_count < min_inliers * len(pts):
        best = None
    for _ in range(3 if best is not None else 0):
        refit = fit_sphere(pts[_on_sphere(pts, best, tolerance_mm)])
        if plausible(refit):
            best = refit
    return pts.mean(axis=0) if best is None else best[0]


def _on_sphere(points: np.ndarray, sphere: tuple[np.ndarray, float], tolerance_mm: float
               ) -> np.ndarray:
    """Which ``points`` (P, 3) lie within ``tolerance_mm`` of the sphere's surface."""
    return np.abs(np.linalg.norm(points - sphere[0], axis=1) - sphere[1]) <= tolerance_mm
