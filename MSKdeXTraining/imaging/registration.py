"""2D/3D rigid registration of one bone to a radiograph (paper Sec. 2.1, ref. 21).

A *rigid body* is a set of label values that move together: ``pelvis`` (pelvis + sacrum),
``femur_left`` and ``femur_right`` (:func:`rigid_bodies`). Registration finds the pose
(world LPS mm -> camera mm) at which the body's WVDRR best matches the radiograph:

* similarity: gradient correlation (GC, :mod:`.similarity`) of the body's WVDRR and the
  radiograph, inside a region around the projected body (``mask_margin_mm``);
* renderer: the body's attenuation (mu x volume, cm2) block-summed to a grid about as fine
  as the level's detector pixels and splatted by :class:`.projector.Splatter`; both images
  get the same light Gaussian blur, which removes splatting ripple;
* coarse-to-fine levels (detector pixels of ``Level.pixel_mm``, 0 = the radiograph's own),
  each optimised by CMA-ES (global, batched over the population) or Powell (local
  refinement); both presets end with a small-step CMA-ES and Powell at full resolution
  (depth and out-of-plane rotation are only seen there);
* speed: each level crops both images to the bounding box of its GC region and computes
  the radiograph's gradients once (:class:`_FixedGC`);
* parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) about a centre (the body's
  centroid, or a femoral head) in the camera frame, applied on top of the start pose; depth
  ``tz`` runs along the ray through the centre (:func:`pose_from_params`).

The result carries the final GC at the radiograph's resolution and ``ok = gc >=
settings.gc_threshold`` (:data:`GC_THRESHOLD`, calibrated on the synthetic cohort: correct
poses score above it, gross failures below).

Overlap: GC of the bone's DRR alone is pulled by the structures overlapping the bone in the
radiograph (soft tissue, other bones): on the first cohort generator's cases (1.7 mm pixels,
CT not cropped) its optimum lay ~0.6 mm (projected) from the true pose.
:func:`register_bodies` therefore ends with a refinement of each body against its DRR plus the rest of the patient at the current poses: the other
bones, and the CT's soft tissue split between the bodies (:class:`SoftTissueRenderer`), the
body's own share following it in 2D (:class:`_Attached`) (docs/registration.md).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cma
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, optimize

from ..objects import ObjectMap, ObjectMapError
from . import hu as hu_conv
from .geometry import Geometry, apply, default_ap_pose, project, resample_image, rigid
from .projector import Splatter, sub_offsets
from .similarity import sobel
from ..errors import InputError
from .volume import Volume

Progress = Callable[[float, str], None]

#: GC (at the radiograph's resolution, inside the bone region) below which a registration
#: is flagged as failed. Correct poses on the synthetic cohort score well above it.
GC_THRESHOLD = 0.35
#: Threshold for a femur (:func:`register_bodies`): less clutter around it than around the
#: pelvis, so correct femur poses score higher (about 0.6-0.8 on the cohort).
FEMUR_GC_THRESHOLD = 0.5
#: GC cost of a translation of one prior SD (``RegistrationSettings.translation_sd_mm``)^2.
PRIOR_WEIGHT = 0.005
#: Search scale of a femur registered after the pelvis (deg x3, mm x3): it turns about its
#: head by up to ~15-20 degrees, its head moves little.
FEMUR_SCALE = (8.0, 8.0, 8.0, 3.0, 3.0, 3.0)
#: Translation prior (mm) of a femur's head relative to the registered pelvis.
FEMUR_TRANSLATION_SD_MM = 3.0
#: In-plane shifts (mm, +-) searched when the pelvis starts from the default AP view.
START_SEARCH_MM = 48.0
#: Softening distance (mm) of the soft tissue's blend weights (:class:`SoftTissueRenderer`):
#: tissue within about this distance of a bone moves with it.
BLEND_SOFTENING_MM = 1.0
#: Grid (mm, at least the CT's spacing) on which the distances to the bones are computed.
BLEND_GRID_MM = 3.0
#: Largest projected size (detector pixels) of a soft-tissue sample: coarser than the bones'
#: (:attr:`RegistrationSettings.footprint_px`), 5x fewer samples, same accuracy on the cohort.
SOFT_FOOTPRINT_PX = 2.5
#: Half-size (mm) of the cross of points whose projections fit the 2D affine motion of a
#: body's attached soft tissue (:class:`_Attached`).
ATTACHED_ARM_MM = 50.0
#: A refined pose whose GC (the body's DRR alone) falls more than this below the first
#: pass's is rejected: near the truth the bias costs ~0.002-0.008 of GC, larger drops were
#: refinements pulled away by soft tissue that the CT does not model well (cohort cases 0-7).
REFINE_MAX_GC_DROP = 0.01


@dataclass(frozen=True)
class Level:
    """One pyramid level: detector pixel size, optimiser and its budget.

    ``pixel_mm``: the level's detector pixel size (mm); the radiograph is downsampled by
    ``round(pixel_mm / its spacing)`` (at least 1, i.e. its own resolution). ``sigma`` is the initial CMA-ES step in units of the search scale
    (:attr:`RegistrationSettings.scale`); ``iterations`` are CMA generations or, for
    Powell, the maximum number of function evaluations.
    """

    pixel_mm: float
    optimizer: str = "cma"
    iterations: int = 30
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("cma", "powell"):
            raise ValueError(f"Level.optimizer must be 'cma' or 'powell', got {self.optimizer!r}")
        if self.pixel_mm < 0 or self.iterations < 1 or self.sigma <= 0:
            raise ValueError(f"Level needs pixel_mm >= 0, iterations >= 1, sigma > 0, got {self}")

    def geometry(self, radiograph: Geometry) -> Geometry:
        """The level's detector: the radiograph's field of view with coarser pixels."""
        factor = max(1, round(self.pixel_mm / min(radiograph.pixel_spacing)))
        return radiograph.resized(max(8, radiograph.rows // factor), max(8, radiograph.cols // factor))


@dataclass(frozen=True)
class RegistrationSettings:
    """Optimiser settings; :meth:`preset` gives the documented ``"accurate"``/``"fast"`` ones.

    ``scale`` (deg, deg, deg, mm, mm, mm): one search unit per parameter (the expected start
    error; depth is less observable, so wider). ``bounds`` (search units) limit each level's search about its start.
    ``footprint_px``: largest projected size of a rendered sample (detector pixels);
    ``blur_px``: Gaussian sigma applied to both images; ``mask_margin_mm``: GC is computed
    within this distance (detector mm) of the projected body at the level's start (None: the
    whole image). ``translation_sd_mm``: Gaussian prior on the translation away from the start
    (None: none); each SD costs ``prior_weight`` of GC (a femur registered after the
    pelvis keeps its head in the acetabulum). ``grid_search_mm`` (range, step): before the
    first level's optimiser, try every in-plane shift on this grid (a start far from the
    truth, e.g. the default AP view). ``refine``: end :func:`register_bodies` with the joint
    refinement against the rest of the patient (:func:`refine_jointly`). ``seed`` makes
    CMA-ES deterministic.

    How :func:`register_bodies` adapts them per body: the pelvis from the default view searches
    +-``start_search_mm`` in plane first; a femur uses ``femur_scale``,
    ``femur_translation_sd_mm`` and at least ``femur_gc_threshold``; a joint refinement losing
    more than ``refine_max_gc_drop`` of the body's own GC is rejected.
    """

    levels: tuple[Level, ...] = (Level(6.0, "cma", 40, 1.0), Level(3.0, "cma", 30, 0.3),
                                 Level(0.0, "cma", 15, 0.1), Level(0.0, "powell", 100))
    scale: tuple[float, ...] = (5.0, 5.0, 5.0, 8.0, 8.0, 20.0)
    bounds: float = 4.0
    popsize: int = 12
    footprint_px: float = 1.25
    blur_px: float = 0.25
    mask_margin_mm: float | None = 15.0
    translation_sd_mm: float | None = None
    grid_search_mm: tuple[float, float] | None = None
    gc_threshold: float = GC_THRESHOLD
    refine: bool = True
    seed: int = 1
    prior_weight: float = PRIOR_WEIGHT
    start_search_mm: float = START_SEARCH_MM
    femur_scale: tuple[float, ...] = FEMUR_SCALE
    femur_translation_sd_mm: float = FEMUR_TRANSLATION_SD_MM
    femur_gc_threshold: float = FEMUR_GC_THRESHOLD
    refine_max_gc_drop: float = REFINE_MAX_GC_DROP

    @classmethod
    def preset(cls, name: str) -> RegistrationSettings:
        """``"accurate"`` (default; with the joint refinement) or ``"fast"`` (about half the
        evaluations, no joint refinement).

        Measured on the demo cohort (one torch thread): accurate ~8.3 s pelvis, ~2.4 s femur;
        fast ~3.7 s pelvis, ~1 s femur (docs/registration.md).
        """
        if name == "accurate":
            return cls()
        if name == "fast":
            return cls(levels=(Level(6.0, "cma", 25, 1.0), Level(3.0, "cma", 25, 0.3),
                               Level(0.0, "cma", 12, 0.1), Level(0.0, "powell", 80)), popsize=10,
                       refine=False)
        raise InputError(f"registration preset must be one of {PRESETS}, got {name!r}")

    def to_json(self) -> dict:
        return asdict(self)


PRESETS = ("accurate", "fast")


@dataclass
class RegistrationResult:
    """Pose found for one body: ``pose`` 4x4 world (LPS mm) -> camera (mm).

    ``params`` (deg, mm) are relative to the start pose about ``center_cam`` (mm); ``gc``
    is the final gradient correlation at the radiograph's resolution; ``ok`` says whether it
    reaches ``gc_threshold``. ``level_gc`` records the best GC of each level.
    """

    pose: np.ndarray
    gc: float
    ok: bool
    params: np.ndarray
    center_cam: np.ndarray
    evaluations: int
    seconds: float
    level_gc: list[float] = field(default_factory=list)
    gc_threshold: float = GC_THRESHOLD

    def to_json(self) -> dict:
        return {"pose": np.asarray(self.pose).tolist(), "gc": round(float(self.gc), 5),
                "ok": bool(self.ok), "params": [round(float(p), 4) for p in self.params],
                "params_units": ("deg, deg, deg, mm, mm, mm: rotations about center_cam (camera), tx/ty along "
                                 "the detector axes, tz along the source->center_cam ray, after the start "
                                 "pose (registration.pose_from_params)"),
                "center_cam": [round(float(c), 3) for c in self.center_cam],
                "evaluations": int(self.evaluations), "seconds": round(float(self.seconds), 3),
                "level_gc": [round(float(g), 5) for g in self.level_gc],
                "gc_threshold": float(self.gc_threshold)}


def rigid_bodies(objects: ObjectMap) -> dict[str, tuple[int, ...]]:
    """Label values of each rigid body: ``pelvis`` (pelvis + sacrum), ``femur_left/right``.

    The femur object must declare ``sides`` with ``left`` and ``right`` label values.
    """
    try:
        pelvis = objects["pelvis"].labels
        femur = objects["femur"]
    except KeyError as e:
        raise ObjectMapError(f"object map {objects.name!r}: registration needs the objects "
                             f"'pelvis' and 'femur' ({e})") from None
    if "sacrum" in objects.names:
        pelvis = pelvis + objects["sacrum"].labels
    if not {"left", "right"} <= set(femur.sides):
        raise ObjectMapError(f"object map {objects.name!r}: object 'femur' needs \"sides\" with "
                             f"'left' and 'right' label values to register each femur, got "
                             f"{sorted(femur.sides)}")
    return {"pelvis": tuple(pelvis), "femur_left": tuple(femur.sides["left"]),
            "femur_right": tuple(femur.sides["right"])}


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


class BodyRenderer:
    """Renders the WVDRR (line integral of mu) of one rigid body in many poses at once.

    The body's voxels (attenuation x volume, cm2) are summed in blocks of ``block`` voxels
    per axis; each block is split into sub-samples whose projection is at most
    ``footprint_px`` pixels wide in the geometry and pose given to :meth:`prepare`.
    """

    def __init__(self, ct: Volume, labels: Volume, body_labels: tuple[int, ...]):
        diff = ct.same_grid(labels)
        if diff:
            raise InputError(f"label grid differs from the CT grid: {'; '.join(diff)}")
        mask = np.isin(labels.array, body_labels)
        if not mask.any():
            raise InputError(f"label map has no voxels with values {list(body_labels)}")
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        self.lo = np.array([s.start for s in box])  # k, j, i
        amount = hu_conv.attenuation(ct.array[box].astype(np.float64)) * ct.voxel_volume_cm3
        self.amount = np.where(mask[box], amount, 0.0)
        self.ct = ct
        self.centroid = body_centroid(labels, body_labels)
        #: sample cloud of the last :meth:`prepare`: positions (P, 3; LPS mm) and mu x volume (P, 1; cm2)
        self.points: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def prepare(self, geometry: Geometry, pose: np.ndarray, footprint_px: float) -> None:
        """Build the sample cloud for renders in ``geometry`` near ``pose``."""
        mag = 1.0 if geometry.parallel else geometry.sdd / float(apply(pose, self.centroid)[2])
        iso_px = min(geometry.pixel_spacing) / mag
        block = np.maximum(1, np.floor(iso_px * footprint_px / self.ct.spacing[::-1])).astype(int)
        a = self.amount
        pad = [(0, (-n) % b) for n, b in zip(a.shape, block)]
        a = np.pad(a, pad)
        shape = [n // b for n, b in zip(a.shape, block)]
        summed = a.reshape(shape[0], block[0], shape[1], block[1], shape[2], block[2]).sum((1, 3, 5))
        kji = np.argwhere(summed > 0)
        centre_index = self.lo + kji * block + (block - 1) / 2.0  # k, j, i
        pts = apply(self.ct.affine, centre_index[:, ::-1])
        edges = self.ct.affine[:3, :3] * block[::-1]  # columns: block edge vectors (LPS mm)
        lin_cam = pose[:3, :3] @ edges
        z_min = float(apply(pose, pts)[:, 2].min()) - float(np.abs(lin_cam[2]).sum())
        mag_max = 1.0 if geometry.parallel else geometry.sdd / max(z_min, 1.0)
        extent_px = np.abs(lin_cam[:2]) * mag_max / np.array(geometry.pixel_spacing[::-1])[:, None]
        n_sub = tuple(int(max(1, math.ceil(e / footprint_px - 1e-9))) for e in extent_px.max(0))
        offsets = sub_offsets(n_sub) @ edges.T
        samples = (pts[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
        values = np.repeat(summed[tuple(kji.T)][None, :], len(offsets), 0).reshape(-1) / len(offsets)
        self.points = torch.from_numpy(samples).float()
        self.values = torch.from_numpy(values).float()[:, None]

    def render(self, poses: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """WVDRRs (B, rows, cols) of the body at ``poses`` (B, 4, 4) world -> camera."""
        if self.points is None:
            raise RuntimeError("BodyRenderer.prepare() must be called before render()")
        poses_t = torch.from_numpy(np.asarray(poses, np.float64)).float()
        cam = torch.einsum("pj,bij->bpi", self.points, poses_t[:, :3, :3]) + poses_t[:, None, :3, 3]
        return _splat(cam, self.values, geometry)


def _splat(cam: torch.Tensor, values: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Line-integral images (B, rows, cols) of samples at ``cam`` (B, P, 3; camera mm) carrying
    ``values`` (P, 1; mu x volume, cm2)."""
    b, n = cam.shape[:2]
    splat = Splatter(geometry, b, (True,))
    splat.add(cam.reshape(-1, 3), values.repeat(b, 1), torch.arange(b).repeat_interleave(n))
    return splat.result()[0][0]


