"""Reading radiographs: DICOM DX/CR, NIfTI/NRRD/MHA (SimpleITK) and PNG/JPEG.

:func:`read_radiograph` returns a :class:`Radiograph`: a 2D float32 array in which *bright
means attenuating* (DICOM MONOCHROME1 is inverted, the modality rescale is applied; the
PresentationLUTShape and PixelIntensityRelationshipSign, which devices do not write
consistently, are recorded, not applied: decomposition flags a film whose bone is dark), the
detector pixel spacing (row, column) in mm, and a record of where each value came from.

Pixel spacing is never guessed. For DICOM, ImagerPixelSpacing (0018,1164, at the detector)
is used, else PixelSpacing (0028,0030). A PixelSpacing of exactly 1.0 x 1.0 without
ImagerPixelSpacing is the placeholder many converters write when the spacing is unknown and
is refused, as is a missing or implausible spacing (outside
:data:`SPACING_RANGE_MM`, a field of view outside :data:`FOV_RANGE_MM`, or a row/column
aspect beyond 2): the error names the file and the field and says to pass the spacing
explicitly (``pixel_spacing=`` / ``--pixel-spacing``), which always takes precedence.

Magnification (source-detector over source-isocentre distance, which models need to see
every patient at the same scale) is read when the file has it: DICOM
EstimatedRadiographicMagnificationFactor (0018,1114), else DistanceSourceToDetector (0018,1110) /
(DistanceSourceToPatient (0018,1111) - :data:`HIP_ABOVE_TABLE_MM`): for DX that distance reaches
the table or bucky side of the patient, and the hip joint centres lie nearer the source (taken
as is, it would underestimate their magnification by 10-15 %); a PixelSpacing calibrated at the patient
(PixelSpacingCalibrationType (0028,0A02) present, no ImagerPixelSpacing, no spacing given by the
caller) already is at the patient's scale (magnification 1 for it); a cohort radiograph's
``mskdex-xray`` sidecar. An
explicit ``magnification=`` / ``--magnification`` takes precedence; a value outside
:data:`MAGNIFICATION_RANGE` is refused. It stays ``None`` when unknown (the caller decides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .fileio import file_sha256
from .imaging.geometry import Geometry

#: Plausible detector pixel spacing of a projection radiograph (mm).
SPACING_RANGE_MM = (0.02, 2.0)
#: Plausible detector field of view (mm) along either axis.
FOV_RANGE_MM = (50.0, 1000.0)
#: SOP class of a DICOM media directory (DICOMDIR), listed beside the images of an export.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Plausible magnification at the patient (SDD / SOD) of a projection radiograph.
MAGNIFICATION_RANGE = (1.0, 2.0)
#: Assumed height (mm) of the hip joint centres above the table or bucky surface that DICOM
#: DistanceSourceToPatient (0018,1111) reaches: about half an adult's anteroposterior thickness
#: at the hips (about 220 mm). A stated assumption, noted in results; +-30 mm changes the
#: magnification by about +-3.5 %.
HIP_ABOVE_TABLE_MM = 110.0
#: Format of the JSON sidecar (``<stem>.json``) of a cohort radiograph.
SIDECAR_FORMAT = "mskdex-xray"
SIDECAR_VERSION = 1
#: Percentiles of a raw radiograph mapped to 0 and 1 (the cohort's clinical processing default).
WINDOW_PERCENTILES = (1.0, 99.5)
#: Suffixes read with SimpleITK (they store the spacing in the file).
ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes read as plain pictures (no spacing in the file).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Suffixes treated as DICOM (files without a suffix are tried as DICOM too).
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
#: Every suffix :func:`read_radiograph` accepts (used by folder batch mode).
SUFFIXES = ITK_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES
#: Luma weights (ITU-R BT.601) used when a colour file has to be turned into grey.
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class Radiograph:
    """A 2D radiograph: ``array`` (H, W) float32, bright = attenuating; ``pixel_spacing``
    (row, column) in mm at the detector; ``source`` describes the file (path, format,
    spacing field, bit depth, photometric interpretation, colour, ``value_range``: the range
    the stored values can take, ``None`` for floating-point data, ``magnification`` and
    ``magnification_field``, ``sdd_mm`` when known, ...)."""

    array: np.ndarray
    pixel_spacing: tuple[float, float]
    source: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    @property
    def magnification(self) -> float | None:
        """Magnification at the patient (SDD / SOD), ``None`` when unknown."""
        m = self.source.get("magnification")
        return None if m is None else float(m)


def known_suffix(path: Path) -> str:
    """The format suffix of ``path`` that :func:`read_radiograph` knows (lower case), or ""."""
    name = path.name.lower()
    return next((s for s in ITK_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES if s and name.endswith(s)), "")


def stem(path: Path) -> str:
    """The file name without its format suffix (``1.2.840.1.dcm`` -> ``1.2.840.1``)."""
    return path.name[:len(path.name) - len(known_suffix(path))]


def is_radiograph_file(path: Path) -> bool:
    """Whether batch mode should read ``path``: a known suffix, or a DICOM file without one
    (a ``DICM`` preamble, as PACS exports such as ``IM00001`` have) that is not a media
    directory (``DICOMDIR``)."""
    if known_suffix(path):
        return True
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info
    from pydicom.misc import is_dicom

    try:
        return is_dicom(path) and read_file_meta_info(path).get("MediaStorageSOPClassUID") != DICOMDIR_SOP_CLASS
    except (OSError, InvalidDicomError):
        return False


def read_radiograph(path: str | Path,
                    pixel_spacing: tuple[float, float] | float | None = None,
                    magnification: float | None = None) -> Radiograph:
    """Read a radiograph file; ``pixel_spacing`` (row, column mm, or one value for both)
    overrides whatever the file says and is required for PNG/JPEG; ``magnification``
    (SDD / SOD) overrides the file's.

    Raises :class:`InputError` naming the file and field for unreadable files, images that
    are not 2D, a missing, placeholder or implausible pixel spacing and an implausible
    magnification.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected one radiograph file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    explicit = _explicit_spacing(pixel_spacing)
    suffix = known_suffix(path) or path.suffix.lower()
    if suffix in ITK_SUFFIXES:
        array, spacing, source, value_range = _read_itk(path)
    elif suffix in PICTURE_SUFFIXES:
        array, spacing, source, value_range = _read_picture(path)
    else:
        array, spacing, source, value_range = _read_dicom(path, file_spacing=explicit is None)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite; expected finite intensities")
    if explicit is not None:
        source["spacing_field"] = "argument (pixel_spacing)"
        source["spacing_in_file"] = None if spacing is None else list(spacing)
        spacing = explicit
    elif spacing is None:
        raise InputError(
            f"{path}: no usable pixel spacing ({source.get('spacing_problem', 'the format stores none')}); "
            "pass it explicitly, e.g. --pixel-spacing 0.15 (mm at the detector)")
    if not source.get("sidecar_geometry"):  # a cohort radiograph's geometry is exact, however coarse
        # a spacing given by the user wins over the plausible-range check of file fields
        check_spacing(path, array.shape, spacing, source["spacing_field"],
                      spacing_range=SPACING_RANGE_MM if explicit is None else (0.0, float("inf")))
    if magnification is not None:
        source["magnification"], source["magnification_field"] = float(magnification), "argument (magnification)"
    _check_magnification(path, source)
    source["path"] = str(path)
    source["sha256"] = file_sha256(path)
    source["shape"] = list(array.shape)
    source["value_range"] = None if value_range is None else [float(v) for v in value_range]
    return Radiograph(array.astype(np.float32), (float(spacing[0]), float(spacing[1])), source)


