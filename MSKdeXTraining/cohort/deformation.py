"""The pose change between CT and radiograph: rigid bones, soft tissue that follows them.

Voxels of a :class:`RigidBody` move rigidly with the body. Every other voxel ``x`` moves with
the reference ``pose`` blended with the bodies' motions relative to it: each relative
motion is a rotation ``R_b`` (rotation vector ``v_b``) about the body's centre ``c_b`` plus a
translation ``t_b``, and with weights ``w_b(x)``::

    phi(x) = x + sum_b [R(w_b v_b) (x - c_b) + c_b + w_b t_b - x] + d(x)

(then ``pose``). ``w_b`` is 1 on and next to body ``b`` (its voxels of the subsampled grid the
weights live on, and those with one of its full-resolution voxels among their 27 neighbours;
where two bodies are within :data:`HOLD_MM` of each other, as at the hip joint, they share)
and falls linearly to the blend over :data:`HOLD_MM`, so the tissue next to a bone keeps up
with it; further out the blend is inverse-square distance weights normalised over the
bodies and Gaussian-smoothed. Bone voxels themselves always move rigidly.
Blending rotation vectors keeps every local map a rotation, but a weight that varies across a
muscle still stretches or compresses it. ``d`` undoes that to first order: an irrotational
field ``grad(psi)`` with ``laplacian(psi) = 1 - det(J)`` over the body's soft tissue. It is
solved first on the 2x subsampled grid with no flux into the bones (tissue slides along a bone,
it is not pushed into it; conjugate gradients, :data:`CORRECTION_PASSES` passes), then once at
full resolution without bones (spectrally), so muscle volumes stay within 0.3 %
(:func:`jacobian_determinant` measures it; ``det J`` is between about 0.5 and 1.5 locally) and
the soft tissue that ends up inside a bone carries 0.04-0.6 % of its attenuation (generator 4,
which solved every pass without bones: up to 9 %; docs/cohort.md). Mass is conserved exactly
whatever ``phi``: the radiograph moves mass elements, it never resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.sparse.linalg import LinearOperator, cg
from scipy.spatial.transform import Rotation

from ..errors import MSKdeXWarning
from ..imaging.volume import Volume
from .fields import upsample

#: Gaussian smoothing (mm) of the soft-tissue blend weights.
BLEND_SIGMA_MM = 8.0
#: Distance (mm) over which a body's weight falls from 1 on the body to the blend.
HOLD_MM = 12.0
#: Passes of the volume correction on the 2x subsampled grid (one more follows at full size).
CORRECTION_PASSES = 3
#: Relative residual at which a pass's conjugate-gradient solve on the subsampled grid stops
#: (about 10 iterations on the demo cohort), and its iteration limit.
CG_TOLERANCE = 1e-3
CG_MAX_ITERATIONS = 200
#: Zero padding (voxels) around the grid for the periodic Poisson solve.
POISSON_PAD = 8


@dataclass(frozen=True)
class RigidBody:
    """A rigid body: its label values, world->camera ``pose`` (4x4) and blending centre (LPS mm).

    ``centre`` (e.g. the hip centre of a femur) is the point the soft tissue's partial motion
    rotates about; ``None`` uses the centroid of the body's voxels.
    """

    labels: tuple[int, ...]
    pose: np.ndarray
    centre: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class _Motion:
    """A body's motion relative to the reference pose: rotation vector (rad), centre, translation (mm)."""

    rotvec: np.ndarray
    centre: np.ndarray
    translation: np.ndarray


def soft_tissue_field(labels: Volume, pose: np.ndarray, bodies: Mapping[str, RigidBody]
                      ) -> np.ndarray | None:
    """Moved position (world LPS mm, before ``pose``) of every voxel centre of ``labels``' grid
    under the soft-tissue motion, ``(k, j, i, 3)`` float64; ``None`` when no body moves
    relative to ``pose`` (then everything moves rigidly with ``pose``)."""
    motions = _relative_motions(labels, pose, bodies)
    if all(m is None for m in motions):
        return None
    coarse = _coarse(labels)
    # each body on the coarse grid: the voxels with one of its voxels among their 27 neighbours
    reach = [ndimage.maximum_filter(np.isin(labels.array, b.labels), size=3)[::2, ::2, ::2]
             for b in bodies.values()]
    weights = _weights(coarse, bodies, reach)
    phi_c = _blend(_grid_centres(coarse), weights, motions)
    correction = _slide(coarse, phi_c, ~np.any(reach, axis=0)) - phi_c
    shape = labels.array.shape
    phi = _blend(_grid_centres(labels), [upsample(w, shape) for w in weights], motions)
    phi += np.stack([upsample(correction[..., c], shape) for c in range(3)], -1)
    return _correct(labels, phi)


