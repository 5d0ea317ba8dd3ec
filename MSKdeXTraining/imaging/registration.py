"""2D/3D rigid registration of one bone to a radiograph (paper Sec. 2.1, ref. 21).

A *rigid body* is a set of label values that move together: ``pelvis`` (pelvis + sacrum),
``femur_left`` and ``femur_right`` (:func:`rigid_bodies`). Registration finds the pose
(world LPS mm -> camera mm) at which the body's WVDRR best matches the radiograph:

* similarity: gradient correlation (GC, :mod:`.similarity`) of the body's WVDRR and the
  radiograph, inside a region around the projected body (``mask_margin_mm``);
* renderer: the body's attenuation (mu x volume, cm2) block-summed to a grid about as fine
  as the level's detector pixels and splatted by :class:`.projector.Splatter`; both images
  get the same light Gaussian blur, which removes splatting ripple;
* coarse-to-fine levels (detector downsampled by ``Level.downsample``), each optimised by
  CMA-ES (global, batched over the population) or Powell (local refinement);
* parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm; :func:`.geometry.rigid`) about the
  body's centroid in the camera frame, applied on top of the start pose:
  ``pose = rigid(params, centre) @ start_pose``.

The result carries the final GC at the radiograph's resolution and ``ok = gc >=
settings.gc_threshold`` (:data:`GC_THRESHOLD`, calibrated on the synthetic cohort: correct
poses score above it, gross failures below).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cma
import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage, optimize

from ..objects import ObjectMap, ObjectMapError
from . import hu as hu_conv
from .geometry import Geometry, apply, default_ap_pose, project, rigid, rigid_params
from .projector import Splatter, sub_offsets
from .similarity import gradient_correlation
from .volume import InputError, Volume

Progress = Callable[[float, str], None]

#: GC (at the radiograph's resolution, inside the bone region) below which a registration
#: is flagged as failed. Correct poses on the synthetic cohort score well above it.
GC_THRESHOLD = 0.3


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
    error; depth is less observable, so wider). ``bounds`` (search units) limit the search.
    ``footprint_px``: largest projected size of a rendered sample (detector pixels);
    ``blur_px``: Gaussian sigma applied to both images; ``mask_margin_mm``: GC is computed
    within this distance (detector mm) of the projected body at the level's start (None: the
    whole image). ``seed`` makes CMA-ES deterministic.
    """

    levels: tuple[Level, ...] = (Level(6.0, "cma", 40, 1.0), Level(3.0, "cma", 30, 0.3),
                                 Level(0.0, "powell", 150))
    scale: tuple[float, ...] = (5.0, 5.0, 5.0, 8.0, 8.0, 20.0)
    bounds: float = 4.0
    popsize: int = 12
    footprint_px: float = 1.0
    blur_px: float = 0.7
    mask_margin_mm: float | None = 15.0
    gc_threshold: float = GC_THRESHOLD
    seed: int = 1

    @classmethod
    def preset(cls, name: str) -> RegistrationSettings:
        """``"accurate"`` (default, <= ~10 s per bone) or ``"fast"`` (~2 s per bone)."""
        if name == "accurate":
            return cls()
        if name == "fast":
            return cls(levels=(Level(6.0, "cma", 25, 1.0), Level(3.0, "cma", 15, 0.3)), popsize=10)
        raise ValueError(f"registration preset must be one of {PRESETS}, got {name!r}")

    def to_json(self) -> dict:
        return asdict(self)


PRESETS = ("accurate", "fast")


@dataclass
class RegistrationResult:
    """Pose found for one body: ``pose`` 4x4 world (LPS mm) -> camera (mm).

    ``params`` (deg, mm) are relative to the start pose about ``center_cam`` (mm); ``gc``
    is the final gradient correlation at the radiograph's resolution; ``ok`` says whether it
    reaches the settings' threshold. ``level_gc`` records the best GC of each level.
    """

    pose: np.ndarray
    gc: float
    ok: bool
    params: np.ndarray
    center_cam: np.ndarray
    evaluations: int
    seconds: float
    level_gc: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"pose": np.asarray(self.pose).tolist(), "gc": round(float(self.gc), 5),
                "ok": bool(self.ok), "params": [round(float(p), 4) for p in self.params],
                "params_units": "deg, deg, deg, mm, mm, mm (about center_cam, after the start pose)",
                "center_cam": [round(float(c), 3) for c in self.center_cam],
                "evaluations": int(self.evaluations), "seconds": round(float(self.seconds), 3),
                "level_gc": [round(float(g), 5) for g in self.level_gc]}


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
    """Isocentre (LPS mm) of a CT's default AP view: the pelvis body's centroid."""
    return body_centroid(labels, rigid_bodies(objects)["pelvis"])


