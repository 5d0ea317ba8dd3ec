"""DICOM DX/CR radiographs: pixels, pixel padding, detector spacing and magnification.

:func:`read_dicom` gives :func:`~.radiograph_io.read_radiograph` the pieces of a DICOM file
(array, spacing, source record, stored value range), which it checks and assembles into a
:class:`~.radiograph_io.Radiograph`: the array is bright = attenuating (the modality rescale
or LUT applied, MONOCHROME1 inverted after it), the spacing (row, column) in mm at the detector.

DICOM pixel data is decoded by pydicom, else by SimpleITK's GDCM (JPEG Lossless and JPEG-LS,
which pydicom decodes only with plugins; an uncompressed image whose header pydicom refuses).
Uncompressed PixelData shorter than its image is refused before (GDCM pads it with zeros), as is
compressed PixelData that ends before its delimiter. pydicom's warnings about the file go to
the error or the result's notes, not to the terminal. A numeric field that is empty,
multi-valued or not a number is an error naming the file and the tag (a source distance or
magnification factor is not used instead, and ``magnification_problem`` says why; an empty one
counts as absent). Pixel padding (PixelPaddingValue (0028,0120), up to PixelPaddingRangeLimit
(0028,0121)) is recorded as ``source["padding_range"]``.

The detector spacing is ImagerPixelSpacing (0018,1164, at the detector), else PixelSpacing
(0028,0030); where both are given and differ by more than :data:`SPACING_DIFFERENCE` without
PixelSpacingCalibrationType (0028,0A02), a note says so. A PixelSpacing of exactly 1.0 x 1.0
without ImagerPixelSpacing is the placeholder written when the spacing is unknown: not used.

Magnification (source-detector over source-isocentre distance) is read from
EstimatedRadiographicMagnificationFactor (0018,1114), else DistanceSourceToDetector (0018,1110) /
(DistanceSourceToPatient (0018,1111) - :data:`HIP_ABOVE_TABLE_MM`): for DX that distance reaches
the table or bucky side of the patient, and the hip joint centres lie nearer the source (taken
as is, it would underestimate their magnification by 10-15 %); a PixelSpacing calibrated at the patient
(PixelSpacingCalibrationType (0028,0A02) present, no ImagerPixelSpacing, no spacing given by the
caller) already is at the patient's scale (magnification 1 for it), and beside ImagerPixelSpacing
(without the factor or the distances) the ratio ImagerPixelSpacing / PixelSpacing is the
magnification (a placeholder PixelSpacing of 1.0 x 1.0 beside ImagerPixelSpacing is not
compared).

The pixels are turned to :data:`FRONTAL_ORIENTATION` when PatientOrientation (0020,0020) says
they are stored mirrored (columns running to the patient's right, e.g. a PA film kept as seen
from behind) or upside down (rows running to the head); without the field they are kept as
stored, and a mirrored film cannot be told from a correct one (the pelvis is nearly symmetric).
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, recorded, warn_again
from .radiograph_formats import ITK_SUFFIXES, PICTURE_SUFFIXES, PLACEHOLDER_SPACING_MM, to_grey

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
#: PatientOrientation (0020,0020) of a film as MSKdeX reads it: an AP view shown with the patient's
#: right on the viewer's left, head up (columns run to the patient's left, rows to the feet).
FRONTAL_ORIENTATION = ("L", "F")
#: Assumed height (mm) of the hip joint centres above the table or bucky surface that DICOM
#: DistanceSourceToPatient (0018,1111) reaches: about half an adult's anteroposterior thickness
#: at the hips (about 220 mm). A stated assumption, noted in results; +-30 mm changes the
#: magnification by about +-3.5 %.
HIP_ABOVE_TABLE_MM = 110.0


def read_dicom(path: Path, file_spacing: bool = True, *, magnification_option: str | None = None):
    """Array, spacing, source and value range of a DICOM radiograph; ``file_spacing`` False: the
    caller overrides the spacing (then a PixelSpacing calibrated at the patient does not count);
    ``magnification_option`` names where the user gives a magnification, for the notes (``None``:
    nowhere).
    pydicom's warnings about the file (it warns as values are read) go to the result's notes, or
    to the error, not to the terminal; others (deprecations, for developers) are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            array, spacing, source, value_range = _decode_dicom(path, file_spacing, magnification_option)
        except InputError as e:
            said = "; ".join(_warned(caught))
            if not said:
                raise
            raise InputError(f"{e} (pydicom warned: {said})") from None
    warn_again(recorded(w for w in caught if not issubclass(w.category, UserWarning)))
    warned = _warned(caught)
    if warned:
        source.setdefault("notes", []).extend(f"pydicom, reading the file: {m}" for m in warned)
    return array, spacing, source, value_range