class SoftTissueRenderer:
    """Renders the CT's tissue outside the rigid bodies as one share per body.

    Soft tissue is not rigid: muscles around a turned femur move partly with it. Every
    sample (voxels above :data:`~MSKdeXTraining.imaging.hu.AIR_HU`, block-summed as in
    :class:`BodyRenderer` with footprint :data:`SOFT_FOOTPRINT_PX`) is split between the
    bodies with weights ``w_b`` proportional to ``1 / (d_b^2 + BLEND_SOFTENING_MM^2)``
    (``d_b``: distance (mm) to body ``b``), and body ``b``'s share moves rigidly with it: tissue next to a bone moves
    with the bone, tissue between bones is a blend of both images.
    """

    def __init__(self, ct: Volume, labels: Volume, bodies: dict[str, tuple[int, ...]],
                 geometry: Geometry, pose: np.ndarray):
        diff = ct.same_grid(labels)
        if diff:
            raise InputError(f"label grid differs from the CT grid: {'; '.join(diff)}")
        bone = np.isin(labels.array, sum(bodies.values(), ()))
        soft = Volume(((~bone) & (ct.array > hu_conv.AIR_HU)).astype(np.uint8), ct.spacing, ct.origin,
                      ct.direction)
        renderer = BodyRenderer(ct, soft, (1,))
        renderer.prepare(geometry, pose, SOFT_FOOTPRINT_PX)
        self.points = renderer.points
        stride = max(1, int(BLEND_GRID_MM // float(min(ct.spacing))))
        grid = (slice(None, None, stride),) * 3
        kji = apply(np.linalg.inv(ct.affine), self.points.double().numpy())[:, ::-1].T / stride
        inv_d2 = []
        for body_labels in bodies.values():
            d = ndimage.distance_transform_edt(~np.isin(labels.array[grid], body_labels),
                                               sampling=ct.spacing[::-1] * stride)
            inv_d2.append(1.0 / (ndimage.map_coordinates(d, kji, order=1, mode="nearest") ** 2
                                 + BLEND_SOFTENING_MM ** 2))
        w = np.stack(inv_d2, 1)
        w /= w.sum(1, keepdims=True)
        self.values = {n: renderer.values * torch.from_numpy(w[:, k, None]).float()
                       for k, n in enumerate(bodies)}

    def render(self, name: str, pose: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Line integral of mu (rows, cols) of body ``name``'s share at ``pose`` (world -> camera)."""
        pose_t = torch.from_numpy(np.asarray(pose, np.float64)).float()
        cam = self.points @ pose_t[:3, :3].T + pose_t[:3, 3]
        return _splat(cam[None], self.values[name], geometry)[0].numpy()


def render_body(ct: Volume, labels: Volume, body_labels: tuple[int, ...], pose: np.ndarray,
                geometry: Geometry) -> np.ndarray:
    """WVDRR (rows, cols; line integral of mu) of one body at ``pose``, e.g. for QC images."""
    renderer = BodyRenderer(ct, labels, body_labels)
    renderer.prepare(geometry, pose, footprint_px=0.5)
    return renderer.render(np.asarray(pose, float)[None], geometry)[0].numpy()


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., H, W)`` images (sigma in pixels, edges replicated)."""
    if sigma_px <= 0:
        return images
    r = max(1, int(math.ceil(3 * sigma_px)))
    x = torch.arange(-r, r + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    k = k / k.sum()
    shape = images.shape
    t = images.reshape(-1, 1, shape[-2], shape[-1])
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return t.reshape(shape)


class _FixedGC:
    """Gradient correlation against one fixed image, its gradients computed once.

    Same value as :func:`.similarity.gradient_correlation` (``fixed`` and ``mask`` (H, W));
    moving images (B, H, W) only need their own Sobel gradients.
    """

    def __init__(self, fixed: torch.Tensor, mask: torch.Tensor):
        self.w = mask[1:-1, 1:-1]
        wsum = self.w.sum().clamp_min(1e-8)
        self.wn = self.w / wsum
        self.fixed = []
        for g in sobel(fixed):
            g = g - (self.wn * g).sum()
            self.fixed.append(g * self.w / torch.sqrt((self.w * g * g).sum() + 1e-16))

    def __call__(self, moving: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for g, f in zip(sobel(moving), self.fixed):
            g = g - (self.wn * g).sum(dim=(-1, -2), keepdim=True)
            num = (g * f).sum(dim=(-1, -2))
            out = out + num / torch.sqrt((self.w * g * g).sum(dim=(-1, -2)) + 1e-16)
        return 0.5 * out


class _Attached:
    """Tissue that moves with a body: ``image`` (rows, cols; line integral of mu in
    ``geometry``) rendered with the body at ``pose``, warped for another pose by the 2D affine
    map that best carries the projections of a cross of points (+-:data:`ATTACHED_ARM_MM`
    about ``center_world``, LPS mm) from that pose to ``pose``."""

    def __init__(self, image: np.ndarray, pose: np.ndarray, center_world: np.ndarray,
                 geometry: Geometry):
        self.image, self.geometry = torch.from_numpy(np.asarray(image, np.float32)), geometry
        arms = np.concatenate([np.zeros((1, 3)), np.eye(3), -np.eye(3)]) * ATTACHED_ARM_MM
        self.points = np.asarray(center_world, float) + arms
        self.ref_px = project(apply(pose, self.points), geometry)

    def __call__(self, poses: np.ndarray, crop: tuple[slice, slice]) -> torch.Tensor:
        """The tissue (B, crop rows, crop cols) with the body at ``poses`` (B, 4, 4)."""
        rows, cols = self.image.shape
        rr, cc = np.meshgrid(np.arange(rows)[crop[0]], np.arange(cols)[crop[1]], indexing="ij")
        out_px = np.stack([rr.ravel(), cc.ravel(), np.ones(rr.size)], 1)
        grids = []
        for pose in poses:
            px = project(apply(pose, self.points), self.geometry)
            design = np.concatenate([px, np.ones((len(px), 1))], 1)
            to_ref = np.linalg.lstsq(design, self.ref_px, rcond=None)[0]  # (3, 2): px -> ref px
            ref = out_px @ to_ref
            grids.append(np.stack([ref[:, 1] / (cols - 1), ref[:, 0] / (rows - 1)], 1) * 2 - 1)
        grid = torch.from_numpy(np.stack(grids).reshape(len(poses), *rr.shape, 2)).float()
        image = self.image[None, None].expand(len(poses), 1, rows, cols)
        return F.grid_sample(image, grid, align_corners=True)[:, 0]


class _Objective:
    """-GC (+ translation prior) of the body's DRR against the radiograph at one level.

    Images are cropped to the mask's bounding box (plus a border for the filters).
    """

    def __init__(self, renderer: BodyRenderer, xray: torch.Tensor, geometry: Geometry,
                 start_pose: np.ndarray, center_cam: np.ndarray, scale: np.ndarray,
                 settings: RegistrationSettings, x_ref: np.ndarray,
                 background: torch.Tensor | None = None, attached: _Attached | None = None):
        self.renderer, self.geometry, self.settings = renderer, geometry, settings
        self.start_pose, self.center_cam, self.scale = start_pose, center_cam, scale
        renderer.prepare(geometry, self.pose(x_ref), settings.footprint_px)
        mask = self._mask(x_ref)
        border = 2 + int(math.ceil(3 * settings.blur_px))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        self.crop = (slice(max(0, rows[0] - border), rows[-1] + border + 1),
                     slice(max(0, cols[0] - border), cols[-1] + border + 1))
        self.gc = _FixedGC(gaussian_blur(xray, settings.blur_px)[self.crop], mask[self.crop])
        self.background = None if background is None else background[self.crop]
        self.attached = attached
        self.evaluations = 0

    def pose(self, x: np.ndarray) -> np.ndarray:
        return pose_from_params(np.asarray(x, float) * self.scale, self.center_cam,
                                self.start_pose, self.geometry.parallel)

    def _mask(self, x: np.ndarray) -> torch.Tensor:
        margin = self.settings.mask_margin_mm
        g, pose = self.geometry, self.pose(x)
        if margin is None:
            keep = np.ones(g.shape, bool)
        else:
            drr = self.renderer.render(pose[None], g)[0].numpy()
            inside = drr > 1e-3 * max(float(drr.max()), 1e-12)
            keep = ndimage.distance_transform_edt(~inside, sampling=g.pixel_spacing) <= margin
            if not inside.any():  # the body misses the detector: nothing to restrict to
                keep = np.ones(g.shape, bool)
        return torch.from_numpy(keep.astype(np.float32))

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        poses = np.stack([self.pose(x) for x in xs])
        drr = self.renderer.render(poses, self.geometry)[(slice(None),) + self.crop]
        if self.background is not None:
            drr = drr + self.background
        if self.attached is not None:
            drr = drr + self.attached(poses, self.crop)
        gc = self.gc(gaussian_blur(drr, self.settings.blur_px)).double().numpy()
        self.evaluations += len(xs)
        return -gc + self.penalty(xs)

    def penalty(self, xs: np.ndarray) -> np.ndarray:
        """Prior cost of the translations of ``xs`` (B, 6), zero without a prior."""
        sd = self.settings.translation_sd_mm
        if sd is None:
            return np.zeros(len(xs))
        t = np.atleast_2d(xs)[:, 3:] * self.scale[3:] / sd
        return self.settings.prior_weight * (t ** 2).sum(axis=1)


def register_bone(ct: Volume, labels: Volume, body_labels: tuple[int, ...],
                  radiograph: np.ndarray, geometry: Geometry,
                  start_pose: np.ndarray | None = None,
                  settings: RegistrationSettings | None = None,
                  progress: Progress | None = None,
                  center_world: np.ndarray | None = None,
                  background: np.ndarray | None = None,
                  initial_params: np.ndarray | None = None,
                  attached: np.ndarray | None = None) -> RegistrationResult:
    """Register one rigid body (label values ``body_labels``) to a radiograph.

    ``ct`` in HU and ``labels`` on the same grid; ``radiograph`` (rows, cols), bright =
    attenuating, in ``geometry``; ``start_pose`` (4x4 world -> camera) defaults to the AP view
    centred on the body's centroid. Rotations turn about ``center_world`` (LPS mm; default
    the body's centroid; a femur turns best about its head, :func:`femoral_head_center`).
    ``background`` (rows, cols; line integral of mu in ``geometry``) is added to the body's
    DRR before comparison (the rest of the patient, :func:`register_bodies`); the reported
    GC is the body's alone. The search starts at ``initial_params`` (deg x3, mm x3, as
    :attr:`RegistrationResult.params`; default zeros). ``attached`` (same form) is tissue
    that moves with the body, rendered at that start (e.g. its share of the soft tissue,
    :class:`SoftTissueRenderer`): it is warped in 2D with the body's projected motion and
    added too. Returns the pose with the best GC (see module docs).
    """
    radiograph = np.asarray(radiograph)
    if radiograph.ndim != 2:
        raise InputError(f"radiograph must be a 2D image (rows, cols), got shape {radiograph.shape}")
    if radiograph.shape != geometry.shape:
        raise InputError(f"radiograph shape {radiograph.shape} differs from the geometry's "
                         f"detector {geometry.shape}")
    if not np.all(np.isfinite(radiograph)):
        raise InputError("radiograph holds NaN/inf pixels")
    settings = settings or RegistrationSettings()
    t0 = time.perf_counter()
    renderer = BodyRenderer(ct, labels, body_labels)
    if start_pose is None:
        start_pose = default_ap_pose(renderer.centroid, geometry)
    start_pose = np.asarray(start_pose, float)
    center = renderer.centroid if center_world is None else np.asarray(center_world, float)
    center_cam = apply(start_pose, center)
    scale = np.asarray(settings.scale, float)
    x = np.zeros(6) if initial_params is None else np.asarray(initial_params, float) / scale
    evaluations, level_gc = 0, []
    first_pose = pose_from_params(x * scale, center_cam, start_pose, geometry.parallel)
    levels = settings.levels
    for li, level in enumerate(levels):
        g = level.geometry(geometry)
        xray = torch.from_numpy(resample_image(radiograph, geometry, g))
        bg = None if background is None else torch.from_numpy(resample_image(background, geometry, g))
        att = None if attached is None else _Attached(resample_image(attached, geometry, g),
                                                       first_pose, center, g)
        if li == 0 and settings.grid_search_mm is not None:
            # one GC region for all shifts: the start's, widened by the grid's extent
            margin = settings.mask_margin_mm
            wide = replace(settings, mask_margin_mm=None if margin is None
                           else margin + settings.grid_search_mm[0])
            grid = _Objective(renderer, xray, g, start_pose, center_cam, scale, wide, x, bg, att)
            x = _grid_search(grid, x, settings.grid_search_mm, scale)
            evaluations += grid.evaluations
        obj = _Objective(renderer, xray, g, start_pose, center_cam, scale, settings, x, bg, att)
        if level.optimizer == "cma":
            x, f = _run_cma(obj, x, level, settings, li)
        else:
            x, f = _run_powell(obj, x, level, settings.bounds)
        evaluations += obj.evaluations
        level_gc.append(float(-f + obj.penalty(x[None])[0]))
        if progress is not None:
            progress((li + 1) / (len(levels) + 1), f"level {li + 1}/{len(levels)}: GC {-f:.3f}")
    final = _Objective(renderer, torch.from_numpy(np.asarray(radiograph, np.float32)), geometry,
                       start_pose, center_cam, scale, settings, x)
    gc = float(-final(x[None])[0] + final.penalty(x[None])[0])
    if progress is not None:
        progress(1.0, f"done: GC {gc:.3f}")
    return RegistrationResult(final.pose(x), gc, gc >= settings.gc_threshold, x * scale,
                              center_cam, evaluations + 1, time.perf_counter() - t0, level_gc,
                              settings.gc_threshold)


def pose_from_params(params: np.ndarray, center_cam: np.ndarray, start_pose: np.ndarray,
                     parallel: bool = False) -> np.ndarray:
    """Pose (world -> camera) from ``(rx, ry, rz, tx, ty, tz)`` (deg, mm) about ``center_cam``.

    Rotations: extrinsic x-y-z about ``center_cam`` (camera mm). Translations: ``tx, ty``
    along the detector axes and ``tz`` along the ray from the source through ``center_cam``,
    so a depth change only scales the body's projection about its centre (in perspective
    geometry depth and in-plane shift are otherwise coupled for bodies off the central ray);
    in ``parallel`` geometry the rays run along camera z, and so does ``tz``.
    """
    c = np.asarray(center_cam, float)
    ray = c / np.linalg.norm(c) if np.linalg.norm(c) > 0 and not parallel else np.array([0.0, 0.0, 1.0])
    t = params[3] * np.array([1.0, 0.0, 0.0]) + params[4] * np.array([0.0, 1.0, 0.0]) + params[5] * ray
    return rigid(params[:3], t, c) @ start_pose


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
        sphere = _fit_sphere(pts[rng.choice(len(pts), 4, replace=False)])
        if not plausible(sphere):
            continue
        count = int(_on_sphere(pts, sphere, tolerance_mm).sum())
        if count > best_count:
            best, best_count = sphere, count
    if best_count < min_inliers * len(pts):
        best = None
    for _ in range(3 if best is not None else 0):
        refit = _fit_sphere(pts[_on_sphere(pts, best, tolerance_mm)])
        if plausible(refit):
            best = refit
    return pts.mean(axis=0) if best is None else best[0]


def _on_sphere(points: np.ndarray, sphere: tuple[np.ndarray, float], tolerance_mm: float
               ) -> np.ndarray:
    """Which ``points`` (P, 3) lie within ``tolerance_mm`` of the sphere's surface."""
    return np.abs(np.linalg.norm(points - sphere[0], axis=1) - sphere[1]) <= tolerance_mm


