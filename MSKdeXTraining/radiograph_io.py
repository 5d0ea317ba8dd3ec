"""Reading radiographs: DICOM DX/CR, NIfTI/NRRD/MHA (SimpleITK) and PNG/JPEG.

:func:`read_radiograph` returns a :class:`Radiograph`: a 2D float32 array in which *bright
means attenuating* (DICOM MONOCHROME1 is inverted, the modality rescale is applied; the
PresentationLUTShape and PixelIntensityRelationshipSign, which devices do not write
consistently, are recorded, not applied: decomposition flags a film whose bone is dark), the
detector pixel spacing (row, column) in mm, and a record of where each value came from.

DICOM pixel data is decoded by pydicom, else by SimpleITK's GDCM (JPEG Lossless and JPEG-LS,
which pydicom decodes only with plugins; an uncompressed image whose header pydicom refuses).
Uncompressed PixelData shorter than its image is refused before (GDCM pads it with zeros), as is
compressed PixelData that ends before its delimiter. pydicom's warnings about the file go to
the error or the result's notes, not to the terminal. A numeric field that is empty,
multi-valued or not a number is an error naming the file and the tag (a source distance or
magnification factor is not used instead, and ``magnification_problem`` says why; an empty one
counts as absent).
DICOM pixel padding (PixelPaddingValue (0028,0120), up to PixelPaddingRangeLimit (0028,0121))
is recorded (:attr:`Radiograph.padding`) and :func:`unit_range` leaves it out of the
intensity window. A picture is turned upright as its EXIF Orientation says, and noted.

Pixel spacing is never guessed. For DICOM, ImagerPixelSpacing (0018,1164, at the detector)
is used, else PixelSpacing (0028,0030); where both are given and differ by more than 1 %
without PixelSpacingCalibrationType (0028,0A02), a note says so. A PixelSpacing of exactly
1.0 x 1.0 without ImagerPixelSpacing, and an image spacing of exactly 1.0 x 1.0 in a
NIfTI/NRRD/MHA file without a sidecar that gives it (ITK's default for a file storing none),
are the placeholders written when the spacing is unknown and are refused, as is a missing or
implausible spacing (outside
:data:`SPACING_RANGE_MM`, a field of view outside :data:`FOV_RANGE_MM`, or a row/column
aspect beyond 2): the error names the file and the field and says to pass the spacing
explicitly (``pixel_spacing=`` / ``--pixel-spacing``), which always takes precedence (held to
the field of view and the aspect only; an implausible one is an error saying to check it).

Magnification (source-detector over source-isocentre distance, which models need to see
every patient at the same scale) is read when the file has it: DICOM
EstimatedRadiographicMagnificationFactor (0018,1114), else DistanceSourceToDetector (0018,1110) /
(DistanceSourceToPatient (0018,1111) - :data:`HIP_ABOVE_TABLE_MM`): for DX that distance reaches
the table or bucky side of the patient, and the hip joint centres lie nearer the source (taken
as is, it would underestimate their magnification by 10-15 %); a PixelSpacing calibrated at the patient
(PixelSpacingCalibrationType (0028,0A02) present, no ImagerPixelSpacing, no spacing given by the
caller) already is at the patient's scale (magnification 1 for it), and beside ImagerPixelSpacing
(without the factor or the distances) the ratio ImagerPixelSpacing / PixelSpacing is the
magnification (a placeholder PixelSpacing of 1.0 x 1.0 beside ImagerPixelSpacing is not
compared); a cohort radiograph's ``mskdex-xray`` sidecar. An
explicit ``magnification=`` / ``--magnification`` takes precedence; a value outside
:data:`MAGNIFICATION_RANGE` is refused. It stays ``None`` when unknown (the caller decides).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
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
#: Spacing (row, column mm) that converters write, and ITK reads from a file storing none, when
#: the spacing is unknown: refused as a placeholder (see the module docs).
PLACEHOLDER_SPACING_MM = (1.0, 1.0)
#: DICOM spacing fields, in the order they are used, and their tags.
SPACING_TAGS = {"ImagerPixelSpacing": "(0018,1164)", "PixelSpacing": "(0028,0030)"}
#: Relative difference of ImagerPixelSpacing and PixelSpacing above which the result notes it.
SPACING_DIFFERENCE = 0.01
#: Transfer syntaxes whose pixel data is stored uncompressed (implicit VR little endian, explicit
#: VR little endian, explicit VR big endian, deflated explicit VR little endian): its length is
#: checked against the image's.
UNCOMPRESSED_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                  "1.2.840.10008.1.2.1.99")
#: Encapsulated uncompressed and RLE Lossless: pydicom decodes them without plugins, and its
#: refusal is final (their length cannot be checked beforehand: never handed to GDCM).
PYDICOM_ONLY_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.5")
#: The image fields (group 0028) pydicom decodes with: one that is empty or not a number is an
#: error naming it before decoding.
PIXEL_FIELDS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
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
    ``magnification_field``, ``sdd_mm`` when known, ``padding_range`` of DICOM pixel padding,
    ``notes``: what reading assumed or changed, for the result's notes, ...)."""

    array: np.ndarray
    pixel_spacing: tuple[float, float]
    source: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    @property
    def padding(self) -> np.ndarray | None:
        """(H, W) bool, True on DICOM pixel padding (``source["padding_range"]``: its values in
        ``array``'s units, after the modality LUT and MONOCHROME1); ``None`` without padding."""
        limits = self.source.get("padding_range")
        if limits is None:
            return None
        lo, hi = np.asarray(limits, np.float32)  # rounded as ``read_radiograph``'s array is
        array = np.asarray(self.array, np.float32)
        return (array >= lo) & (array <= hi)

    def windowed(self) -> tuple[np.ndarray, str]:
        """The image in [0, 1] as the model sees it (:func:`unit_range` with the stored value
        range and the padding) and the method used."""
        return unit_range(self.array, self.source.get("value_range"), padding=self.padding)

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
        if spacing is not None and not np.allclose(explicit, spacing, rtol=SPACING_DIFFERENCE, atol=0):
            area = explicit[0] * explicit[1] / (spacing[0] * spacing[1])
            source.setdefault("notes", []).append(
                f"the pixel spacing given, {list(explicit)} mm, was used instead of the file's own "
                f"{list(spacing)} mm ({source['spacing_field']}): volumes and masses are {area:.3g}x "
                "what the file's spacing gives")
        source["spacing_field"] = "argument (pixel_spacing)"
        source["spacing_in_file"] = None if spacing is None else list(spacing)
        spacing = explicit
    elif spacing is None:
        raise InputError(
            f"{path}: no usable pixel spacing ({source.get('spacing_problem', 'the format stores none')}); "
            "pass it explicitly, e.g. --pixel-spacing 0.15 (mm at the detector)")
    if not source.get("sidecar_geometry"):  # a cohort radiograph's geometry is exact, however coarse
        # a spacing given by the user wins over the plausible-range check of file fields
        if explicit is None:
            check_spacing(path, array.shape, spacing, source["spacing_field"])
        else:
            check_spacing(path, array.shape, spacing, source["spacing_field"], "check the value given "
                          "(--pixel-spacing, mm at the detector)", spacing_range=(0.0, float("inf")))
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
        axes = " by ".join(f"{n} x {s:g} = {f:.1f} mm" for n, s, f in zip(shape, spacing, fov))
        problems.append(f"field of view {axes} (rows by columns) is outside "
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


def read_sidecar_path(path: str | Path) -> Path | None:
    """The sidecar :func:`read_radiograph` reads for ``path``: a NIfTI/NRRD/MHA file's
    ``<stem>.json`` when there is one (other formats read none), else ``None``."""
    side = sidecar_path(path)
    return side if known_suffix(Path(path)) in ITK_SUFFIXES and side.is_file() else None


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
    caller overrides the spacing (then a PixelSpacing calibrated at the patient does not count).
    pydicom's warnings about the file (it warns as values are read) go to the result's notes, or
    to the error, not to the terminal; others (deprecations, for developers) are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            array, spacing, source, value_range = _decode_dicom(path, file_spacing)
        except InputError as e:
            said = "; ".join(_warned(caught))
            if not said:
                raise
            raise InputError(f"{e} (pydicom warned: {said})") from None
    for w in caught:
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    warned = _warned(caught)
    if warned:
        source.setdefault("notes", []).extend(f"pydicom, reading the file: {m}" for m in warned)
    return array, spacing, source, value_range


def _decode_dicom(path: Path, file_spacing: bool):
    """:func:`_read_dicom` without its handling of pydicom's warnings."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as e:
        raise InputError(f"{path}: not a readable DICOM file ({e}); radiographs are read from "
                         f"DICOM, {', '.join(ITK_SUFFIXES + PICTURE_SUFFIXES)}") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: PixelData (7FE0,0010) is missing or truncated; expected the image's pixels")
    frames = _dicom_number(ds, "NumberOfFrames", path, 1.0, may_be_empty=True) or 1
    if frames != 1:
        raise InputError(f"{path}: NumberOfFrames (0028,0008) is {frames:g}; expected one 2D radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    source = {"format": "dicom", "modality": str(ds.get("Modality", "")),
              "presentation_intent": str(ds.get("PresentationIntentType", "")),
              "photometric_interpretation": photometric,
              "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))}
    raw = _dicom_pixels(ds, path, source)
    bits = int(_dicom_number(ds, "BitsStored", path, 8 * raw.dtype.itemsize))
    source["bits_stored"] = bits
    for keyword, key in (("PresentationLUTShape", "presentation_lut_shape"),
                         ("PixelIntensityRelationship", "pixel_intensity_relationship"),
                         ("PixelIntensityRelationshipSign", "pixel_intensity_relationship_sign")):
        if ds.get(keyword) is not None:  # recorded, not applied: the orientation check flags a
            source[key] = str(ds.get(keyword))  # film whose bone is dark, whatever these say
    signed = _dicom_number(ds, "PixelRepresentation", path, 0.0) == 1
    stored = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if photometric.startswith("MONOCHROME"):
        # the modality LUT (rescale or LUT sequence) maps stored values; MONOCHROME1 (bright =
        # low value) is a display step after it: mirror the result within the LUT's range
        modality = _modality_lut(ds, path, source)
        array = modality(raw)
        ends = modality(np.array(stored, dtype=np.int64))
        value_range = (float(ends.min()), float(ends.max()))

        def shown(values: np.ndarray) -> np.ndarray:
            return value_range[0] + value_range[1] - values if photometric == "MONOCHROME1" else values

        array = shown(array)
        padding = _dicom_padding(ds, path, raw, source)
        if padding is not None:
            source["padding_range"] = sorted(float(v) for v in shown(modality(np.array(padding, np.int64))))
        source["colour"] = False
    else:
        array = _to_grey(raw, path, source)
        value_range = stored
    spacing, ratio = _dicom_spacing(ds, source)
    _dicom_magnification(ds, path, source, ratio, calibrated=file_spacing and "PixelSpacingCalibrationType" in ds
                         and source["spacing_field"].startswith("PixelSpacing"))
    return array, spacing, source, value_range


def _tag(keyword: str) -> str:
    """The DICOM tag of ``keyword`` as ``(gggg,eeee)``."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dicom_number(ds, keyword: str, path: Path, default: float | None = None,
                  may_be_empty: bool = False) -> float | None:
    """The DICOM attribute ``keyword`` of ``ds`` as one finite number, ``default`` when absent
    (or empty, when ``may_be_empty``: DICOM's "unknown" of type 2 and 3 attributes); an
    :class:`InputError` naming ``path`` and the tag when it is empty, multi-valued or not a number."""
    if keyword not in ds:
        return default
    value = ds[keyword].value
    if value is None or value == "" or value == []:
        if may_be_empty:
            return default
        problem = "empty"
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if np.isfinite(number):
            return number
        problem = f"{value!r}"
    raise InputError(f"{path}: {keyword} {_tag(keyword)} is {problem}; expected one number")


