"""Mass-conserving voxel-driven projector for object-wise DRRs.

Every voxel holds an *amount*: its volume (cm3, VDRR), its mass (g, MDRR) or its
attenuation x volume (cm2, WVDRR). Each voxel (or sub-voxel, see :func:`subdivision`) is
splatted onto the detector with a box footprint: a rectangle as wide as the sub-voxel's
projected extent along the detector columns and rows, integrated over the pixels it
overlaps (the separable-footprint idea of Long, Fessler & Balter, IEEE TMI 29:1839, 2010).
The footprint weights sum to one, so the sum over the detector of a VDRR/MDRR times the pixel
area is the object's volume/mass *exactly*, in any pose and magnification, as long as the
object lies inside the field of view (whatever falls outside is reported as ``lost``).
Because the footprints of neighbouring sub-voxels tile the detector, a uniform slab projects
flat whatever the ratio of voxel to pixel size (no moire, no holes); sub-voxels keep every
footprint at most one pixel wide, so a footprint touches at most 2 x 2 pixels.

A radiograph needs line integrals, not amounts per detector area: a sub-voxel at distance
``s`` from the source and depth ``z`` crosses a pixel's ray cone whose cross-section is
``A cos(g) (s/R)^2``, so its amount is scaled by ``SDD^2 s / z^3`` (1 in parallel geometry)
before the division by the pixel area; that gives the WVDRR its line-integral meaning.

Output units: WVDRR - line integral of mu (dimensionless); VDRR - cm (cm3 per cm2 of
detector); MDRR - g/cm2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..drr_types import DRR_TYPES, PER_AREA_TYPES
from ..errors import InputError
from ..objects import ObjectMap
from ..progress import Progress
from . import hu as hu_conv
from .geometry import Geometry, check_pose
from .volume import Volume, check_same_grid

#: A numpy array or a torch tensor (functions taking either return the same kind).
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def per_pixel_area(drr: ArrayT, from_area_cm2: float, to_area_cm2: float) -> ArrayT:
    """DRR stack ``(..., 3, N, H, W)`` (numpy or torch) whose per-area types
    (:data:`PER_AREA_TYPES`) are re-expressed from pixels of ``from_area_cm2`` to pixels of
    ``to_area_cm2``: the amount in each pixel is unchanged, so ``sum x to_area`` equals
    ``sum x from_area``. WVDRR pixels (line integrals) are unchanged."""
    s = np.array([from_area_cm2 / to_area_cm2 if t in PER_AREA_TYPES else 1.0 for t in DRR_TYPES])
    s = s.reshape(3, 1, 1, 1)
    if isinstance(drr, torch.Tensor):
        return drr * torch.from_numpy(s).to(drr)
    return (drr * s).astype(drr.dtype)


#: Largest projected sub-voxel footprint, in pixels, along the detector rows and columns.
#: Box footprints as wide as the sub-voxel spacing tile the detector, so one pixel suffices.
MAX_FOOTPRINT_PX = 1.0
#: Voxels per processing chunk (CPU); the GPU takes larger chunks.
CHUNK_CPU = 1 << 18
CHUNK_GPU = 1 << 22
#: Widest range of integer HU (values) looked up in a table in :func:`voxel_amounts`: a CT's
#: range is a few thousand; an outlier (e.g. INT32_MIN) would make the table gigabytes.
MAX_TABLE_HU = 100_000


@dataclass
class DRRStack:
    """Object-wise DRRs ``data`` (3, N, H, W): WVDRR, VDRR, MDRR for each of N objects.

    ``lost`` (3, N) holds the amounts (cm2, cm3, g) splatted outside the detector.
    """

    data: torch.Tensor
    names: tuple[str, ...]
    geometry: Geometry
    lost: torch.Tensor | None = None

    @property
    def volume_cm3(self) -> np.ndarray:
        """(N,) object volumes from the VDRR image sums (cm3)."""
        return self.sums()[1]

    @property
    def mass_g(self) -> np.ndarray:
        """(N,) object masses from the MDRR image sums (g)."""
        return self.sums()[2]

    def sums(self) -> np.ndarray:
        """(3, N) image sums times pixel area: cm2 (WVDRR), cm3 (VDRR), g (MDRR)."""
        s = self.data.double().sum(dim=(-1, -2)).cpu().numpy()
        return s * self.geometry.pixel_area_cm2

    def lost_fraction(self) -> np.ndarray:
        """(3, N) fraction of each object's amount that fell outside the detector."""
        if self.lost is None:
            return np.zeros((3, len(self.names)))
        lost = self.lost.double().cpu().numpy()
        total = self.sums() + lost
        return np.divide(lost, total, out=np.zeros_like(lost), where=total > 0)


