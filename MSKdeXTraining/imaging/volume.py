"""3D images with their geometry, read and validated at the file boundary.

:class:`Volume` holds a numpy array indexed ``[k, j, i]`` (slice, row, column: SimpleITK's
numpy order) and the LPS geometry of SimpleITK: ``spacing`` and ``origin`` in (i, j, k)
order, millimetres, and ``direction`` whose columns are the i, j, k axes in LPS.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fileio import check_utf8_path
from ..objects import MAX_LABEL
from .geometry import Geometry


@dataclass
class Volume:
    """A 3D image: voxel array ``[k, j, i]`` plus LPS geometry (mm)."""

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.spacing, float).reshape(3)
        self.origin = np.asarray(self.origin, float).reshape(3)
        self.direction = np.asarray(self.direction, float).reshape(3, 3)

    @property
    def affine(self) -> np.ndarray:
        """4x4 index (i, j, k) -> world LPS (mm)."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing
        a[:3, 3] = self.origin
        return a

    @property
    def voxel_volume_cm3(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def center(self) -> np.ndarray:
        """World position (LPS mm) of the centre of the image."""
        size = np.array(self.array.shape[::-1], float)
        return self.affine[:3, :3] @ ((size - 1) / 2) + self.origin

    def grid_differences(self, other: Volume, tol: float = 1e-4) -> list[str]:
        """Names of the geometry fields that differ from ``other`` (empty when identical)."""
        diff = []
        if self.array.shape != other.array.shape:
            diff.append(f"size {self.array.shape[::-1]} vs {other.array.shape[::-1]}")
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if not np.allclose(a, b, atol=tol * max(1.0, float(np.abs(a).max()))):
                diff.append(f"{name} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}")
        return diff

    def with_array(self, array: np.ndarray) -> Volume:
        return Volume(array, self.spacing, self.origin, self.direction)

    @property
    def superior_axis(self) -> int:
        """The array axis (0 = k, 1 = j, 2 = i) that runs most nearly superior-inferior (LPS z)."""
        return 2 - int(np.argmax(np.abs(self.direction[2])))

    def cropped(self, axis: int, keep: slice) -> Volume:
        """The voxels ``keep`` (a slice with a start) along array ``axis``, in place in the world."""
        a = 2 - axis  # the (i, j, k) index axis
        index = [slice(None)] * 3
        index[axis] = keep
        origin = self.origin + keep.start * self.spacing[a] * self.direction[:, a]
        return Volume(np.ascontiguousarray(self.array[tuple(index)]), self.spacing, origin, self.direction)

    def extent(self, mask: np.ndarray, axis: int, margin_mm: float) -> slice:
        """The slices along array ``axis`` that hold ``mask``, widened by ``margin_mm`` on either
        side (within the volume); ``mask`` must hold a voxel."""
        index = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        m = int(np.ceil(margin_mm / self.spacing[2 - axis] - 1e-9))
        return slice(max(int(index[0]) - m, 0), min(int(index[-1]) + m + 1, mask.shape[axis]))

    def box_center(self, mask: np.ndarray) -> np.ndarray:
        """World position (LPS mm) of the centre of ``mask``'s bounding box; it must hold a voxel."""
        kji = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[[0, -1]].mean()
               for a in range(3)]
        return self.affine[:3, :3] @ np.array(kji[::-1]) + self.origin

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                   image.GetDirection())

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing.tolist())
        image.SetOrigin(self.origin.tolist())
        image.SetDirection(self.direction.ravel().tolist())
        return image


def nifti_data_end(header: bytes) -> int | None:
    """Where a NIfTI-1 or NIfTI-2 file's voxel data ends (bytes from the start: ``vox_offset``
    plus the voxels), from its first 540 bytes; ``None`` if they are not a NIfTI header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims, bitpix = struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims, bitpix = struct.unpack(order + "8q", header[16:80]), struct.unpack(order + "h", header[14:16])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or not offset >= 0:
            return None
        return int(offset) + int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64)) * bitpix // 8
    return None


def _check_nifti_complete(path: Path) -> None:
    """InputError unless a ``.nii`` / ``.nii.gz`` file holds all its voxels (ITK reads a file cut
    short without a word, the missing voxels 0). A gzip file's size field (its last 4 bytes, the
    length modulo 2^32) is compared first; only where it disagrees is the file decompressed to
    count."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or not path.is_file():
        return
    packed = name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if packed else path.open("rb")) as f:
            end = nifti_data_end(f.read(540))
            if end is None:
                return  # not NIfTI inside: ITK says what it is
            if not packed:
                size = path.stat().st_size
            else:
                with path.open("rb") as raw:
                    raw.seek(-4, 2)
                    recorded = struct.unpack("<I", raw.read(4))[0]
                if recorded == end % 2 ** 32:  # as long as the header says (or 4 GiB more, beyond belief)
                    size = end
                else:
                    f.seek(0)
                    size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(f"{path}: cannot be read as an image: its compressed data is cut short or damaged (a copy "
                         f"or download not finished?) ({e})") from None
    if size < end:
        raise InputError(f"{path}: cannot be read as an image: its voxel data is cut short ({size} of the {end} "
                         "bytes its header describes; a copy or download not finished?)")