def _explicit_spacing(value) -> tuple[float, float] | None:
    if value is None:
        return None
    v = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if v.size == 1:
        v = np.repeat(v, 2)
    if v.size != 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"pixel_spacing must be one or two positive numbers (row, column mm), got {value!r}")
    return float(v[0]), float(v[1])


def check_spacing(path: Path | str, shape: tuple[int, ...], spacing: tuple[float, float], fieldname: str,
                  fix: str = "pass the right value explicitly, e.g. --pixel-spacing 0.15",
                  spacing_range: tuple[float, float] = SPACING_RANGE_MM) -> None:
    """:class:`InputError` naming ``path`` and ``fieldname`` unless ``spacing`` (row, column mm)
    is a plausible detector spacing for an image of ``shape``: within ``spacing_range``, a field
    of view within :data:`FOV_RANGE_MM`, rows and columns within 2x of each other (see the
    module docs); ``fix`` says what to do."""
    lo, hi = spacing_range
    fov = [n * s for n, s in zip(shape, spacing)]
    problems = []
    if not all(lo <= s <= hi for s in spacing):
        problems.append(f"spacing {list(spacing)} mm is outside [{lo}, {hi}] mm")
    elif not all(FOV_RANGE_MM[0] <= f <= FOV_RANGE_MM[1] for f in fov):
        problems.append(f"field of view {np.round(fov, 1).tolist()} mm is outside "
                        f"[{FOV_RANGE_MM[0]}, {FOV_RANGE_MM[1]}] mm")
    elif max(spacing) / min(spacing) > 2.0:
        problems.append(f"row/column spacing ratio {max(spacing) / min(spacing):.2f} is above 2")
    if problems:
        raise InputError(f"{path}: implausible pixel spacing from {fieldname}: {problems[0]}; "
                         f"expected a projection radiograph's detector spacing; {fix}")