def subdivision(axes_cam: np.ndarray, z_min: float, geometry: Geometry,
                max_footprint_px: float = MAX_FOOTPRINT_PX) -> tuple[int, int, int]:
    """Sub-voxels per index axis (i, j, k) for artefact-free splatting.

    ``axes_cam`` (3, 3): columns are the voxel edge vectors (mm) in the camera frame;
    ``z_min`` the smallest depth of the object (mm, largest magnification). Within each
    slice (see :func:`slice_axis`) the sub-voxels form a 2D lattice on the detector; it is
    refined until every footprint (:func:`footprint_mm`) is at most ``max_footprint_px``
    wide and, when the lattice is rotated against the detector axes, until its spacing is
    below :func:`max_spacing_px` (a rotated lattice is not tiled exactly by separable
    footprints; a finer one keeps the ripple of a uniform slab below ~1 %). The slice axis
    is split so that consecutive sub-slices move by at most the same spacing.
    """
    axes = np.asarray(axes_cam, float)
    mag = 1.0 if geometry.parallel else geometry.sdd / max(z_min, 1e-6)
    pix = np.array([geometry.pixel_spacing[1], geometry.pixel_spacing[0]])
    s = slice_axis(axes)
    a, b = (x for x in range(3) if x != s)
    n = [1, 1, 1]
    limit = max_spacing_px(axes[:2, a], axes[:2, b])
    step = min(max_footprint_px, limit)
    n[s] = max(1, math.ceil((np.abs(axes[:2, s]) * mag / pix).max() / step - 1e-9))
    na, nb = np.meshgrid(np.arange(1, 257), np.arange(1, 257), indexing="ij")
    wx, wy = _lattice_footprint(axes[:2, a], axes[:2, b], na, nb)
    ok = ((wx * mag / pix[0] <= max_footprint_px + 1e-9) & (wy * mag / pix[1] <= max_footprint_px + 1e-9)
          & (np.linalg.norm(axes[:2, a] / pix) * mag / na <= limit + 1e-9)
          & (np.linalg.norm(axes[:2, b] / pix) * mag / nb <= limit + 1e-9))
    if not ok.any():
        raise InputError(f"voxels project to more than 256 pixels (edges {axes.T.tolist()} mm at "
                         f"magnification {mag:.3g}); use a coarser detector or resample the CT")
    cost = np.where(ok, na * nb, np.iinfo(np.int64).max)
    best = np.unravel_index(np.argmin(cost), cost.shape)
    n[a], n[b] = int(na[best]), int(nb[best])
    return tuple(n)


def max_spacing_px(edge_a: np.ndarray, edge_b: np.ndarray) -> float:
    """Largest sub-voxel spacing (pixels) for a slice lattice with in-plane edges (x, y) mm.

    Measured ripple of a uniform slab (RMS): aligned lattices are flat at any spacing up to
    one pixel; a lattice rotated by <= 10 deg stays below 0.8 % at 1 px, <= 20 deg at 0.4 px,
    any angle at 0.25 px.
    """
    angle = max(math.degrees(math.atan2(min(abs(e[0]), abs(e[1])), max(abs(e[0]), abs(e[1]), 1e-12)))
                for e in (edge_a, edge_b))
    if angle <= 10.0:
        return 1.0
    return 0.4 if angle <= 20.0 else 0.25


