"""The renderer of a body's DRR for registration."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from .. import hu as hu_conv
from ...errors import InputError
from ..geometry import Geometry, apply
from ..projector import Splatter, sub_offsets
from ..volume import Volume, check_same_grid
from .bodies import body_centroid


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
        # (B, 3, P): each coordinate contiguous; viewed as (B, P, 3) points
        cam = torch.einsum("pj,bij->bip", self.points, poses_t[:, :3, :3]) + poses_t[:, :3, 3, None]
        splat = Splatter(geometry, len(poses_t), (True,), track_lost=False)
        splat.add(cam.transpose(1, 2), self.values, torch.arange(len(poses_t))[:, None])
        return splat.result()[0][0]


def render_body(ct: Volume, labels: Volume, body_labels: tuple[int, ...], pose: np.ndarray,
                geometry: Geometry) -> np.ndarray:
    """WVDRR (rows, cols; line integral of mu) of one body at ``pose``, e.g. for QC images."""
    renderer = BodyRenderer(ct, labels, body_labels)
    renderer.prepare(geometry, pose, footprint_px=0.5)
    return renderer.render(np.asarray(pose, float)[None], geometry)[0].numpy()