def _fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Algebraic least-squares sphere (centre, radius) of >= 4 points (Kasa fit); None when
    degenerate."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    b = (points ** 2).sum(axis=1)
    x, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    r2 = x[3] + x[:3] @ x[:3]
    return (x[:3], float(np.sqrt(r2))) if rank == 4 and r2 > 0 else None


def _grid_search(obj: _Objective, x0: np.ndarray, grid: tuple[float, float], scale: np.ndarray
                 ) -> np.ndarray:
    """Best in-plane shift (tx, ty) of ``x0`` on a square grid (range, step in mm)."""
    extent, step = grid
    steps = np.arange(-extent, extent + 1e-9, step)
    tx, ty = np.meshgrid(steps, steps, indexing="ij")
    xs = np.repeat(np.asarray(x0, float)[None], tx.size, axis=0)
    xs[:, 3] += tx.ravel() / scale[3]
    xs[:, 4] += ty.ravel() / scale[4]
    f = np.concatenate([obj(xs[k:k + 64]) for k in range(0, len(xs), 64)])
    return xs[int(np.argmin(f))]


def _run_cma(obj: _Objective, x0: np.ndarray, level: Level, settings: RegistrationSettings,
             level_index: int) -> tuple[np.ndarray, float]:
    bounds = [list(np.asarray(x0) - settings.bounds), list(np.asarray(x0) + settings.bounds)]
    opts = {"popsize": settings.popsize, "seed": settings.seed * 1000 + level_index + 1,
            "maxiter": level.iterations, "bounds": bounds, "verbose": -9,
            "tolfun": 1e-5, "tolx": 1e-3, "CMA_diagonal": False}
    es = cma.CMAEvolutionStrategy(list(x0), level.sigma, opts)
    best_x, best_f = np.asarray(x0, float), float(obj(x0[None])[0])
    while not es.stop():
        xs = np.asarray(es.ask())
        f = obj(xs)
        es.tell(list(xs), f.tolist())
        i = int(np.argmin(f))
        if f[i] < best_f:
            best_x, best_f = xs[i].copy(), float(f[i])
    return best_x, best_f