def read_image(path: str | Path) -> sitk.Image:
    """Read any SimpleITK format; a directory is read as a DICOM series. InputError naming the
    file when it cannot be read (ITK's "No such file" for a file that is there means its pixel
    data is cut short, or its .raw / .zraw data file is missing: the message says so; a NIfTI
    file cut short, which ITK reads with zeros, is refused before)."""
    path = Path(path)
    check_utf8_path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    _check_nifti_complete(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if len(series) > 1:
                counts = {s: len(reader.GetGDCMSeriesFileNames(str(path), s)) for s in series}
                raise InputError(f"{path}: directory holds {len(series)} DICOM series "
                                 f"(SeriesInstanceUID: slices {counts}); put the CT's series in a "
                                 "folder of its own")
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise InputError(f"{path}: directory holds no DICOM series")
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
            _check_slice_positions(reader, files, path)
            return image
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        said = str(e).strip().splitlines()[-1]
        if path.is_file() and "No such file" in said:  # what ITK says of a file cut short, too
            raise InputError(f"{path}: cannot be read as an image: its pixel data is cut short (a copy or "
                             "download not finished?) or its separate data file (.raw / .zraw) is missing "
                             f"(ITK: {said})") from None
        raise InputError(f"{path}: cannot be read as an image ({said})") from None


#: Largest deviation of a DICOM slice step from the series' median step: this many mm (positions
#: are often written to 0.1 mm) or this share of the step, whichever is larger.
SLICE_STEP_TOLERANCE = (0.15, 0.25)
#: Largest in-plane drift of the slice positions per mm along their normal: tan(0.57 degrees);
#: a gantry tilt is several degrees.
SLICE_SHEAR_TOLERANCE = 0.01


def _check_slice_positions(reader: sitk.ImageSeriesReader, files: list[str], path: Path) -> None:
    """Refuse a series whose slices do not lie on one regular grid along their normal: a missing
    or repeated slice, uneven spacing or a gantry tilt (sheared slices), each of which
    SimpleITK would read as a regular volume of the wrong geometry."""
    def numbers(i: int, tag: str) -> np.ndarray:
        return np.array([float(v) for v in reader.GetMetaData(i, tag).split("\\")])

    n = len(files)
    if n < 3 or not all(reader.HasMetaDataKey(i, "0020|0032") for i in range(n)):
        return
    try:
        iop = numbers(0, "0020|0037")
        positions = np.array([numbers(i, "0020|0032") for i in range(n)])
    except (RuntimeError, ValueError):
        return
    normal = np.cross(iop[:3], iop[3:])
    along = np.diff(positions, axis=0) @ normal
    step = float(np.median(along))
    gaps = np.abs(along - step)
    k = int(np.argmax(gaps))
    if gaps[k] > max(SLICE_STEP_TOLERANCE[0], SLICE_STEP_TOLERANCE[1] * abs(step)):
        raise InputError(f"{path}: ImagePositionPatient (0020,0032) of {Path(files[k]).name} and "
                         f"{Path(files[k + 1]).name} (slices {k + 1} and {k + 2} of {n}) lie {along[k]:.3g} mm apart "
                         f"along the slice normal, the series' step is {step:.3g} mm: a missing or repeated slice, "
                         "or uneven spacing; expected one regular series (export it again, or resample it, "
                         "e.g. in 3D Slicer)")
    span = positions[-1] - positions[0]
    drift = np.linalg.norm(span - (span @ normal) * normal) / max(abs(span @ normal), 1e-9)
    if drift > SLICE_SHEAR_TOLERANCE:
        raise InputError(f"{path}: ImagePositionPatient (0020,0032) drifts {drift:.3g} mm within the slice plane "
                         f"per mm along its normal ({np.degrees(np.arctan(drift)):.1f} degrees): a gantry tilt "
                         "(sheared slices); expected slices stacked along their normal (resample it, e.g. with "
                         "3D Slicer's DICOM import, which corrects the tilt)")


def read_ct(path: str | Path) -> Volume:
    """Read a CT in HU; rejects non-3D images, sheared grids and non-finite values, naming the file."""
    return check_ct(_read_grid(path, "CT"), str(path))


def read_labels(path: str | Path) -> Volume:
    """Read a label map; rejects non-3D images, sheared grids and non-integer values, naming the file."""
    return check_labels(_read_grid(path, "label map"), str(path))


def _read_grid(path: str | Path, what: str) -> Volume:
    """A 3D image (``what``: CT, label map) on an orthonormal grid; else InputError naming the file."""
    image = read_image(path)
    _require_3d(image, path, what)
    _require_orthonormal(image, path)
    return Volume.from_sitk(image)


def check_ct(vol: Volume, source: str) -> Volume:
    """``vol`` if it holds finite HU values; else :class:`InputError` naming ``source``."""
    if vol.array.dtype.kind == "f":
        bad = ~np.isfinite(vol.array)
        if bad.any():
            k, j, i = np.argwhere(bad)[0]
            raise InputError(f"{source}: CT holds {int(bad.sum())} NaN/inf voxels "
                             f"(first at index i={i}, j={j}, k={k}); expected finite HU values")
    return vol


def check_labels(vol: Volume, source: str) -> Volume:
    """``vol`` with integer labels >= 0 (floats holding integers are converted to int64);
    else :class:`InputError` naming ``source``."""
    a = vol.array
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise InputError(f"{source}: label map holds non-integer values (pixel type {a.dtype}); "
                             "expected integer labels")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise InputError(f"{source}: label map pixel type {a.dtype} is not an integer type")
    if a.min(initial=0) < 0:
        raise InputError(f"{source}: label map holds negative values (min {a.min()}); expected labels >= 0")
    if a.max(initial=0) > MAX_LABEL:
        raise InputError(f"{source}: label map holds value {a.max()}; expected labels 0-{MAX_LABEL} "
                         "(a segmentation's label values, not e.g. an intensity image)")
    return vol.with_array(a)


#: What to do about a label map on another grid than the CT's, where no option resamples it.
RESAMPLE_FIX = "resample the labels onto the CT grid (nearest neighbour)"


def check_same_grid(ct: Volume, labels: Volume, ct_path: str = "", labels_path: str = "label map",
                    fix: str = RESAMPLE_FIX) -> None:
    """Raise :class:`InputError` naming both, listing every geometry field where the grids
    differ (the labels' value first, as the message names them) and saying how to ``fix`` it."""
    diff = labels.grid_differences(ct)
    if diff:
        raise InputError(f"{labels_path}: label grid differs from {f'CT {ct_path}' if ct_path else 'the CT'}: "
                         + "; ".join(diff) + f"; {fix}")


def resample_labels(labels: Volume, ct: Volume) -> Volume:
    """Labels resampled onto the CT grid by nearest neighbour (labels stay labels)."""
    out = sitk.Resample(labels.to_sitk(), ct.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor,
                        0, labels.to_sitk().GetPixelID())
    return Volume.from_sitk(out)


def _require_3d(image: sitk.Image, path, what: str) -> None:
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2:
        raise InputError(f"{path}: {what} must be a 3D image, got size {size}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {what} must have one value per voxel, got pixel type "
                         f"{image.GetPixelIDTypeAsString()}")


#: Largest deviation of a direction matrix's D^T D from the identity (digits rounded in a file).
DIRECTION_TOLERANCE = 1e-4


def _require_orthonormal(image: sitk.Image, path) -> None:
    """Refuse a direction matrix whose axes are not of unit length at right angles (sheared or
    scaled voxels): the voxel volume, the product of the spacings, would be wrong."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    gram = d.T @ d
    if np.abs(gram - np.eye(3)).max() > DIRECTION_TOLERANCE:
        length = np.sqrt(np.diag(gram))
        cos = np.abs(gram / np.outer(length, length))[np.triu_indices(3, 1)]
        raise InputError(f"{path}: field 'direction' {np.round(d, 4).tolist()} is not orthonormal: axes (i, j, k) "
                         f"of length {np.round(length, 4).tolist()}, up to {np.degrees(np.arcsin(cos.max())):.1f} "
                         "degrees off right angles (sheared voxels, e.g. a gantry tilt kept as a shear: volumes "
                         "and masses would be wrong); expected orthonormal axes (resample it onto a regular "
                         "grid, e.g. in 3D Slicer)")


def detector_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A detector image (rows, cols) or stack (N, rows, cols) as a SimpleITK image: x = detector
    columns, y = rows (and z = stack index); spacing (column, row[, 1]) mm; origin the centre of
    pixel (0, 0) in detector (u, v) mm (:attr:`Geometry.detector_origin`)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    extra = (1.0,) * (np.ndim(array) - 2)
    image.SetSpacing((geometry.pixel_spacing[1], geometry.pixel_spacing[0], *extra))
    image.SetOrigin((*geometry.detector_origin, *(0.0 for _ in extra)))
    return image