def jacobian_determinant(labels: Volume, pose: np.ndarray, bodies: Mapping[str, RigidBody]
                         ) -> np.ndarray:
    """det of the Jacobian of the soft-tissue motion at every voxel (central differences).

    The field is evaluated at every voxel, bone voxels included (where it is close to the
    body's rigid motion: soft tissue may slide along a bone by a few mm), so
    ``sum(det[muscle]) * voxel volume`` is the muscle's volume in the radiograph.
    """
    phi = soft_tissue_field(labels, pose, bodies)
    if phi is None:
        return np.ones(labels.array.shape)
    return _det_jacobian(phi, labels.spacing, labels.direction)


def _relative_motions(labels: Volume, pose: np.ndarray, bodies: Mapping[str, RigidBody]
                      ) -> list[_Motion | None]:
    inv_pose = np.linalg.inv(np.asarray(pose, float))
    out: list[_Motion | None] = []
    for body in bodies.values():
        rel = inv_pose @ np.asarray(body.pose, float)  # world -> world motion of the body
        rotvec = Rotation.from_matrix(rel[:3, :3]).as_rotvec()
        if np.abs(rotvec).max() < 1e-9 and np.abs(rel[:3, 3]).max() < 1e-6:
            out.append(None)
            continue
        if body.centre is not None:
            c = np.asarray(body.centre, float)
        else:
            index = np.flatnonzero(np.isin(labels.array.reshape(-1), body.labels))
            if not index.size:
                raise ValueError(f"rigid body with labels {body.labels} has no voxels")
            c = _centres(labels, index).mean(0)
        out.append(_Motion(rotvec, c, rel[:3, :3] @ c + rel[:3, 3] - c))
    return out


def _blend(x: np.ndarray, weights: list[np.ndarray], motions: list[_Motion | None]) -> np.ndarray:
    """Blended positions (..., 3) float64 of points ``x`` (..., 3) mm, weights (...) each."""
    out = x.astype(np.float64)
    for m, w in zip(motions, weights):
        if m is None:
            continue
        theta = float(np.linalg.norm(m.rotvec))
        d = x - m.centre
        out += w[..., None] * m.translation
        if theta == 0.0:
            continue
        k = m.rotvec / theta
        a = w * theta
        cos, sin = np.cos(a)[..., None], np.sin(a)[..., None]
        # Rodrigues: R d = d cos a + (k x d) sin a + k (k . d)(1 - cos a)
        out += d * (cos - 1.0) + np.cross(k, d) * sin + k * ((d @ k)[..., None] * (1.0 - cos))
    return out


def _weights(coarse: Volume, bodies: Mapping[str, RigidBody], reach: list[np.ndarray]
             ) -> list[np.ndarray]:
    """Weights on ``coarse``'s grid (float32), summing to 1: the blend (inverse-square
    distances to the bodies, normalised, Gaussian-smoothed by :data:`BLEND_SIGMA_MM`) taken
    over by each body within :data:`HOLD_MM` of its ``reach`` mask (``1 - distance / HOLD_MM``),
    the mask the volume correction keeps its flux out of."""
    spacing = coarse.spacing[::-1]
    far = np.full(coarse.array.shape, np.inf)

    def distance(mask: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~mask, sampling=spacing) if mask.any() else far

    raw = [1.0 / (distance(np.isin(coarse.array, b.labels)) + spacing.min()) ** 2
           for b in bodies.values()]
    total = np.sum(raw, axis=0)
    smooth = [ndimage.gaussian_filter(r / total, BLEND_SIGMA_MM / spacing) for r in raw]
    total = np.sum(smooth, axis=0)
    hold = [np.clip(1.0 - distance(m) / HOLD_MM, 0.0, 1.0) for m in reach]
    hold_total = np.maximum(np.sum(hold, axis=0), 1.0)
    rest = 1.0 - np.sum(hold, axis=0) / hold_total
    return [(h / hold_total + rest * w / total).astype(np.float32) for h, w in zip(hold, smooth)]