def _lattice_footprint(edge_a: np.ndarray, edge_b: np.ndarray, na, nb):
    """Footprint widths (x, y) in mm of the lattice spanned by ``edge_a/na`` and ``edge_b/nb``.

    The width along x is 1 / (largest x component of the two reciprocal lattice vectors),
    so the box's spectrum vanishes on both: exact tiling for aligned lattices, and the
    first-order ripple cancelled for rotated ones.
    """
    (p, r), (q, t) = edge_a, edge_b
    det = abs(p * t - q * r)
    if det < 1e-12 * max(np.abs(edge_a).max(), np.abs(edge_b).max(), 1e-12) ** 2:
        raise InputError(f"degenerate voxel axes {edge_a}, {edge_b}: they project onto a line")
    wx = det / np.maximum(abs(t) * na, abs(r) * nb)
    wy = det / np.maximum(abs(q) * na, abs(p) * nb)
    return wx, wy


def slice_axis(axes_cam: np.ndarray) -> int:
    """Index axis (0, 1, 2) whose edge is most parallel to the central ray (camera z)."""
    axes = np.asarray(axes_cam, float)
    return int(np.argmax(np.abs(axes[2]) / np.linalg.norm(axes, axis=0)))


def footprint_mm(axes_cam: np.ndarray, n_sub: tuple[int, int, int]) -> tuple[float, float]:
    """Width (x, y) in mm of a sub-voxel's box footprint, before magnification.

    Computed from the lattice of sub-voxel centres within a slice (the two index axes other
    than :func:`slice_axis`): the sub-voxel spacing for lattices aligned with the detector.
    """
    axes = np.asarray(axes_cam, float)
    s = slice_axis(axes)
    a, b = (x for x in range(3) if x != s)
    wx, wy = _lattice_footprint(axes[:2, a], axes[:2, b], n_sub[a], n_sub[b])
    return float(wx), float(wy)


