"""Projection geometry and pose conventions (see README, "Geometry convention v1").

World frame: LPS millimetres, as SimpleITK/DICOM (x to the patient's Left, y Posterior,
z Superior). A CT's voxel (i, j, k) maps to the world by its index-to-world affine.

Camera frame (millimetres): origin at the X-ray source (perspective) and z along the central
ray, from the source towards the detector; x along detector columns, y along detector rows.
The detector plane is z = SDD; pixel (row r, column c) has its centre at
``u = (c - (cols-1)/2) * col_spacing``, ``v = (r - (rows-1)/2) * row_spacing``.
A *pose* is a 4x4 rigid transform from world (LPS) to camera coordinates.

Default AP view: the beam runs anterior -> posterior (camera z = +y LPS), image columns run
from the patient's right to left (camera x = +x LPS, patient's right on the viewer's left),
rows run head to foot (camera y = -z LPS), so the radiograph looks as a radiologist hangs it.
Parallel geometry drops the divergence: ``u = x, v = y``.

Matched detector (dataset v2, model v2): a model sees every radiograph on the detector
:meth:`Geometry.matched` to its reference geometry, i.e. at a fixed pixel size *at the
isocentre*, so the apparent size of the anatomy does not depend on the magnification SDD/SOD.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InputError

#: World (LPS) -> camera rotation of the default AP view (rows are camera axes in LPS).
AP_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Geometry:
    """X-ray geometry: source, detector size (pixels) and pixel spacing (mm).

    ``sdd`` is the source-to-detector distance and ``sod`` the source-to-isocentre distance
    (mm); ``parallel=True`` makes a parallel-beam projection (``sdd``/``sod`` then only place
    the isocentre). ``pixel_spacing`` is (row, column) spacing in mm.
    """

    rows: int = 256
    cols: int = 256
    pixel_spacing: tuple[float, float] = (1.6, 1.6)
    sdd: float = 1100.0
    sod: float = 880.0
    parallel: bool = False

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise InputError(f"detector size must be >= 1 pixel, got {self.rows}x{self.cols}")
        if not all(0 < s < math.inf for s in self.pixel_spacing):
            raise InputError(f"pixel_spacing must be finite and > 0 mm, got {self.pixel_spacing}")
        if not 0 < self.sod < self.sdd < math.inf:
            raise InputError(f"need 0 < sod < sdd < inf (mm), got sod={self.sod}, sdd={self.sdd}")
        object.__setattr__(self, "pixel_spacing", tuple(float(s) for s in self.pixel_spacing))

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def field_of_view_mm(self) -> tuple[float, float]:
        """Detector extent (rows, columns) in mm."""
        return self.rows * self.pixel_spacing[0], self.cols * self.pixel_spacing[1]

    @property
    def pixel_area_cm2(self) -> float:
        """Area of one detector pixel (cm2): the factor from pixel sums to volume/mass."""
        return self.pixel_spacing[0] * self.pixel_spacing[1] / 100.0

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre (1 for parallel geometry)."""
        return 1.0 if self.parallel else self.sdd / self.sod

    @property
    def detector_origin(self) -> tuple[float, float]:
        """Detector (u, v) in mm of the centre of pixel (0, 0)."""
        return detector_origin(self.shape, self.pixel_spacing)

    def resized(self, rows: int, cols: int | None = None) -> Geometry:
        """Same field of view sampled with another number of pixels."""
        cols = rows if cols is None else cols
        fov = self.field_of_view_mm
        return replace(self, rows=rows, cols=cols, pixel_spacing=(fov[0] / rows, fov[1] / cols))

    def matched(self, reference: Geometry) -> Geometry:
        """This radiograph's source distances on ``reference``'s detector grid, with the pixel
        spacing that gives ``reference``'s pixel size at the isocentre:
        ``reference.pixel_spacing * M / M_ref`` (M: :attr:`magnification`). A radiograph
        resampled onto its matched detector shows the patient at the same scale in pixels as
        every other one, whatever its magnification."""
        f = self.magnification / reference.magnification
        return replace(self, rows=reference.rows, cols=reference.cols,
                       pixel_spacing=(reference.pixel_spacing[0] * f, reference.pixel_spacing[1] * f))

    def to_json(self) -> dict:
        d = asdict(self)
        d["pixel_spacing"] = list(self.pixel_spacing)
        d["units"] = "mm"
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "geometry") -> Geometry:
        """The :meth:`to_json` form back; every field but ``parallel`` (default False) is
        required, so a damaged file never falls back to default distances. Errors name
        ``source`` and the field."""
        def number(key: str, value: object) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{source}: field {key!r} must be a finite number (mm), got {value!r}")
            return value

        if not isinstance(d, dict):
            raise InputError(f"{source}: expected an object with the detector geometry, got {d!r}")
        missing = [k for k in ("rows", "cols", "pixel_spacing", "sdd", "sod") if k not in d]
        if missing:
            raise InputError(f"{source}: missing field(s) {missing} (mm, see docs/formats.md)")
        spacing = d["pixel_spacing"]
        if not isinstance(spacing, (list, tuple)) or len(spacing) != 2:
            raise InputError(f"{source}: field 'pixel_spacing' must be [row, column] in mm, got {spacing!r}")
        for key in ("rows", "cols"):
            if isinstance(d[key], bool) or not isinstance(d[key], int):
                raise InputError(f"{source}: field {key!r} must be an integer, got {d[key]!r}")
        values = (d["rows"], d["cols"], tuple(number("pixel_spacing", v) for v in spacing),
                  number("sdd", d["sdd"]), number("sod", d["sod"]), bool(d.get("parallel", False)))
        try:
            return cls(*values)
        except InputError as e:  # the detector's own checks, which do not know the file
            raise InputError(f"{source}: {e}") from None