def _correct(grid: Volume, phi: np.ndarray) -> np.ndarray:
    """``phi`` (k, j, i, 3) plus one irrotational correction that brings det J to 1 in the body
    (label > 0, bones included) of ``grid`` to first order, with no boundary at the bones (the
    fine residual is small)."""
    return phi + _irrotational_correction(_volume_excess(grid, phi), grid.spacing[::-1]) @ grid.direction.T


def _slide(grid: Volume, phi: np.ndarray, free: np.ndarray) -> np.ndarray:
    """``phi`` plus :data:`CORRECTION_PASSES` irrotational corrections that bring det J to 1 in
    the body (label > 0) of ``grid``, with no flux out of the ``free`` voxels (e.g. into bones)."""
    phi = phi.copy()
    for _ in range(CORRECTION_PASSES):
        phi += _neumann_correction(_volume_excess(grid, phi), free, grid.spacing[::-1]) @ grid.direction.T
    return phi


def _volume_excess(grid: Volume, phi: np.ndarray) -> np.ndarray:
    """``det J - 1`` of ``phi`` in the body (label > 0) of ``grid``, 0 outside it."""
    return (_det_jacobian(phi, grid.spacing, grid.direction) - 1.0) * (grid.array > 0)


def _neumann_correction(excess: np.ndarray, free: np.ndarray, spacing_kji: np.ndarray
                        ) -> np.ndarray:
    """``grad(psi)`` (k, j, i, 3 in i, j, k order) with ``div grad psi = -excess`` on the
    largest connected region of ``free`` voxels and no flux out of it (nor out of the box).

    Finite volumes (a face between two free voxels conducts), solved by conjugate gradients
    preconditioned with the box's Neumann Laplacian (diagonal in the DCT-II basis); the
    excess is made mean-free over the region first, as the Neumann problem requires. The
    gradient at a voxel is the mean of its two face gradients along each axis (what det J's
    central differences see is a smoothed divergence: later passes take up the difference).
    """
    if not free.any():
        return np.zeros(free.shape + (3,))
    regions, n = ndimage.label(free)
    if n > 1:  # enclosed pockets have no outlet: left uncorrected
        free = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    h = np.asarray(spacing_kji, float)
    faces = [(np.take(free, range(m - 1), axis=a) & np.take(free, range(1, m), axis=a)).astype(float)
             for a, m in enumerate(free.shape)]
    mask = free.astype(float)
    shape = free.shape

    def face_gradients(psi: np.ndarray) -> list[np.ndarray]:
        return [np.diff(psi, axis=a) * faces[a] / h[a] for a in range(3)]

    def neg_laplacian(v: np.ndarray) -> np.ndarray:
        psi, out = v.reshape(shape), np.zeros(shape)
        for a, g in enumerate(face_gradients(psi)):
            out[(slice(None),) * a + (slice(0, -1),)] -= g / h[a]
            out[(slice(None),) * a + (slice(1, None),)] += g / h[a]
        return out.ravel()

    # the preconditioner's box is padded to sizes the DCT handles fast (not primes): any
    # symmetric positive definite preconditioner leads CG to the same solution
    box = tuple(scipy.fft.next_fast_len(m, real=True) for m in shape)
    inside = tuple(slice(0, m) for m in shape)
    eig = sum(((2.0 - 2.0 * np.cos(np.pi * np.arange(m) / m)) / h[a] ** 2).reshape(
        [-1 if b == a else 1 for b in range(3)]) for a, m in enumerate(box))
    eig[0, 0, 0] = np.inf  # the constant: the Neumann problem's null space

    def precondition(v: np.ndarray) -> np.ndarray:
        padded = np.zeros(box)
        padded[inside] = v.reshape(shape)
        z = scipy.fft.idctn(scipy.fft.dctn(padded, norm="ortho") / eig, norm="ortho")[inside] * mask
        return (z - mask * (z.sum() / mask.sum())).ravel()

    rhs = excess * mask
    rhs -= mask * (rhs.sum() / mask.sum())
    operator = LinearOperator((rhs.size,) * 2, matvec=neg_laplacian, dtype=np.float64)
    psi, info = cg(operator, rhs.ravel(), rtol=CG_TOLERANCE, maxiter=CG_MAX_ITERATIONS,
                   M=LinearOperator((rhs.size,) * 2, matvec=precondition, dtype=np.float64))
    if info > 0:
        warnings.warn(f"soft-tissue volume correction: conjugate gradients stopped at {CG_MAX_ITERATIONS} "
                      f"iterations before a relative residual of {CG_TOLERANCE}; the radiograph's soft "
                      f"tissue may keep its CT volume less closely than the 1 % the cohort is held to",
                      MSKdeXWarning, stacklevel=2)
    grads = []
    for a, g in enumerate(face_gradients(psi.reshape(shape))):
        pad = [(0, 0)] * 3
        pad[a] = (1, 0)
        low = np.pad(g, pad)
        pad[a] = (0, 1)
        grads.append(0.5 * (low + np.pad(g, pad)))
    return np.stack(grads[::-1], -1)