def _check_magnification(path: Path, source: dict) -> None:
    source.setdefault("magnification", None)
    source.setdefault("magnification_field", "none")
    if source["magnification"] is not None:
        check_magnification(source["magnification"], f"{path}: magnification from {source['magnification_field']}")


def check_magnification(m: float, where: str,
                        fix: str = "pass the right value explicitly, e.g. --magnification 1.2") -> None:
    """:class:`InputError` saying ``where`` the value came from unless ``m`` (SDD / SOD) lies
    in :data:`MAGNIFICATION_RANGE`; ``fix`` says what to do."""
    lo, hi = MAGNIFICATION_RANGE
    if not lo <= m <= hi:
        raise InputError(f"{where} is {m:g}: implausible; expected SDD / SOD in [{lo:g}, {hi:g}]; {fix}")


def sidecar_path(path: str | Path) -> Path:
    """Where a radiograph's ``<stem>.json`` sidecar would be."""
    path = Path(path)
    return path.with_name(stem(path) + ".json")


def _sidecar(path: str | Path) -> dict | None:
    """A cohort radiograph's ``<stem>.json`` sidecar (format ``mskdex-xray`` v1), or ``None``."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None
    if data.get("version") != SIDECAR_VERSION:
        raise InputError(f"{side}: field 'version' must be {SIDECAR_VERSION}, got {data.get('version')!r}")
    return data


def read_sidecar(path: str | Path) -> Geometry | None:
    """The geometry of a cohort radiograph's ``<stem>.json`` sidecar (format ``mskdex-xray`` v1),
    or ``None`` when there is none."""
    data = _sidecar(path)
    return None if data is None else _sidecar_geometry(data, path)


def _sidecar_geometry(data: dict, path: str | Path) -> Geometry:
    return Geometry.from_json(data.get("geometry"), f"{sidecar_path(path)}: field 'geometry'")


def check_sidecar(geometry: Geometry, path: str | Path, shape: tuple[int, int],
                  spacing: tuple[float, float]) -> None:
    """Refuse a sidecar ``geometry`` that does not describe the image ``path`` of ``shape``
    (rows, cols) and ``spacing`` (row, column) mm."""
    if geometry.shape != tuple(shape) or not np.allclose(geometry.pixel_spacing, spacing, rtol=1e-4):
        raise InputError(f"{sidecar_path(path)}: field 'geometry' describes {geometry.rows}x{geometry.cols} "
                         f"pixels of {list(geometry.pixel_spacing)} mm, but {Path(path).name} has "
                         f"{shape[0]}x{shape[1]} of {[round(float(v), 6) for v in spacing]} mm: the sidecar "
                         "is not this image's")


def _to_grey(array: np.ndarray, path: Path, source: dict) -> np.ndarray:
    """(H, W) from (H, W), (H, W, 3) or (H, W, 4); records whether the colour channels differed."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3].astype(np.float64)
        source["colour"] = bool(np.ptp(rgb, axis=-1).max() > 0)
        return rgb @ LUMA if source["colour"] else rgb[..., 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        source["colour"] = False
        return a.astype(np.float64)
    raise InputError(f"{path}: expected a 2D image (one frame, grey or RGB), got array shape {a.shape}")


def _read_dicom(path: Path, file_spacing: bool = True):
    """Array, spacing, source and value range of a DICOM radiograph; ``file_spacing`` False: the
    caller overrides the spacing (then a PixelSpacing calibrated at the patient does not count)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x, which 3D Slicer bundles (5.10: 2.4.4)
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as e:
        raise InputError(f"{path}: not a readable DICOM file ({e}); radiographs are read from "
                         f"DICOM, {', '.join(ITK_SUFFIXES + PICTURE_SUFFIXES)}") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no PixelData (7FE0,0010)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(f"{path}: NumberOfFrames (0028,0008) is {frames}; expected one 2D radiograph")
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        raise InputError(f"{path}: cannot decode PixelData (transfer syntax "
                         f"{ds.file_meta.get('TransferSyntaxUID', '?')}): {e}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.get("BitsStored", 8 * raw.dtype.itemsize))
    source = {"format": "dicom", "modality": str(ds.get("Modality", "")),
              "presentation_intent": str(ds.get("PresentationIntentType", "")),
              "photometric_interpretation": photometric, "bits_stored": bits,
              "rescale": [float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))]}
    for keyword, key in (("PresentationLUTShape", "presentation_lut_shape"),
                         ("PixelIntensityRelationship", "pixel_intensity_relationship"),
                         ("PixelIntensityRelationshipSign", "pixel_intensity_relationship_sign")):
        if ds.get(keyword) is not None:  # recorded, not applied: the orientation check flags a
            source[key] = str(ds.get(keyword))  # film whose bone is dark, whatever these say
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if photometric.startswith("MONOCHROME"):
        # the modality LUT (rescale or LUT sequence) maps stored values; MONOCHROME1 (bright =
        # low value) is a display step after it: mirror the result within the LUT's range
        array = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        ends = np.asarray(apply_modality_lut(np.array(stored, dtype=np.int64), ds), dtype=np.float64)
        value_range = (float(ends.min()), float(ends.max()))
        if photometric == "MONOCHROME1":
            array = value_range[0] + value_range[1] - array
        source["colour"] = False
    else:
        array = _to_grey(raw, path, source)
        value_range = stored
    spacing = None
    for keyword, tag in (("ImagerPixelSpacing", "(0018,1164)"), ("PixelSpacing", "(0028,0030)")):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            v = [float(x) for x in value]
        except (TypeError, ValueError):
            v = []
        if len(v) != 2:
            source["spacing_problem"] = f"{keyword} {tag} is {value!r}, expected two numbers"
            continue
        if keyword == "PixelSpacing" and v == [1.0, 1.0]:
            source["spacing_problem"] = (f"{keyword} {tag} is 1.0\\1.0 without ImagerPixelSpacing, "
                                         "the placeholder converters write when the spacing is unknown")
            continue
        spacing, source["spacing_field"] = (v[0], v[1]), f"{keyword} {tag}"
        break
    else:
        source.setdefault("spacing_problem", "neither ImagerPixelSpacing (0018,1164) nor "
                                             "PixelSpacing (0028,0030) is present")
    source.setdefault("spacing_field", "none")
    _dicom_magnification(ds, source, calibrated=file_spacing and "PixelSpacingCalibrationType" in ds
                         and source["spacing_field"].startswith("PixelSpacing"))
    return array, spacing, source, value_range


def _dicom_magnification(ds, source: dict, calibrated: bool) -> None:
    """Magnification (SDD / SOD) from the DICOM attributes (see the module docstring);
    ``calibrated``: the spacing used is a PixelSpacing calibrated at the patient (magnification 1)."""
    def number(keyword: str) -> float | None:
        try:
            v = float(ds.get(keyword))
        except (TypeError, ValueError):
            return None
        return v if v > 0 else None

    sdd, sod = number("DistanceSourceToDetector"), number("DistanceSourceToPatient")
    factor = number("EstimatedRadiographicMagnificationFactor")
    if factor is not None and factor <= 1.0 and not calibrated:
        # a film of a patient on a table is magnified: 1.0 is what devices write when they did
        # not estimate it (the detector pixels are not at the patient)
        source["magnification_problem"] = (f"EstimatedRadiographicMagnificationFactor (0018,1114) is "
                                           f"{factor:g}: not an estimate for a detector-plane spacing")
        factor = None
    if sdd is not None:
        source["sdd_mm"] = sdd
    if sod is not None:  # reaches the table side of the patient: the hip joint centres lie nearer
        source["distance_source_to_patient_mm"] = sod
        if HIP_ABOVE_TABLE_MM < sod < (sdd or float("inf")):
            source["sod_mm"], source["hip_above_table_mm"] = sod - HIP_ABOVE_TABLE_MM, HIP_ABOVE_TABLE_MM
        else:
            source["magnification_problem"] = (f"DistanceSourceToPatient (0018,1111) is {sod:g} mm: not between "
                                               f"{HIP_ABOVE_TABLE_MM:g} mm and the source-to-detector distance")
    if calibrated:
        source["magnification"] = 1.0
        source["magnification_field"] = ("PixelSpacing (0028,0030) calibrated at the patient "
                                         "(PixelSpacingCalibrationType (0028,0A02))")
    elif factor is not None:
        source["magnification"] = factor
        source["magnification_field"] = "EstimatedRadiographicMagnificationFactor (0018,1114)"
    elif sdd is not None and "sod_mm" in source:
        source["magnification"] = sdd / source["sod_mm"]
        source["magnification_field"] = (f"DistanceSourceToDetector (0018,1110) / (DistanceSourceToPatient "
                                         f"(0018,1111) - {HIP_ABOVE_TABLE_MM:g} mm): the hips taken "
                                         f"{HIP_ABOVE_TABLE_MM:g} mm above the table")


def _read_itk(path: Path):
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise InputError(f"{path}: a radiograph must be a 2D image (or one slice), got size {size}")
    source = {"format": "itk", "pixel_type": image.GetPixelIDTypeAsString(),
              "spacing_field": "image spacing"}
    raw = sitk.GetArrayFromImage(image)
    sx, sy = image.GetSpacing()  # ITK order (column, row)
    direction = image.GetDirection()
    if not np.allclose(direction, np.eye(2).ravel(), atol=1e-6):
        # which way is up is not defined by a 2D radiograph's direction matrix: writers differ
        # (a NIfTI of an identity RAS affine reads as a 180-degree turn in ITK's LPS), so the
        # pixels keep their stored order and the result says so
        source["direction"] = [round(float(v), 6) for v in direction]
    value_range = None
    if raw.dtype.kind in "iu":
        value_range = (np.iinfo(raw.dtype).min, np.iinfo(raw.dtype).max)
        source["bits_stored"] = 8 * raw.dtype.itemsize
    array = _to_grey(raw, path, source)
    record = _sidecar(path)
    if record is not None:
        sidecar = _sidecar_geometry(record, path)
        check_sidecar(sidecar, path, array.shape, (sy, sx))
        film = record.get("source")  # an assembled cohort's: the film it was read from
        source["sidecar_geometry"] = True  # simulated, or checked when assembled: exact
        source["spacing_field"] = f"image spacing ({SIDECAR_FORMAT} sidecar: " + (
            f"a radiograph assembled from {film.get('path')})" if isinstance(film, dict)
            else "a simulated radiograph)")
        source["sdd_mm"] = sidecar.sdd
        source["magnification"] = sidecar.magnification
        source["magnification_field"] = f"{SIDECAR_FORMAT} sidecar (geometry sdd / sod)"
    return array, (sy, sx), source, value_range


def _read_picture(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            converted = {"P": "RGBA", "PA": "RGBA", "LA": "L", "La": "L", "CMYK": "RGB", "YCbCr": "RGB"}.get(mode)
            array = np.asarray(im.convert(converted) if converted else im)
            array = array.astype(array.dtype.newbyteorder("="))  # e.g. I;16B: big-endian 16 bit
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot be read as a picture ({e})") from None
    source = {"format": "picture", "mode": mode, "bits_stored": 16 if array.dtype.itemsize >= 2 else 8,
              "spacing_field": "none",
              "spacing_problem": f"{path.suffix} files store no pixel spacing"}
    value_range = None if array.dtype.kind == "f" else (0, (1 << source["bits_stored"]) - 1)
    return _to_grey(array, path, source), None, source, value_range


def unit_range(array: np.ndarray, value_range: tuple[float, float] | None = None,
               percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> tuple[np.ndarray, str]:
    """A radiograph's values in [0, 1], bright = attenuating, as the training radiographs.

    Floating-point data already in [0, 1] (processed radiographs such as the cohort's; no
    stored ``value_range`` of integer data) are used as they are. Anything else gets the
    training radiographs' clinical processing: a window from its ``percentiles`` to [0, 1].
    Returns the image (float32) and the method used.
    """
    a = np.asarray(array, np.float64)
    if value_range is None and a.min() >= 0.0 and a.max() <= 1.0:
        return a.astype(np.float32), "already in [0, 1]: used as it is"
    lo, hi = np.percentile(a, percentiles)
    method = f"window [{lo:g}, {hi:g}] (percentiles {percentiles[0]:g}, {percentiles[1]:g}) -> [0, 1]"
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32), method
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), method