class Splatter:
    """Accumulates amounts at camera-frame points into ``(C, channels, H, W)`` images.

    ``line_integral`` (C,) marks the value columns that get the ray-cone weighting (WVDRR).
    Points outside the detector land in a one-pixel border that is cut off and counted as lost
    (with ``track_lost``; without it, as registration renders, lost amounts read 0). Works on
    any torch device; accumulation is in ``dtype`` (float32 by default).
    """

    def __init__(self, geometry: Geometry, n_channels: int, line_integral: tuple[bool, ...],
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 track_lost: bool = True):
        self.g = geometry
        self.n_channels = n_channels
        self.device = torch.device(device)
        self.dtype = dtype
        self.line_integral = tuple(bool(b) for b in line_integral)
        self._line_integral_mask = torch.tensor(self.line_integral, device=self.device)
        self.c = len(self.line_integral)
        self.plane = (geometry.rows + 2) * (geometry.cols + 2)
        size = n_channels * self.plane
        # a point clamped onto the last border row or column puts its far corners (zero weight)
        # up to one row and one cell further: past the last plane, into this tail
        self.buffer = torch.zeros(self.c, size + geometry.cols + 3, device=self.device, dtype=dtype)
        self.index_dtype = torch.int32 if self.buffer.shape[1] < 2 ** 31 else torch.int64
        #: everything splatted, per type and channel, in float64: the amount that left the
        #: detector is this minus the image (the border cells hold it too, but pile up too many
        #: small amounts for float32); None without ``track_lost`` (then lost amounts read 0)
        self.total = (torch.zeros(self.c, n_channels, device=self.device, dtype=torch.float64)
                      if track_lost else None)

    def add(self, points: torch.Tensor, values: torch.Tensor, channel: torch.Tensor,
            footprint: tuple[float, float] | None = None) -> None:
        """Splat ``values`` (..., C) at ``points`` (..., 3; camera mm) into ``channel`` (...).

        ``values`` and ``channel`` broadcast to the leading shape of ``points`` (e.g. points
        (B, P, 3), values (P, C), channel (B, 1)); ``points`` may be a strided view and must be
        finite (not checked here, for speed; :func:`project_objects` checks its poses).
        ``footprint`` is the (x, y) extent in mm of each point's footprint at its own depth (see
        :func:`footprint_mm`); it is magnified to the detector and capped at one pixel. ``None``
        means one pixel (bilinear splatting).
        """
        g = self.g
        points = points.to(self.device, self.dtype)
        values = values.to(self.device, self.dtype)
        x, y, z = points.unbind(-1)
        ps_r, ps_c = g.pixel_spacing
        u0, v0 = g.detector_origin
        if g.parallel:
            col = x * (1.0 / ps_c) - u0 / ps_c
            row = y * (1.0 / ps_r) - v0 / ps_r
            mag = None
        else:
            depth = z.clamp_min(1e-3)  # points behind the source are refused upstream
            mag = g.sdd / depth
            col = x * mag * (1.0 / ps_c) - u0 / ps_c
            row = y * mag * (1.0 / ps_r) - v0 / ps_r
            if any(self.line_integral):
                # SDD^2 s / z^3 = (SDD/z)^2 * (s/z): ray-cone cross-section at the point
                w = mag * mag * torch.sqrt(x * x + y * y + z * z) / depth
                scaled = values * w[..., None]
                values = scaled if all(self.line_integral) else torch.where(
                    self._line_integral_mask, scaled, values)
        if footprint is None:
            wc = wr = 1.0
        elif mag is None:
            wc, wr = min(footprint[0] / ps_c, 1.0), min(footprint[1] / ps_r, 1.0)
        else:
            wc = (mag * (footprint[0] / ps_c)).clamp(1e-6, 1.0)
            wr = (mag * (footprint[1] / ps_r)).clamp(1e-6, 1.0)
        ch = channel.to(self.device, self.index_dtype)
        if self.total is not None:
            flat_ch = ch.expand(x.shape).reshape(-1)
            for k in range(self.c):
                self.total[k].index_add_(0, flat_ch, values[..., k].expand(x.shape).reshape(-1).double())
        c0, fc = _box_weights(col, wc, g.cols, self.index_dtype)
        r0, fr = _box_weights(row, wr, g.rows, self.index_dtype)
        wp = g.cols + 2
        base = r0 * wp + c0 + (ch * self.plane + wp + 1)  # cell of (r0, c0) inside the border
        for offset, weight in ((0, (1 - fr) * (1 - fc)), (1, (1 - fr) * fc),
                               (wp, fr * (1 - fc)), (wp + 1, fr * fc)):
            index = (base + offset if offset else base).reshape(-1)
            for k in range(self.c):
                self.buffer[k].index_add_(0, index, (values[..., k] * weight).reshape(-1))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (C, channels, H, W) per detector area (amount/cm2) and lost amounts (C, channels;
        zeros without ``track_lost``)."""
        g = self.g
        full = self.buffer[:, :self.n_channels * self.plane].view(self.c, self.n_channels, g.rows + 2,
                                                                   g.cols + 2)
        inner = full[:, :, 1:-1, 1:-1]
        if self.total is None:
            return inner / g.pixel_area_cm2, torch.zeros_like(inner[:, :, 0, 0], dtype=torch.float64)
        border = (full[:, :, 0, :], full[:, :, -1, :], full[:, :, 1:-1, 0], full[:, :, 1:-1, -1])
        hit = sum(b.sum(dim=-1) for b in border) > 0
        lost = torch.where(hit, (self.total - inner.double().sum(dim=(-1, -2))).clamp_min(0.0), 0.0)
        return inner / g.pixel_area_cm2, lost


def _box_weights(pos: torch.Tensor, width: torch.Tensor | float, size: int,
                 index_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """First pixel index (``index_dtype``) and the fraction of a box footprint that falls on
    the next one.

    ``pos`` is the footprint centre in pixel units (pixel p covers [p - 0.5, p + 0.5]),
    ``width`` <= 1 pixel. Centres are clamped into the border band [-1, size] first.
    """
    pos = pos.clamp(-1.0, float(size))
    if isinstance(width, float) and width == 1.0:  # bilinear
        p = torch.floor(pos)
        return p.to(index_dtype), pos - p
    left = pos - 0.5 * width
    p = torch.floor(left + 0.5)
    frac = (1.0 - (p + 0.5 - left) / width).clamp(0.0, 1.0)
    return p.to(index_dtype), frac


def voxel_chunks(mask_index: np.ndarray, shape: tuple[int, int, int], chunk: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (flat indices, (n, 3) i-j-k indices) of the voxels in ``mask_index`` by chunks."""
    for start in range(0, mask_index.size, chunk):
        flat = mask_index[start:start + chunk]
        k, j, i = np.unravel_index(flat, shape)
        yield flat, np.stack([i, j, k], axis=1)