def _run_powell(obj: _Objective, x0: np.ndarray, level: Level, bound: float
                ) -> tuple[np.ndarray, float]:
    res = optimize.minimize(lambda x: float(obj(x[None])[0]), x0, method="Powell",
                            bounds=[(v - bound, v + bound) for v in x0],
                            options={"maxfev": level.iterations, "xtol": 1e-3, "ftol": 1e-6})
    f0 = float(obj(x0[None])[0])
    return (np.asarray(res.x, float), float(res.fun)) if res.fun <= f0 else (x0, f0)


def read_xray(path: str | Path, pixel_spacing: tuple[float, float] | None = None,
              sdd: float | None = None, sod: float | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 2D radiograph (float32 (rows, cols), bright = attenuating) and its :class:`Geometry`.

    A radiograph with a ``<name>.json`` sidecar in the ``mskdex-xray`` format (the synthetic
    cohort) takes its geometry from there. Any other file is read by
    :func:`MSKdeXTraining.radiograph_io.read_radiograph` (which refuses images that are not 2D
    and files without a usable spacing unless ``pixel_spacing`` (row, col mm) is given).
    Source distances (mm), by priority: the arguments, a ``<name>.json`` sidecar in the
    ``mskdex-xray`` format (the synthetic cohort), the file's (DICOM (0018,1110) SDD; the SOD
    as that SDD over the magnification :func:`read_radiograph` found), else the defaults of
    :class:`Geometry` (SDD 1100, SOD 880), with a warning. A PixelSpacing calibrated at the
    patient is scaled to the detector by SDD / SOD.
    """
    from ..radiograph_io import read_radiograph, read_sidecar

    path = Path(path)
    sidecar = read_sidecar(path) or {}
    factor, at_patient = None, False
    if sidecar and pixel_spacing is None:
        array = _read_cohort_image(path)  # simulated: the sidecar's geometry is exact
        spacing = tuple(float(v) for v in sidecar["pixel_spacing"])
        known = {k: float(sidecar[k]) for k in ("sdd", "sod") if k in sidecar}
    else:
        radiograph = read_radiograph(path, pixel_spacing)
        array, spacing, source = radiograph.array, radiograph.pixel_spacing, radiograph.source
        known = {} if source.get("sdd_mm") is None else {"sdd": float(source["sdd_mm"])}
        m = source.get("magnification")
        factor = m if m is not None and m > 1.0 else None
        at_patient = m == 1.0  # a PixelSpacing calibrated at the patient
    meta = {"rows": array.shape[0], "cols": array.shape[1], "pixel_spacing": spacing,
            "parallel": bool(sidecar.get("parallel", False))}
    assumed = []
    meta["sdd"] = float(sdd) if sdd is not None else known.get("sdd")
    if meta["sdd"] is None:
        meta["sdd"] = Geometry.sdd
        assumed.append(f"SDD {Geometry.sdd:g} mm")
    meta["sod"] = (float(sod) if sod is not None else known.get("sod")
                   or (meta["sdd"] / factor if factor is not None else None))
    if meta["sod"] is None:
        meta["sod"] = Geometry.sod
        assumed.append(f"SOD {Geometry.sod:g} mm")
    if at_patient:  # the detector's pixels are larger by the magnification
        meta["pixel_spacing"] = tuple(s * meta["sdd"] / meta["sod"] for s in spacing)
    if assumed:
        warnings.warn(f"{path}: source distances not in the file or arguments; assuming "
                      f"{', '.join(assumed)}", stacklevel=2)
    return array, Geometry.from_json(meta, str(path))


def _read_cohort_image(path: Path) -> np.ndarray:
    """The 2D float32 image of a cohort radiograph (MHA written by `mskdex cohort`)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 2 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: radiograph must be a 2D grey image, got size {image.GetSize()}")
    return sitk.GetArrayFromImage(image).astype(np.float32)