def _irrotational_correction(excess: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray:
    """``grad(psi)`` (k, j, i, 3 in i, j, k order) with ``div grad psi = -excess`` in the
    central-difference sense, on a zero-padded periodic grid."""
    p = POISSON_PAD
    padded = np.pad(excess.astype(np.float32), p)
    f = scipy.fft.rfftn(padded, axes=(0, 1, 2))
    sines = []
    for axis, (n, h) in enumerate(zip(padded.shape, spacing_kji)):
        freq = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        shape = [1, 1, 1]
        shape[axis] = -1
        sines.append((np.sin(2 * np.pi * freq) / h).reshape(shape).astype(np.float32))
    denom = sines[0] ** 2 + sines[1] ** 2 + sines[2] ** 2
    psi = np.divide(f, denom, out=np.zeros_like(f), where=denom > 1e-12)  # laplacian psi = -excess
    grads = [scipy.fft.irfftn(1j * s * psi, padded.shape, axes=(0, 1, 2)) for s in sines]  # d/dk, d/dj, d/di
    cut = tuple(slice(p, p + n) for n in excess.shape)
    return np.stack([grads[2][cut], grads[1][cut], grads[0][cut]], -1)


def _det_jacobian(phi: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """det(d phi / d x) of a map sampled at voxel centres, ``phi`` (k, j, i, 3) world mm."""
    # g[c][a]: d phi_c / d (index axis a in mm), index axes in i, j, k order
    g = [np.gradient(phi[..., c], *spacing[::-1])[::-1] for c in range(3)]
    j = [[g[c][b] for b in range(3)] for c in range(3)]
    if not np.allclose(direction, np.eye(3)):
        inv = np.linalg.inv(direction)  # d (axis mm) / d world
        j = [[sum(g[c][a] * inv[a, b] for a in range(3)) for b in range(3)] for c in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def _coarse(labels: Volume) -> Volume:
    """Labels subsampled by 2 (same first voxel centre, twice the spacing)."""
    return Volume(np.ascontiguousarray(labels.array[::2, ::2, ::2]), labels.spacing * 2,
                  labels.origin, labels.direction)


def _grid_centres(vol: Volume) -> np.ndarray:
    """World (LPS mm) coordinates of every voxel centre, ``(k, j, i, 3)`` float64."""
    k, j, i = (np.arange(n, dtype=float) for n in vol.array.shape)
    a = vol.affine
    return (a[:3, 0] * i[None, None, :, None] + a[:3, 1] * j[None, :, None, None]
            + a[:3, 2] * k[:, None, None, None] + a[:3, 3])


def _centres(vol: Volume, index: np.ndarray) -> np.ndarray:
    k, j, i = np.unravel_index(index, vol.array.shape)
    return np.stack([i, j, k], 1) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