def surface_points(labels: Volume, body_labels: tuple[int, ...], max_points: int = 4000
                   ) -> np.ndarray:
    """World (LPS mm) centres of a body's surface voxels, evenly thinned to ``max_points``."""
    mask = np.isin(labels.array, body_labels)
    surface = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(surface)
    if idx.size == 0:
        raise InputError(f"label map has no voxels with values {list(body_labels)}")
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


def resample_image(image: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Resample a detector image from ``source`` to ``target`` pixels (float32, (rows, cols)).

    Pixels are matched by their detector position (u, v in mm); target pixels outside the
    source detector get 0. Downsampling is anti-aliased with a Gaussian of sigma
    ``(ratio - 1) / 2`` source pixels.
    """
    image = np.asarray(image, np.float32)
    ratio = np.array(target.pixel_spacing) / np.array(source.pixel_spacing)
    sigma = np.maximum(ratio - 1.0, 0.0) / 2.0
    if sigma.max() > 0:
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    tu0, tv0 = target.detector_origin
    su0, sv0 = source.detector_origin
    rows = (tv0 + np.arange(target.rows) * target.pixel_spacing[0] - sv0) / source.pixel_spacing[0]
    cols = (tu0 + np.arange(target.cols) * target.pixel_spacing[1] - su0) / source.pixel_spacing[1]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, [rr, cc], order=1, mode="constant", cval=0.0
                                   ).astype(np.float32)


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
        self._points: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def prepare(self, geometry: Geometry, pose: np.ndarray, footprint_px: float) -> None:
        """Build the sample cloud for renders in ``geometry`` near ``pose``."""
        mag = 1.0 if geometry.parallel else geometry.sdd / float(apply(pose, self.centroid)[2])
        iso_px = min(geometry.pixel_spacing) / mag
        block = np.maximum(1, np.round(iso_px * footprint_px / self.ct.spacing[::-1])).astype(int)
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
        self._points = torch.from_numpy(samples).float()
        self._values = torch.from_numpy(values).float()[:, None]

    @property
    def n_samples(self) -> int:
        return 0 if self._points is None else int(self._points.shape[0])

    def render(self, poses: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """WVDRRs (B, rows, cols) of the body at ``poses`` (B, 4, 4) world -> camera."""
        if self._points is None:
            raise RuntimeError("BodyRenderer.prepare() must be called before render()")
        poses_t = torch.from_numpy(np.asarray(poses, np.float64)).float()
        b = poses_t.shape[0]
        cam = torch.einsum("pj,bij->bpi", self._points, poses_t[:, :3, :3]) + poses_t[:, None, :3, 3]
        n = self._points.shape[0]
        splat = Splatter(geometry, b, (True,))
        channel = torch.arange(b).repeat_interleave(n)
        splat.add(cam.reshape(-1, 3), self._values.repeat(b, 1), channel)
        return splat.result()[0][0]


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


class _Objective:
    """-GC of the body's DRR (+ fixed background) against the radiograph at one level."""

    def __init__(self, renderer: BodyRenderer, xray: torch.Tensor, geometry: Geometry,
                 start_pose: np.ndarray, center_cam: np.ndarray, scale: np.ndarray,
                 settings: RegistrationSettings, x_ref: np.ndarray,
                 fixed: list[tuple[BodyRenderer, np.ndarray]]):
        self.renderer, self.geometry, self.settings = renderer, geometry, settings
        self.start_pose, self.center_cam, self.scale = start_pose, center_cam, scale
        renderer.prepare(geometry, self.pose(x_ref), settings.footprint_px)
        self.background = torch.zeros(geometry.shape)
        for body, pose in fixed:
            body.prepare(geometry, pose, settings.footprint_px)
            self.background += body.render(pose[None], geometry)[0]
        self.xray = gaussian_blur(xray, settings.blur_px)
        self.mask = self._mask(x_ref)
        self.evaluations = 0

    def pose(self, x: np.ndarray) -> np.ndarray:
        p = np.asarray(x, float) * self.scale
        return rigid(p[:3], p[3:], self.center_cam) @ self.start_pose

    def _mask(self, x: np.ndarray) -> torch.Tensor | None:
        margin = self.settings.mask_margin_mm
        if margin is None:
            return None
        drr = self.renderer.render(self.pose(x)[None], self.geometry)[0].numpy()
        inside = drr > 1e-3 * max(float(drr.max()), 1e-12)
        dist = ndimage.distance_transform_edt(~inside, sampling=self.geometry.pixel_spacing)
        return torch.from_numpy((dist <= margin).astype(np.float32))

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        poses = np.stack([self.pose(x) for x in xs])
        drr = self.renderer.render(poses, self.geometry) + self.background
        drr = gaussian_blur(drr, self.settings.blur_px)
        gc = gradient_correlation(drr, self.xray.expand_as(drr), self.mask)
        self.evaluations += len(xs)
        return -gc.double().numpy()


def register_bone(ct: Volume, labels: Volume, body_labels: tuple[int, ...],
                  radiograph: np.ndarray, geometry: Geometry,
                  start_pose: np.ndarray | None = None,
                  settings: RegistrationSettings | None = None,
                  progress: Progress | None = None,
                  center_world: np.ndarray | None = None,
                  fixed_bodies: Mapping[tuple[int, ...], np.ndarray] | None = None
                  ) -> RegistrationResult:
    """Register one rigid body (label values ``body_labels``) to a radiograph.

    ``ct`` in HU and ``labels`` on the same grid; ``radiograph`` (rows, cols), bright =
    attenuating, in ``geometry``; ``start_pose`` (4x4 world -> camera) defaults to the AP view
    centred on the body's centroid. Rotations turn about ``center_world`` (LPS mm; default
    the body's centroid; a femur turns best about its head, :func:`femoral_head_center`).
    ``fixed_bodies`` {label values: pose} are rendered at fixed poses and added to the DRR
    (e.g. the registered pelvis while a femur is registered). Returns the pose with the best
    GC (see module docs).
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
    fixed = [(BodyRenderer(ct, labels, tuple(b)), np.asarray(p, float))
             for b, p in (fixed_bodies or {}).items()]
    if start_pose is None:
        start_pose = default_ap_pose(renderer.centroid, geometry)
    start_pose = np.asarray(start_pose, float)
    center = renderer.centroid if center_world is None else np.asarray(center_world, float)
    center_cam = apply(start_pose, center)
    scale = np.asarray(settings.scale, float)
    x = np.zeros(6)
    evaluations, level_gc = 0, []
    levels = settings.levels
    for li, level in enumerate(levels):
        g = level.geometry(geometry)
        xray = torch.from_numpy(resample_image(radiograph, geometry, g))
        obj = _Objective(renderer, xray, g, start_pose, center_cam, scale, settings, x, fixed)
        if level.optimizer == "cma":
            x, f = _run_cma(obj, x, level, settings, li)
        else:
            x, f = _run_powell(obj, x, level, settings.bounds)
        evaluations += obj.evaluations
        level_gc.append(-f)
        if progress is not None:
            progress((li + 1) / (len(levels) + 1), f"level {li + 1}/{len(levels)}: GC {-f:.3f}")
    final = _Objective(renderer, torch.from_numpy(np.asarray(radiograph, np.float32)), geometry,
                       start_pose, center_cam, scale, settings, x, fixed)
    gc = float(-final(x[None])[0])
    if progress is not None:
        progress(1.0, f"done: GC {gc:.3f}")
    return RegistrationResult(final.pose(x), gc, gc >= settings.gc_threshold, x * scale,
                              center_cam, evaluations + 1, time.perf_counter() - t0, level_gc)


def femoral_head_center(labels: Volume, femur_labels: tuple[int, ...], depth_mm: float = 25.0
                        ) -> np.ndarray:
    """Approximate femoral head centre (LPS mm): centroid of the femur's top ``depth_mm``.

    The top of the femur (largest superior coordinate) is the head; the centroid of the
    voxels within ``depth_mm`` of it lies near the head's centre.
    """
    idx = np.argwhere(np.isin(labels.array, femur_labels))
    if idx.size == 0:
        raise InputError(f"label map has no voxels with values {list(femur_labels)}")
    pts = apply(labels.affine, idx[:, ::-1].astype(float))
    return pts[pts[:, 2] >= pts[:, 2].max() - depth_mm].mean(axis=0)


def _run_cma(obj: _Objective, x0: np.ndarray, level: Level, settings: RegistrationSettings,
             level_index: int) -> tuple[np.ndarray, float]:
    bounds = [[-settings.bounds] * 6, [settings.bounds] * 6]
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
                            bounds=[(-bound, bound)] * 6,
                            options={"maxfev": level.iterations, "xtol": 1e-3, "ftol": 1e-6})
    f0 = float(obj(x0[None])[0])
    return (np.asarray(res.x, float), float(res.fun)) if res.fun <= f0 else (x0, f0)


def read_xray(path: str | Path, pixel_spacing: tuple[float, float] | None = None,
              sdd: float | None = None, sod: float | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 2D radiograph (float32 (rows, cols)) and its :class:`Geometry`.

    Geometry comes, in order of priority, from the arguments (mm), a ``<name>.json`` sidecar
    in the ``mskdex-xray`` format (the synthetic cohort), and the image's own metadata (DICOM
    PixelSpacing/ImagerPixelSpacing and distances, or the spacing of MHA/NRRD/NIfTI files).
    Raises :class:`InputError` for an image that is not 2D or has no pixel spacing.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: radiograph must be single-channel (grey), got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2 or min(image.GetSize()) < 2:
        raise InputError(f"{path}: radiograph must be a 2D image, got size {size}")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    sidecar = _xray_sidecar(path)
    meta: dict = dict(sidecar or {})
    if not meta:
        meta.update(_image_geometry(image, path))
    if pixel_spacing is not None:
        meta["pixel_spacing"] = tuple(float(s) for s in pixel_spacing)
    if sdd is not None:
        meta["sdd"] = float(sdd)
    if sod is not None:
        meta["sod"] = float(sod)
    if "pixel_spacing" not in meta:
        raise InputError(f"{path}: no pixel spacing in the file (field PixelSpacing / "
                         "ImagerPixelSpacing or image spacing); give it with --pixel-spacing ROW COL (mm)")
    meta["rows"], meta["cols"] = array.shape
    try:
        geometry = Geometry.from_json(meta)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: invalid geometry ({e})") from None
    return array, geometry


def _xray_sidecar(path: Path) -> dict | None:
    """Geometry from ``<stem>.json`` (format ``mskdex-xray`` version 1), if present."""
    side = path.with_name(path.name.split(".")[0] + ".json")
    if not side.is_file():
        return None
    data = json.loads(side.read_text())
    if data.get("format") != "mskdex-xray":
        return None
    if data.get("version") != 1:
        raise InputError(f"{side}: field 'version' must be 1, got {data.get('version')!r}")
    if "geometry" not in data:
        raise InputError(f"{side}: field 'geometry' is missing")
    return dict(data["geometry"])


def _image_geometry(image: sitk.Image, path: Path) -> dict:
    """Pixel spacing (row, col mm) and distances (mm) from the image's metadata."""
    meta: dict = {}
    keys = set(image.GetMetaDataKeys())
    for tag in ("0018|1164", "0028|0030"):  # ImagerPixelSpacing, PixelSpacing (row\col)
        if tag in keys:
            try:
                row, col = (float(v) for v in image.GetMetaData(tag).strip().split("\\")[:2])
            except ValueError:
                raise InputError(f"{path}: DICOM tag {tag} (pixel spacing) is not 'row\\col' in mm: "
                                 f"{image.GetMetaData(tag)!r}") from None
            meta["pixel_spacing"] = (row, col)
            break
    for tag, name in (("0018|1110", "sdd"), ("0018|1111", "sod")):
        if tag in keys:
            meta[name] = float(image.GetMetaData(tag))
    is_dicom = any(k.startswith("0008|") for k in keys)
    if "pixel_spacing" not in meta and not is_dicom and path.suffix.lower() not in (
            ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        col, row = image.GetSpacing()[:2]
        meta["pixel_spacing"] = (row, col)
    return meta

