"""Renderers of a body's DRR (and of the soft tissue around the bodies) for registration."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import hu as hu_conv
from ...errors import InputError
from ..geometry import Geometry, apply, project
from ..projector import Splatter, sub_offsets
from ..volume import Volume, check_same_grid
from .bodies import body_centroid

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


class BodyRenderer:
    """Renders the WVDRR (line integral of mu) of one rigid body in many poses at once.

    The body's voxels (attenuation x volume, cm2) are summed in blocks of ``block`` voxels
    per axis; each block is split into sub-samples whose projection is at most
    ``footprint_px`` pixels wide in the geometry and pose given to :meth:`prepare`.
    """

    def __init__(self, ct: Volume, labels: Volume, body_labels: tuple[int, ...]):
        check_same_grid(ct, labels)
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
        check_same_grid(ct, labels)
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