def sub_offsets(n: tuple[int, int, int]) -> np.ndarray:
    """(n_i*n_j*n_k, 3) sub-voxel centre offsets in index units, centred on the voxel."""
    axes = [(np.arange(m) + 0.5) / m - 0.5 for m in n]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def voxel_amounts(hu: np.ndarray, is_muscle: np.ndarray, voxel_cm3: float) -> np.ndarray:
    """(P, 3) amounts per voxel: mu x volume (cm2), volume (cm3), MDRR mass (g).

    ``hu`` (P,) CT numbers, ``is_muscle`` (P,) bool. Integer HU spanning at most
    :data:`MAX_TABLE_HU` go through a lookup table built with :mod:`imaging.hu` (same values,
    much faster); others (floats, or an outlier far off the HU scale) are converted directly.
    """
    out = np.empty((hu.size, 3), np.float32)
    integer = hu.dtype.kind in "iu" and hu.size > 0
    lo, hi = (int(hu.min()), int(hu.max())) if integer else (0, 0)
    if integer and hi - lo <= MAX_TABLE_HU:
        grid = np.arange(lo, hi + 1, dtype=np.float64)
        table = np.stack([hu_conv.attenuation(grid), hu_conv.mdrr_density(grid, False),
                          hu_conv.mdrr_density(grid, True)], 1) * voxel_cm3
        rel = hu.astype(np.int64) - lo
        out[:, 0] = table[rel, 0]
        out[:, 2] = np.where(is_muscle, table[rel, 2], table[rel, 1])
    else:
        h = hu.astype(np.float64)
        out[:, 0] = hu_conv.attenuation(h) * voxel_cm3
        out[:, 2] = hu_conv.mdrr_density(h, is_muscle) * voxel_cm3
    out[:, 1] = voxel_cm3
    return out