def _warned(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct UserWarnings of ``caught``, one line each, in order."""
    return list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught
                              if issubclass(w.category, UserWarning)))


def _dicom_pixels(ds, path: Path, source: dict) -> np.ndarray:
    """The stored pixel values of ``ds``: decoded by pydicom, else by SimpleITK's GDCM (JPEG
    Lossless and JPEG-LS, which pydicom decodes only with plugins; uncompressed images whose
    header pydicom refuses, e.g. without PhotometricInterpretation); ``source`` records which.
    Uncompressed PixelData shorter than the image (one frame), which GDCM would pad with zeros,
    is refused first; :data:`PYDICOM_ONLY_TRANSFER_SYNTAXES` never go to GDCM."""
    syntax = source["transfer_syntax"]
    fields = {k: _dicom_number(ds, k, path) for k in PIXEL_FIELDS}  # a malformed one named, not in pydicom's words
    if syntax in UNCOMPRESSED_TRANSFER_SYNTAXES:
        _check_pixel_length(ds, path, syntax, fields)
    try:
        raw = ds.pixel_array
        source["pixel_decoder"] = "pydicom"
        return raw
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        problem = " ".join(str(e).split())  # one line
    if not syntax or syntax in PYDICOM_ONLY_TRANSFER_SYNTAXES:
        raise InputError(f"{path}: cannot decode PixelData (transfer syntax {syntax or '?'}): {problem}")
    try:
        raw = _gdcm_pixels(ds)
    except RuntimeError as e:
        raise InputError(f"{path}: cannot decode PixelData (transfer syntax {syntax}): "
                         f"pydicom: {problem}; SimpleITK: {str(e).strip().splitlines()[-1]}") from None
    source["pixel_decoder"] = "SimpleITK (GDCM)"
    return raw


def _check_pixel_length(ds, path: Path, syntax: str, fields: dict[str, float | None]) -> None:
    """:class:`InputError` naming ``path`` and both byte counts when the uncompressed PixelData of
    ``ds`` (a truncated file) is shorter than Rows x Columns x SamplesPerPixel x BitsAllocated / 8
    (``fields``: those of :data:`PIXEL_FIELDS`; SamplesPerPixel 1 when absent; 2/3 of it for
    YBR_FULL_422's subsampled chroma); another missing field is left to the decoders' errors."""
    sizes = {k: fields[k] for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")}
    sizes["SamplesPerPixel"] = sizes["SamplesPerPixel"] or 1
    if None in sizes.values():
        return
    share = 2 / 3 if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422" else 1
    expected = math.ceil(math.prod(sizes.values()) * share / 8)
    stored = len(ds.PixelData)
    if stored < expected:
        raise InputError(f"{path}: PixelData (7FE0,0010) holds {stored} bytes; expected {expected} "
                         f"({' x '.join(f'{k} {v:g}' for k, v in sizes.items())} / 8, uncompressed "
                         f"transfer syntax {syntax}): the file is truncated or its image fields are wrong")


def _gdcm_pixels(ds) -> np.ndarray:
    """The stored pixel values of ``ds`` decoded by SimpleITK's GDCM, which applies a rescale and
    inverts MONOCHROME1 itself: it reads a copy of the file without them."""
    plain = copy.deepcopy(ds)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence"):
        if keyword in plain:
            del plain[keyword]
    if plain.get("PhotometricInterpretation") == "MONOCHROME1":
        plain.PhotometricInterpretation = "MONOCHROME2"
    with tempfile.TemporaryDirectory() as folder:
        name = str(Path(folder) / "pixels.dcm")
        plain.save_as(name)
        image = sitk.ReadImage(name, imageIO="GDCMImageIO")
    if image.GetDimension() == 3:
        image = image[:, :, 0]
    return sitk.GetArrayFromImage(image)


def _modality_lut(ds, path: Path, source: dict):
    """The map of stored values to modality values (float64): the ModalityLUTSequence, else
    the rescale (recorded in ``source``)."""
    if ds.get("ModalityLUTSequence"):
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom 2.x, which 3D Slicer bundles (5.10: 2.4.4)
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        return lambda values: np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    slope = _dicom_number(ds, "RescaleSlope", path, 1.0)
    intercept = _dicom_number(ds, "RescaleIntercept", path, 0.0)
    source["rescale"] = [slope, intercept]
    return lambda values: values.astype(np.float64) * slope + intercept


def _dicom_padding(ds, path: Path, raw: np.ndarray, source: dict) -> tuple[int, int] | None:
    """The stored values (low, high) that are pixel padding: PixelPaddingValue (0028,0120) up to
    PixelPaddingRangeLimit (0028,0121) when present; ``None`` when no pixel of ``raw`` is
    padding (``source["padding_pixels"]``: how many are). An image of padding alone is refused."""
    value = _dicom_number(ds, "PixelPaddingValue", path)
    if value is None:
        return None
    limit = _dicom_number(ds, "PixelPaddingRangeLimit", path, value)
    lo, hi = int(min(value, limit)), int(max(value, limit))
    padded = int(((raw >= lo) & (raw <= hi)).sum())
    if padded == raw.size:
        raise InputError(f"{path}: every pixel is padding (PixelPaddingValue (0028,0120) "
                         f"{'to PixelPaddingRangeLimit (0028,0121) ' if lo != hi else ''}{lo}..{hi}); "
                         "expected an image")
    if not padded:
        return None
    source["padding_pixels"] = padded
    return lo, hi


def _dicom_spacing(ds, source: dict) -> tuple[tuple[float, float] | None, float | None]:
    """The detector spacing (row, column mm) of ``ds``, ImagerPixelSpacing, else PixelSpacing
    unless it is the placeholder (``source`` records the field used, or the problem), and the
    magnification the two give (:func:`_spacing_ratio`; not with a placeholder PixelSpacing)."""
    spacings = {}
    for keyword, tag in SPACING_TAGS.items():
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            v = tuple(float(x) for x in value)
        except (TypeError, ValueError):
            v = ()
        if len(v) != 2:
            source["spacing_problem"] = f"{keyword} {tag} is {value!r}, expected two numbers"
        else:
            spacings[keyword] = v
    spacing = None
    if "ImagerPixelSpacing" in spacings:
        spacing, source["spacing_field"] = spacings["ImagerPixelSpacing"], "ImagerPixelSpacing (0018,1164)"
    elif spacings.get("PixelSpacing") == PLACEHOLDER_SPACING_MM:
        source["spacing_problem"] = ("PixelSpacing (0028,0030) is 1.0\\1.0 without ImagerPixelSpacing, "
                                     "the placeholder converters write when the spacing is unknown")
    elif "PixelSpacing" in spacings:
        spacing, source["spacing_field"] = spacings["PixelSpacing"], "PixelSpacing (0028,0030)"
    else:
        source.setdefault("spacing_problem", "neither ImagerPixelSpacing (0018,1164) nor "
                                             "PixelSpacing (0028,0030) is present")
    source.setdefault("spacing_field", "none")
    ratio = None
    if len(spacings) == 2 and spacings["PixelSpacing"] != PLACEHOLDER_SPACING_MM:  # a placeholder: no ratio
        ratio = _spacing_ratio(ds, source, spacings["ImagerPixelSpacing"], spacings["PixelSpacing"])
    return spacing, ratio


def _spacing_ratio(ds, source: dict, imager: tuple[float, float], pixel: tuple[float, float]) -> float | None:
    """ImagerPixelSpacing / PixelSpacing, the magnification when PixelSpacingCalibrationType
    says PixelSpacing is calibrated (else ``None``: a note in ``source`` when they differ by more
    than :data:`SPACING_DIFFERENCE`)."""
    ratios = [i / p for i, p in zip(imager, pixel) if p > 0]
    if len(ratios) != 2:
        return None
    if "PixelSpacingCalibrationType" in ds:
        if abs(ratios[0] / ratios[1] - 1.0) <= SPACING_DIFFERENCE:
            return float(np.mean(ratios))
        source["magnification_problem"] = (f"ImagerPixelSpacing / PixelSpacing is {ratios[0]:.4g} for rows, "
                                           f"{ratios[1]:.4g} for columns: not one magnification")
    elif max(abs(r - 1.0) for r in ratios) > SPACING_DIFFERENCE:
        source.setdefault("notes", []).append(
            f"ImagerPixelSpacing (0018,1164) {list(imager)} mm and PixelSpacing (0028,0030) {list(pixel)} mm "
            f"differ by more than {100 * SPACING_DIFFERENCE:g} % and PixelSpacingCalibrationType (0028,0A02) "
            "does not say what PixelSpacing is: the detector's ImagerPixelSpacing was used (if PixelSpacing "
            f"was calibrated at the patient, the magnification is {np.mean(ratios):.3f}: give --magnification)")
    return None


def _dicom_magnification(ds, path: Path, source: dict, ratio: float | None, calibrated: bool) -> None:
    """Magnification (SDD / SOD) from the DICOM attributes (see the module docstring); ``ratio``:
    ImagerPixelSpacing / a calibrated PixelSpacing; ``calibrated``: the spacing used is a
    PixelSpacing calibrated at the patient (magnification 1). A factor or distance that is not
    one number is recorded as the problem, not used."""
    def number(keyword: str) -> float | None:
        try:
            v = _dicom_number(ds, keyword, path, may_be_empty=True)
        except InputError as e:
            source["magnification_problem"] = str(e)
            return None
        return v if v is not None and v > 0 else None

    sdd, sod = number("DistanceSourceToDetector"), number("DistanceSourceToPatient")
    factor = number("EstimatedRadiographicMagnificationFactor")
    for name, value in (("EstimatedRadiographicMagnificationFactor (0018,1114)", factor),
                        ("ImagerPixelSpacing / PixelSpacing", ratio)):
        if value is not None and value <= 1.0 and not calibrated:
            # a film of a patient on a table is magnified: 1.0 is what devices write when they did
            # not estimate it (the detector pixels are not at the patient)
            source["magnification_problem"] = f"{name} is {value:g}: not an estimate for a detector-plane spacing"
    factor, ratio = (None if v is None or v <= 1.0 else v for v in (factor, ratio))
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
    elif ratio is not None:
        source["magnification"] = ratio
        source["magnification_field"] = ("ImagerPixelSpacing (0018,1164) / PixelSpacing (0028,0030) calibrated "
                                          "at the patient (PixelSpacingCalibrationType (0028,0A02) "
                                          f"{ds.get('PixelSpacingCalibrationType')})")


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
    elif (sy, sx) == PLACEHOLDER_SPACING_MM:
        source["spacing_problem"] = ("image spacing is 1.0 x 1.0 mm, what ITK reads from a file that stores "
                                     "none and the placeholder converters write when the spacing is unknown")
        return array, None, source, value_range
    return array, (sy, sx), source, value_range


def _read_picture(path: Path):
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            im = ImageOps.exif_transpose(im)  # as viewers show it
            converted = {"P": "RGBA", "PA": "RGBA", "LA": "L", "La": "L", "CMYK": "RGB", "YCbCr": "RGB"}.get(mode)
            array = np.asarray(im.convert(converted) if converted else im)
            array = array.astype(array.dtype.newbyteorder("="))  # e.g. I;16B: big-endian 16 bit
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot be read as a picture ({e})") from None
    source = {"format": "picture", "mode": mode, "bits_stored": 16 if array.dtype.itemsize >= 2 else 8,
              "spacing_field": "none",
              "spacing_problem": f"{path.suffix} files store no pixel spacing"}
    if orientation in range(2, 9):
        source["exif_orientation"] = orientation
        source["notes"] = [f"the picture was turned or mirrored as its EXIF Orientation ({orientation}) says, "
                           "to how viewers show it (a pixel spacing's row and column are the turned image's)"]
    value_range = None if array.dtype.kind == "f" else (0, (1 << source["bits_stored"]) - 1)
    return _to_grey(array, path, source), None, source, value_range


def unit_range(array: np.ndarray, value_range: tuple[float, float] | None = None,
               percentiles: tuple[float, float] = WINDOW_PERCENTILES,
               padding: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """A radiograph's values in [0, 1], bright = attenuating, as the training radiographs.

    Floating-point data already in [0, 1] (processed radiographs such as the cohort's; no
    stored ``value_range`` of integer data) are used as they are. Anything else gets the
    training radiographs' clinical processing: a window from its ``percentiles`` to [0, 1].
    ``padding`` ((H, W) bool, :attr:`Radiograph.padding`) marks pixels outside the image: left
    out of the percentiles and set to 0 (no attenuation). Returns the image (float32) and the
    method used.
    """
    a = np.asarray(array, np.float64)
    image = a if padding is None else a[~padding]
    if value_range is None and image.min() >= 0.0 and image.max() <= 1.0:
        x, method = a, "already in [0, 1]: used as it is"
    else:
        lo, hi = np.percentile(image, percentiles)
        method = f"window [{lo:g}, {hi:g}] (percentiles {percentiles[0]:g}, {percentiles[1]:g}) -> [0, 1]"
        x = np.zeros_like(a) if hi <= lo else np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    if padding is not None:
        x = np.where(padding, 0.0, x)
        method += f"; {int(padding.sum())} padding pixel(s) left out and set to 0"
    return x.astype(np.float32), method
