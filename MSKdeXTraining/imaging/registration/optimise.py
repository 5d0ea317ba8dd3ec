"""One body's pose by coarse-to-fine optimisation of gradient correlation (CMA-ES, Powell)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import cma
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, optimize

from ...errors import InputError
from ...progress import Progress
from ..geometry import Geometry, apply, default_ap_pose, resample_image, rigid
from ..similarity import sobel
from ..volume import Volume
from .render import BodyRenderer
from .settings import FINEST_PIXEL_MM, Level, RegistrationResult, RegistrationSettings, binned


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


class _Objective:
    """-GC (+ translation prior) of the body's DRR against the radiograph at one level.

    Images are cropped to the mask's bounding box (plus a border for the filters).
    """

    def __init__(self, renderer: BodyRenderer, xray: torch.Tensor, geometry: Geometry,
                 start_pose: np.ndarray, center_cam: np.ndarray, scale: np.ndarray,
                 settings: RegistrationSettings, x_ref: np.ndarray):
        self.renderer, self.geometry, self.settings = renderer, geometry, settings
        self.start_pose, self.center_cam, self.scale = start_pose, center_cam, scale
        renderer.prepare(geometry, self.pose(x_ref), settings.footprint_px)
        mask = self._mask(x_ref)
        border = 2 + int(math.ceil(3 * settings.blur_px))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        self.crop = (slice(max(0, rows[0] - border), rows[-1] + border + 1),
                     slice(max(0, cols[0] - border), cols[-1] + border + 1))
        self.gc = _FixedGC(gaussian_blur(xray, settings.blur_px)[self.crop], mask[self.crop])
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
                  center_world: np.ndarray | None = None) -> RegistrationResult:
    """Register one rigid body (label values ``body_labels``) to a radiograph.

    ``ct`` in HU and ``labels`` on the same grid; ``radiograph`` (rows, cols), bright =
    attenuating, in ``geometry``; ``start_pose`` (4x4 world -> camera) defaults to the AP view
    centred on the body's centroid. Rotations turn about ``center_world`` (LPS mm; default
    the body's centroid; a femur turns best about its head, :func:`femoral_head_center`).
    Returns the pose with the best GC (see module docs).
    """
    radiograph = np.asarray(radiograph)
    if radiograph.ndim != 2:
        raise InputError(f"radiograph must be a 2D image (rows, cols), got shape {radiograph.shape}")
    if radiograph.shape != geometry.shape:
        raise InputError(f"radiograph shape {radiograph.shape} differs from the geometry's "
                         f"detector {geometry.shape}")
    if not np.all(np.isfinite(radiograph)):
        raise InputError("radiograph holds NaN/inf pixels")
    radiograph, geometry = working_film(radiograph, geometry)
    settings = settings or RegistrationSettings()
    t0 = time.perf_counter()
    renderer = BodyRenderer(ct, labels, body_labels)
    if start_pose is None:
        start_pose = default_ap_pose(renderer.centroid, geometry)
    start_pose = np.asarray(start_pose, float)
    center = renderer.centroid if center_world is None else np.asarray(center_world, float)
    center_cam = apply(start_pose, center)
    scale = np.asarray(settings.scale, float)
    x = np.zeros(6)
    evaluations, level_gc = 0, []
    levels = settings.levels
    restarts = np.asarray(settings.restarts, float).reshape(-1, 6) / scale
    last_cma = max((i for i, lv in enumerate(levels) if lv.optimizer == "cma"), default=-1)
    for li, level in enumerate(levels):
        g = level.geometry(geometry)
        xray = torch.from_numpy(resample_image(radiograph, geometry, g))
        if li == 0 and settings.grid_search_mm is not None:
            # one GC region for all shifts: the start's, widened by the grid's extent
            margin = settings.mask_margin_mm
            wide = replace(settings, mask_margin_mm=None if margin is None
                           else margin + settings.grid_search_mm[0])
            grid = _Objective(renderer, xray, g, start_pose, center_cam, scale, wide, x)
            x = _grid_search(grid, x, settings.grid_search_mm, scale)
            evaluations += grid.evaluations
        obj = _Objective(renderer, xray, g, start_pose, center_cam, scale, settings, x)
        if level.optimizer == "cma":
            x, f = _run_cma(obj, x, level, settings, li)
            if li == last_cma and len(restarts):  # the other basins of poses that project alike
                short = replace(level, iterations=settings.restart_iterations)
                x, f = min([(x, f)] + [_run_cma(obj, x + r, short, settings, li) for r in restarts],
                           key=lambda c: c[1])
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


def working_film(radiograph: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """The radiograph as registration sees it: a film finer than :data:`FINEST_PIXEL_MM`
    area-averaged to about that (a clinical film's 0.15 mm pixels), else as it is."""
    work = binned(geometry, FINEST_PIXEL_MM)
    if work.shape == geometry.shape:
        return radiograph, geometry
    return resample_image(radiograph, geometry, work), work


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
