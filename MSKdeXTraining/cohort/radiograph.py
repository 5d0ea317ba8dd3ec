"""Radiograph of a CT in another pose: moving mass elements, Beer-Lambert, detector physics.

Every CT voxel above :data:`~MSKdeXTraining.imaging.hu.AIR_HU` is cut into sub-voxel points
(projected footprint <= 1 pixel) carrying ``mu x volume``; the points are moved to the
radiograph's pose and splatted
(:class:`~MSKdeXTraining.imaging.projector.Splatter`, line-integral weighting), which gives the
line integral of mu through the whole body. Nothing is resampled, so every voxel's mass and
attenuation reach the detector exactly once.

Pose change (:mod:`.deformation`): voxels of a rigid body move with the body; soft tissue
follows the bodies with a smooth, volume-keeping deformation.

Detector: primary ``P = N0 exp(-L)`` (quanta per pixel), scatter (after the anti-scatter grid)
= ``scatter_fraction`` times ``P (1 - exp(-L))`` blurred over ``scatter_sigma_mm`` (a crude
model of photons scattered in the body), Poisson quantum noise, Gaussian detector blur, then
clinical processing: ``-log(counts / N0)``, unsharp masking, a window between two percentiles
of the body's pixels (line integral above :data:`BODY_LINE_INTEGRAL`; air is left out, as a
film's automatic processing looks at the collimated anatomy) mapped to [0, 1] (bright =
attenuating) and a gamma.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from ..imaging import hu as hu_conv
from ..imaging.geometry import Geometry
from ..imaging.projector import Splatter, footprint_mm, sub_offsets, subdivision
from ..imaging.volume import Volume, check_same_grid
from .deformation import RigidBody, soft_tissue_field

#: Largest projected sub-voxel footprint (pixels) of the radiograph simulation.
FOOTPRINT_PX = 1.0
#: Pixels whose noise-free line integral of mu exceeds this (about 2.5 cm of water at 60 keV)
#: see the body; the window's percentiles are taken over them (all pixels if there are none).
BODY_LINE_INTEGRAL = 0.5


@dataclass(frozen=True)
class XraySettings:
    """Detector physics and processing of a simulated radiograph (attenuation at
    :data:`~MSKdeXTraining.imaging.hu.EFFECTIVE_ENERGY_KEV`).

    ``photons_per_pixel``: unattenuated quanta per pixel; ``scatter_fraction``: scatter as a
    fraction of the blurred ``primary x (1 - exp(-L))``; ``scatter_sigma_mm``,
    ``blur_sigma_mm``: Gaussian blur (detector mm) of the scatter and of the detector;
    ``unsharp_weight``, ``unsharp_sigma_mm``: unsharp masking of the log image,
    ``log + w (log - blur(log))`` (the dynamic-range compression of clinical processing);
    ``window_percentiles``: the percentiles of the result over the body's pixels mapped to 0
    and 1 (see :data:`BODY_LINE_INTEGRAL`); ``gamma``
    applied after windowing; ``noise_seed``: seed of the Poisson noise (``None``: no noise).
    """

    photons_per_pixel: float = 4.0e4
    scatter_fraction: float = 0.15
    scatter_sigma_mm: float = 40.0
    blur_sigma_mm: float = 0.8
    window_percentiles: tuple[float, float] = (1.0, 99.5)
    unsharp_weight: float = 0.0
    unsharp_sigma_mm: float = 25.0
    gamma: float = 1.0
    noise_seed: int | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["window_percentiles"] = list(self.window_percentiles)
        return d


@dataclass
class SimulatedRadiograph:
    """A simulated radiograph: ``image`` (H, W) float32 in [0, 1] (bright = attenuating),
    ``line_integral`` (H, W) of mu (dimensionless, noise-free), its geometry and processing."""

    image: np.ndarray
    line_integral: np.ndarray
    geometry: Geometry
    processing: dict


def simulate_radiograph(ct: Volume, labels: Volume | None, geometry: Geometry, pose: np.ndarray,
                        bodies: Mapping[str, RigidBody] | None = None,
                        settings: XraySettings = XraySettings()) -> SimulatedRadiograph:
    """Simulate the radiograph of ``ct`` (HU) seen from ``pose`` (world->camera, 4x4).

    ``labels`` (same grid) with ``bodies`` moves each rigid body to its own pose and the soft
    tissue with the blended deformation; without bodies the whole CT is projected at ``pose``.
    """
    li = line_integral(ct, labels, geometry, pose, bodies)
    return expose(li, geometry, settings)


def line_integral(ct: Volume, labels: Volume | None, geometry: Geometry, pose: np.ndarray,
                  bodies: Mapping[str, RigidBody] | None = None) -> np.ndarray:
    """Noise-free line integral of mu (H, W) at the effective energy, all tissue above air."""
    hu_flat = torch.from_numpy(np.ascontiguousarray(ct.array).reshape(-1).astype(np.float32))
    splat = Splatter(geometry, 1, (True,))
    select = ct.array.reshape(-1) > hu_conv.AIR_HU
    for batch in moved_points(ct, labels, geometry, pose, bodies, select):
        mu_v = hu_conv.attenuation(hu_flat[batch.voxels]) * (ct.voxel_volume_cm3 / batch.points_per_voxel)
        splat.add(batch.points, mu_v[:, None], torch.zeros(batch.voxels.shape[0], dtype=torch.long),
                  batch.footprint_mm)
    images, _ = splat.result()
    return images[0, 0].numpy()


@dataclass
class PointBatch:
    """Sub-voxel points in the camera frame: ``points`` (P, 3) mm, ``voxels`` (P,) flat voxel
    indices, ``points_per_voxel`` (a voxel's amount is split evenly over that many points)
    and the box ``footprint_mm`` (x, y) to splat them with."""

    points: torch.Tensor
    voxels: torch.Tensor
    points_per_voxel: int
    footprint_mm: tuple[float, float]


def moved_points(ct: Volume, labels: Volume | None, geometry: Geometry, pose: np.ndarray,
                 bodies: Mapping[str, RigidBody] | None, select: np.ndarray) -> Iterator[PointBatch]:
    """Sub-voxel points of the ``select``-ed voxels (flat bool mask) in the radiograph's pose:
    each rigid body's voxels at the body's pose, the others moved by the soft-tissue field
    (or rigidly with ``pose`` when there are no bodies). One batch per sub-voxel offset."""
    bodies = dict(bodies or {})
    if bodies and labels is None:
        raise ValueError("rigid bodies need a label map on the CT grid")
    if labels is not None:
        check_same_grid(ct, labels)
    rest = select.copy()
    if bodies:
        flat_labels = labels.array.reshape(-1)
        for body in bodies.values():
            table = np.zeros(max(int(flat_labels.max()), *body.labels) + 1, bool)
            table[list(body.labels)] = True
            mine = table[flat_labels] & select
            rest &= ~mine
            if mine.any():
                yield from _rigid_points(ct, geometry, np.flatnonzero(mine), np.asarray(body.pose, float))
    index = np.flatnonzero(rest)
    field = soft_tissue_field(labels, pose, bodies) if bodies and index.size else None
    if field is None:
        if index.size:
            yield from _rigid_points(ct, geometry, index, np.asarray(pose, float))
        return
    # sub-voxel points follow the field itself (trilinear between voxel centres), so the
    # footprints of neighbouring voxels keep tiling the detector where the tissue stretches
    p = np.asarray(pose, float)
    n = n_sub(ct, geometry, p)
    foot = footprint_mm(p[:3, :3] @ ct.affine[:3, :3], n)
    cam = (field.astype(np.float32) @ p[:3, :3].T.astype(np.float32) + p[:3, 3].astype(np.float32))
    padded = np.pad(cam, ((1, 1), (1, 1), (1, 1), (0, 0)), mode="edge")  # edge voxels repeat
    strides = (padded.shape[1] * padded.shape[2], padded.shape[2], 1)
    k, j, i = np.unravel_index(index, ct.array.shape)
    start = torch.from_numpy((k + 1) * strides[0] + (j + 1) * strides[1] + (i + 1))
    values = torch.from_numpy(padded.reshape(-1, 3))
    flat = torch.from_numpy(index)
    for off in sub_offsets(n):
        yield PointBatch(_interpolate(values, start, strides, off[::-1]), flat, int(np.prod(n)), foot)


def n_sub(ct: Volume, geometry: Geometry, pose: np.ndarray) -> tuple[int, int, int]:
    """Sub-voxels per index axis so that each projects to <= :data:`FOOTPRINT_PX` pixels."""
    m = np.asarray(pose, float) @ ct.affine
    shape = np.array(ct.array.shape[::-1], float)
    corners = np.array(np.meshgrid(*[[0.0, s - 1] for s in shape], indexing="ij")).reshape(3, -1).T
    z_min = float((corners @ m[:3, :3].T + m[:3, 3])[:, 2].min())
    return subdivision(m[:3, :3], max(z_min, 1.0), geometry, FOOTPRINT_PX)


def expose(li: np.ndarray, geometry: Geometry, settings: XraySettings) -> SimulatedRadiograph:
    """Beer-Lambert exposure of a line-integral image, scatter, noise, blur and processing."""
    s = settings
    px = np.array(geometry.pixel_spacing)
    n0 = s.photons_per_pixel
    primary = n0 * np.exp(-li.astype(np.float64))
    # a crude scatter source: the primary behind the body times the fraction that interacts, P (1 - exp(-L))
    interacted = primary * -np.expm1(-li.astype(np.float64))
    scatter = s.scatter_fraction * ndimage.gaussian_filter(interacted, s.scatter_sigma_mm / px,
                                                           mode="nearest")
    expected = primary + scatter
    if s.noise_seed is not None:
        counts = np.random.default_rng(s.noise_seed).poisson(expected).astype(np.float64)
    else:
        counts = expected
    counts = ndimage.gaussian_filter(counts, s.blur_sigma_mm / px, mode="nearest")
    log = -np.log(np.maximum(counts, 0.5) / n0)
    if s.unsharp_weight:
        background = ndimage.gaussian_filter(log, s.unsharp_sigma_mm / px, mode="nearest")
        log = log + s.unsharp_weight * (log - background)
    body = li > BODY_LINE_INTEGRAL
    lo, hi = np.percentile(log[body] if body.any() else log, s.window_percentiles)
    image = np.clip((log - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** s.gamma
    processing = {"log": "-ln(counts / photons_per_pixel)", "window": [float(lo), float(hi)],
                  "effective_energy_kev": hu_conv.EFFECTIVE_ENERGY_KEV, **s.to_json()}
    return SimulatedRadiograph(image.astype(np.float32), li.astype(np.float32), geometry, processing)


def _interpolate(values: torch.Tensor, start: torch.Tensor, strides: tuple[int, int, int],
                 offset_kji: np.ndarray) -> torch.Tensor:
    """Trilinear interpolation of per-voxel ``values`` (N, 3) of a (padded) grid with
    ``strides`` (k, j, i) at flat voxels ``start`` shifted by ``offset_kji`` (|offset| <= 0.5)."""
    out = torch.zeros(start.shape[0], values.shape[1])
    corners = [[(0, 1.0 - abs(o)), (int(np.sign(o)), abs(o))] if o else [(0, 1.0)] for o in offset_kji]
    for (dk, wk), (dj, wj), (di, wi) in itertools.product(*corners):
        w = wk * wj * wi
        if w > 0.0:
            out += w * values[start + (dk * strides[0] + dj * strides[1] + di * strides[2])]
    return out


def _rigid_points(ct: Volume, geometry: Geometry, index: np.ndarray, pose: np.ndarray
                  ) -> Iterator[PointBatch]:
    n = n_sub(ct, geometry, pose)
    m = pose @ ct.affine
    foot = footprint_mm(m[:3, :3], n)
    k, j, i = np.unravel_index(index, ct.array.shape)
    cam = torch.from_numpy((np.stack([i, j, k], 1) @ m[:3, :3].T + m[:3, 3]).astype(np.float32))
    offsets = torch.from_numpy((sub_offsets(n) @ m[:3, :3].T).astype(np.float32))
    flat = torch.from_numpy(index)
    for off in offsets:
        yield PointBatch(cam + off, flat, int(np.prod(n)), foot)