def project_objects(ct: Volume, labels: Volume, objects: ObjectMap, geometry: Geometry,
                    pose: np.ndarray, label_poses: Mapping[int, np.ndarray] | None = None,
                    device: str | torch.device = "cpu", chunk: int | None = None,
                    source: str = "label map", progress: Progress | None = None) -> DRRStack:
    """Render WVDRR, VDRR and MDRR of every object in ``objects``: a (3, N, H, W) stack.

    ``ct`` in HU and ``labels`` on the same grid; ``pose`` is the world->camera transform
    (4x4, mm); ``label_poses`` overrides it for voxels of the given label values (a bone at
    its own registered pose). An object absent from the labels gives a zero channel.
    ``source`` names the label map in error messages; ``progress(fraction, message)`` is
    called as chunks finish. Units: see the module docstring.
    """
    check_same_grid(ct, labels, labels_path=source)
    check_pose(pose, "project_objects: pose")
    for value, p in (label_poses or {}).items():
        check_pose(p, f"project_objects: label_poses[{value}]")
    device = torch.device(device)
    chunk = chunk or (CHUNK_GPU if device.type == "cuda" else CHUNK_CPU)
    table = objects.lookup_table(labels.array, source)
    small = table.astype(np.int8 if len(objects) < 127 else np.int16)
    obj_of_voxel = small[labels.array].reshape(-1)
    is_muscle = np.array([o.is_muscle for o in objects.objects])
    groups = _pose_groups(labels.array.reshape(-1), obj_of_voxel, pose, label_poses or {})
    splat = Splatter(geometry, len(objects), (True, False, False), device)
    hu_flat = ct.array.reshape(-1)
    total = sum(index.size for _, index in groups)
    done = 0
    for group_pose, index in groups:
        if index.size == 0:
            continue
        m = group_pose @ ct.affine  # index -> camera
        lin = m[:3, :3]
        z_min = _depth_range(index, ct.array.shape, m)
        if not geometry.parallel and z_min <= 0:
            raise InputError(f"{source}: objects reach {z_min:.1f} mm behind the X-ray source; "
                             "expected a pose that places them between source and detector")
        try:
            n_sub = subdivision(lin, z_min, geometry)
        except InputError as e:
            raise InputError(f"{source}: CT spacing {np.round(ct.spacing, 4).tolist()} mm against detector pixel_spacing "
                             f"{np.round(geometry.pixel_spacing, 4).tolist()} mm: {e}") from None
        foot = footprint_mm(lin, n_sub)
        offsets = torch.from_numpy(sub_offsets(n_sub) @ lin.T).float().to(device)
        lin_t = torch.from_numpy(lin.T.copy()).float().to(device)
        t_t = torch.from_numpy(m[:3, 3].copy()).float().to(device)
        for flat, ijk in voxel_chunks(index, ct.array.shape, chunk):
            obj = obj_of_voxel[flat].astype(np.int64)
            vals = voxel_amounts(hu_flat[flat], is_muscle[obj], ct.voxel_volume_cm3)
            vals_t = torch.from_numpy(vals).to(device) / offsets.shape[0]
            obj_t = torch.from_numpy(obj).to(device)
            centres = torch.from_numpy(ijk.astype(np.float32)).to(device) @ lin_t + t_t
            for off in offsets:
                splat.add(centres + off, vals_t, obj_t, foot)
            done += flat.size
            if progress:
                progress(done / total, f"projected {done} of {total} voxels")
    images, lost = splat.result()
    return DRRStack(images.contiguous(), objects.names, geometry, lost)


def _pose_groups(flat_labels: np.ndarray, obj_of_voxel: np.ndarray, pose: np.ndarray,
                 label_poses: Mapping[int, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the object voxels into (pose, flat voxel indices) groups."""
    in_object = obj_of_voxel >= 0
    groups = []
    if label_poses:
        special = np.zeros_like(in_object)
        for value, p in label_poses.items():
            sel = flat_labels == value
            special |= sel
            groups.append((np.asarray(p, float), np.flatnonzero(sel & in_object)))
        in_object &= ~special
    groups.append((np.asarray(pose, float), np.flatnonzero(in_object)))
    return groups


def _depth_range(index: np.ndarray, shape: tuple[int, int, int], m: np.ndarray) -> float:
    """Smallest camera depth (mm) of the bounding box of the given voxels (flat indices)."""
    nk, nj, ni = shape
    lo = np.array([(index % ni).min(), (index // ni % nj).min(), index.min() // (ni * nj)], float)
    hi = np.array([(index % ni).max(), (index // ni % nj).max(), index.max() // (ni * nj)], float)
    corners = np.array(np.meshgrid(*zip(lo - 0.5, hi + 0.5), indexing="ij")).reshape(3, -1).T
    return float((corners @ m[:3, :3].T + m[:3, 3])[:, 2].min())