def _decode_dicom(path: Path, file_spacing: bool, magnification_option: str | None):
    """:func:`read_dicom` without its handling of pydicom's warnings."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as e:
        said = str(e).replace(" Use force=True to force reading.", "")  # pydicom's advice to programmers
        raise InputError(f"{path}: not a readable DICOM file ({said}); radiographs are read from "
                         f"DICOM, {', '.join(ITK_SUFFIXES + PICTURE_SUFFIXES)}") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: PixelData (7FE0,0010) is missing or truncated; expected the image's pixels")
    frames = _dicom_number(ds, "NumberOfFrames", path, 1.0, may_be_empty=True) or 1
    if frames != 1:
        raise InputError(f"{path}: NumberOfFrames (0028,0008) is {frames:g}; expected one 2D radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = _dicom_number(ds, "SamplesPerPixel", path, 1.0)
    if photometric.startswith("MONOCHROME") and samples != 1:  # also where it is absent: greyscale assumed
        given = f"is {photometric}" if "PhotometricInterpretation" in ds else "is missing"
        raise InputError(f"{path}: PhotometricInterpretation (0028,0004) {given} but SamplesPerPixel (0028,0002) "
                         f"is {samples:g}; expected 1 sample per pixel for a greyscale image (or a colour "
                         "PhotometricInterpretation, e.g. RGB, for a colour one)")
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
        array = to_grey(raw, path, source)
        value_range = stored
    array = _oriented(ds, array, source)
    spacing, ratio = _dicom_spacing(ds, source, magnification_option)
    _dicom_magnification(ds, path, source, ratio, calibrated=file_spacing and "PixelSpacingCalibrationType" in ds
                         and source["spacing_field"].startswith("PixelSpacing"))
    return array, spacing, source, value_range


def _oriented(ds, array: np.ndarray, source: dict) -> np.ndarray:
    """``array`` mirrored and/or flipped to :data:`FRONTAL_ORIENTATION` as PatientOrientation
    (0020,0020) asks, recorded in ``source`` (``patient_orientation``, a note); a value that is
    not a frontal view (e.g. A or P: a lateral film) or not two values is noted and changes nothing."""
    from pydicom.multival import MultiValue

    value = ds.get("PatientOrientation")
    if value is None or value == "":
        return array
    values = [str(v).strip().upper() for v in (value if isinstance(value, MultiValue) else [value])]
    source["patient_orientation"] = values
    stored, wanted = "\\".join(values), "\\".join(FRONTAL_ORIENTATION)
    columns, rows = values if len(values) == 2 else ("", "")
    if columns[:1] not in ("L", "R") or rows[:1] not in ("H", "F"):
        source.setdefault("notes", []).append(
            f"PatientOrientation (0020,0020) {stored}: not a frontal film as stored (expected {wanted}, an AP view "
            "with the patient's right on the viewer's left, or its mirror or flip); its pixels were used as stored")
        return array
    turned = []
    if columns[0] == "R":
        array, turned = array[:, ::-1], turned + ["mirrored left-right"]
    if rows[0] == "H":
        array, turned = array[::-1], turned + ["flipped top-bottom"]
    if turned:
        source.setdefault("notes", []).append(
            f"PatientOrientation (0020,0020) {stored}: the pixels were {' and '.join(turned)} to {wanted} (the "
            "patient's right on the viewer's left, head up)")
    return np.ascontiguousarray(array)


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


def _dicom_spacing(ds, source: dict,
                   magnification_option: str | None) -> tuple[tuple[float, float] | None, float | None]:
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
        ratio = _spacing_ratio(ds, source, spacings["ImagerPixelSpacing"], spacings["PixelSpacing"],
                               magnification_option)
    return spacing, ratio


def _spacing_ratio(ds, source: dict, imager: tuple[float, float], pixel: tuple[float, float],
                   magnification_option: str | None) -> float | None:
    """ImagerPixelSpacing / PixelSpacing, the magnification when PixelSpacingCalibrationType
    says PixelSpacing is calibrated (else ``None``: a note in ``source`` when they differ by more
    than :data:`SPACING_DIFFERENCE`, naming ``magnification_option``)."""
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
            "does not say what PixelSpacing is: the detector's ImagerPixelSpacing was used; if PixelSpacing "
            f"was calibrated at the patient, the magnification is {np.mean(ratios):.3f}"
            + (f": give it ({magnification_option})" if magnification_option else ""))
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