def detector_origin(shape: tuple[int, int], pixel_spacing: tuple[float, float]) -> tuple[float, float]:
    """Detector (u, v) in mm of the centre of pixel (0, 0) of a detector of ``shape`` (rows,
    cols) and ``pixel_spacing`` (row, col mm) centred on the central ray."""
    rows, cols = shape
    return -(cols - 1) / 2 * pixel_spacing[1], -(rows - 1) / 2 * pixel_spacing[0]


def rigid(rotation_deg: ArrayLike = (0.0, 0.0, 0.0), translation_mm: ArrayLike = (0.0, 0.0, 0.0),
          center_mm: ArrayLike = (0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform: rotate about ``center_mm`` then translate.

    Rotation angles are extrinsic x-y-z Euler angles in degrees (about the axes of the frame
    the transform acts in); translation in mm. ``x -> R (x - c) + c + t``.
    """
    m = np.eye(4)
    r = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    c = np.asarray(center_mm, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, float)
    return m


def check_pose(pose: ArrayLike, name: str) -> np.ndarray:
    """``pose`` as a float 4x4 array; an :class:`InputError` naming ``name`` unless it is a finite
    rigid transform (a rotation: orthonormal 3x3 block of determinant +1, not a reflection, which
    would mirror the DRRs; last row 0 0 0 1)."""
    m = np.asarray(pose, float)
    if (m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], (0, 0, 0, 1))
            or not np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6) or np.linalg.det(m[:3, :3]) < 0):
        raise InputError(f"{name} must be a finite 4x4 world->camera rigid transform (a rotation, not a "
                         f"reflection) with last row [0, 0, 0, 1], got {np.array2string(m, precision=3)}")
    return m


def default_ap_pose(isocenter_lps: ArrayLike, geometry: Geometry) -> np.ndarray:
    """World->camera pose of the AP view with ``isocenter_lps`` (mm) on the central ray at SOD."""
    pose = np.eye(4)
    pose[:3, :3] = AP_ROTATION
    pose[:3, 3] = np.array([0.0, 0.0, geometry.sod]) - AP_ROTATION @ np.asarray(isocenter_lps, float)
    return pose


def project(points_cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Detector pixel coordinates (row, col) of camera-frame points (..., 3) in mm."""
    p = np.asarray(points_cam, float)
    if geometry.parallel:
        u, v = p[..., 0], p[..., 1]
    else:
        u = geometry.sdd * p[..., 0] / p[..., 2]
        v = geometry.sdd * p[..., 1] / p[..., 2]
    u0, v0 = geometry.detector_origin
    return np.stack([(v - v0) / geometry.pixel_spacing[0], (u - u0) / geometry.pixel_spacing[1]], -1)


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3)."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Algebraic least-squares sphere (centre, radius; mm) of >= 4 points (n, 3) mm (Kasa fit);
    None when degenerate."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    b = (points ** 2).sum(axis=1)
    x, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    r2 = x[3] + x[:3] @ x[:3]
    return (x[:3], float(np.sqrt(r2))) if rank == 4 and r2 > 0 else None


def resample_image(image: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Resample a detector image from ``source`` to ``target`` pixels (float32, (rows, cols)).

    Pixels are matched by their detector position (u, v in mm); target pixels whose centres
    fall outside the source detector's area get 0 (those within its outer half pixel take the
    edge value). Downsampling is anti-aliased with a Gaussian of sigma ``(ratio - 1) / 2``
    source pixels.
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
    out = ndimage.map_coordinates(image, [rr, cc], order=1, mode="nearest")
    inside = ((rr >= -0.5) & (rr <= source.rows - 0.5) & (cc >= -0.5) & (cc <= source.cols - 0.5))
    return np.where(inside, out, 0.0).astype(np.float32)
