"""Reading radiographs: DICOM DX/CR, NIfTI/NRRD/MHA (SimpleITK) and pictures (PNG/JPEG/TIFF/BMP).

:func:`read_radiograph` returns a :class:`Radiograph`: a 2D float32 array in which *bright
means attenuating* (DICOM MONOCHROME1 is inverted, the modality rescale is applied; the
PresentationLUTShape and PixelIntensityRelationshipSign, which devices do not write
consistently, are recorded, not applied: decomposition flags a film whose bone is dark), the
detector pixel spacing (row, column) in mm, and a record of where each value came from.

DICOM files are read by :mod:`.dicom_radiograph` (pixel decoding, pixel padding, the spacing and
magnification fields), the suffixes of each format are in :mod:`.radiograph_formats`, and a
cohort radiograph's ``mskdex-xray`` sidecar is read by :mod:`.sidecar`.
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
``missing_spacing=`` / ``--pixel-spacing-if-missing`` is used only where the file has none or a
placeholder (e.g. a folder of DICOMs, some exported without their spacing).

Magnification (source-detector over source-isocentre distance, which models need to see
every patient at the same scale) is read when the file has it: from DICOM fields (see
:mod:`.dicom_radiograph`) or a cohort radiograph's ``mskdex-xray`` sidecar. An
explicit ``magnification=`` / ``--magnification`` takes precedence; a value outside
:data:`MAGNIFICATION_RANGE` is refused. It stays ``None`` when unknown (the caller decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_radiograph import SPACING_DIFFERENCE, read_dicom
from .errors import InputError
from .fileio import file_sha256
from .imaging.volume import read_image
from .radiograph_formats import ITK_SUFFIXES, PICTURE_SUFFIXES, PLACEHOLDER_SPACING_MM, known_suffix, to_grey
from .sidecar import SIDECAR_FORMAT, check_sidecar, read_sidecar_record, record_geometry

#: Plausible detector pixel spacing of a projection radiograph (mm).
SPACING_RANGE_MM = (0.02, 2.0)
#: Plausible detector field of view (mm) along either axis.
FOV_RANGE_MM = (50.0, 1000.0)
#: Plausible magnification at the patient (SDD / SOD) of a projection radiograph.
MAGNIFICATION_RANGE = (1.0, 2.0)
#: How the note of a magnification given over the file's begins (:func:`set_magnification`).
MAGNIFICATION_NOTE = "the magnification given, "
#: What the notes on a spacing or magnification given or assumed say of its effect: the model
#: sees the anatomy larger or smaller, and its volumes and masses do not follow a square law
#: (docs/evaluation.md, Pixel spacing: a 10 % change moved the demo model's by -38 to +130 %).
SCALE_EFFECT = "volumes and masses depend strongly on it, by no fixed factor"
#: The CLI option of ``missing_spacing``, named in its errors, and the ``spacing_field`` it gives.
MISSING_SPACING_OPTION = "--pixel-spacing-if-missing"
MISSING_SPACING_FIELD = "argument (missing_spacing)"
#: Sides (mm) of the usual cassette of a hip film (35 x 43 cm), for the spacing hint.
CASSETTE_MM = (350.0, 430.0)
#: Percentiles of a raw radiograph mapped to 0 and 1 (the cohort's clinical processing default).
WINDOW_PERCENTILES = (1.0, 99.5)


class SpacingMissing(InputError):
    """A radiograph file without a usable pixel spacing (none, or a placeholder), none given."""


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


def read_radiograph(path: str | Path,
                    pixel_spacing: tuple[float, float] | float | None = None,
                    magnification: float | None = None, *,
                    missing_spacing: tuple[float, float] | float | None = None,
                    spacing_option: str = "--pixel-spacing",
                    magnification_option: str | None = None) -> Radiograph:
    """Read a radiograph file; ``pixel_spacing`` (row, column mm, or one value for both)
    overrides whatever the file says and is required for PNG/JPEG/TIFF/BMP unless
    ``missing_spacing`` is given, which is used only where the file has no usable spacing
    (none, or a placeholder; not with ``pixel_spacing``); ``magnification`` (SDD / SOD) overrides
    the file's. ``spacing_option`` and ``magnification_option`` name where the user gives each,
    for the errors and notes (a CLI option, a table column, a Slicer field; ``None``: the caller
    takes no magnification, so a wrong one must be corrected in the file).

    Raises :class:`InputError` naming the file and field for unreadable files, images that
    are not 2D, a missing, placeholder or implausible pixel spacing and an implausible
    magnification.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected one radiograph file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    explicit = explicit_spacing(pixel_spacing, spacing_option)
    fallback = explicit_spacing(missing_spacing, MISSING_SPACING_OPTION)
    if explicit is not None and fallback is not None:
        raise InputError("pixel_spacing and missing_spacing exclude each other: the first applies to every file")
    suffix = known_suffix(path) or path.suffix.lower()
    if suffix in ITK_SUFFIXES:
        array, spacing, source, value_range = _read_itk(path)
    elif suffix in PICTURE_SUFFIXES:
        array, spacing, source, value_range = _read_picture(path)
    else:
        array, spacing, source, value_range = read_dicom(path, file_spacing=explicit is None,
                                                         magnification_option=magnification_option)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite; expected finite intensities")
    if explicit is None and spacing is None and fallback is not None:
        explicit, spacing_option = fallback, MISSING_SPACING_OPTION
        source["spacing_field"] = MISSING_SPACING_FIELD
    elif explicit is not None:
        if spacing is not None and not np.allclose(explicit, spacing, rtol=SPACING_DIFFERENCE, atol=0):
            size = np.sqrt(explicit[0] * explicit[1] / (spacing[0] * spacing[1]))
            source.setdefault("notes", []).append(
                f"the pixel spacing given, {list(explicit)} mm, was used instead of the file's own "
                f"{list(spacing)} mm ({source['spacing_field']}): the anatomy looks {size:.3g}x as large to the "
                f"model as with the file's; {SCALE_EFFECT}")
        source["spacing_field"] = "argument (pixel_spacing)"
    if explicit is not None:
        source["spacing_in_file"] = None if spacing is None else list(spacing)
        spacing = explicit
    elif spacing is None:
        raise SpacingMissing(
            f"{path}: no usable pixel spacing ({source.get('spacing_problem', 'the format stores none')}); "
            f"pass it explicitly ({spacing_option}, {spacing_hint(array.shape)})")
    # a spacing given by the user wins over the plausible-range check of file fields, not over the
    # field-of-view check; a cohort radiograph's own spacing (its sidecar's geometry) is exact, however coarse
    if explicit is not None:
        check_spacing(path, array.shape, spacing, source["spacing_field"], "check the value given "
                      f"({spacing_option}, mm at the detector)", spacing_range=(0.0, float("inf")))
    elif not source.get("sidecar_geometry"):
        check_spacing(path, array.shape, spacing, source["spacing_field"],
                      f"pass the right value explicitly ({spacing_option}, {spacing_hint(array.shape)})")
    if magnification is not None:
        set_magnification(source, magnification, "argument (magnification)")
    _check_magnification(path, source, magnification_option)
    source["path"] = str(path)
    source["sha256"] = file_sha256(path)
    source["shape"] = list(array.shape)
    source["value_range"] = None if value_range is None else [float(v) for v in value_range]
    return Radiograph(array.astype(np.float32), (float(spacing[0]), float(spacing[1])), source)


def set_magnification(source: dict, magnification: float, field: str) -> None:
    """Put a magnification given by the user (``field``: where) into a radiograph's ``source``,
    with a note of both values where the file had another (more than 1 % apart). The file's
    value and field are kept as ``magnification_in_file`` and ``magnification_field_in_file`` by
    the first call; a later one (Slicer's panel after *Load radiograph* was given one) compares
    with them and replaces the earlier note."""
    if "magnification_in_file" not in source:
        source.update(magnification_in_file=source.get("magnification"),
                      magnification_field_in_file=source.get("magnification_field"))
    before, where = source["magnification_in_file"], source["magnification_field_in_file"]
    notes = [n for n in source.get("notes", []) if not n.startswith(MAGNIFICATION_NOTE)]
    if before is not None and abs(magnification / before - 1.0) > SPACING_DIFFERENCE:
        notes.append(f"{MAGNIFICATION_NOTE}{magnification:g}, was used instead of the file's own {before:.4g} "
                     f"({where}): the anatomy looks {before / magnification:.3g}x as large to the model as with "
                     f"the file's; {SCALE_EFFECT}")
    if notes or "notes" in source:
        source["notes"] = notes
    source.update(magnification=float(magnification), magnification_field=field)


def spacing_hint(shape: tuple[int, ...]) -> str:
    """An example detector spacing for an image of ``shape`` (rows, columns): what its columns
    would have if they spanned a hip film's cassette (:data:`CASSETTE_MM`)."""
    cols = shape[-1]
    return (f"mm at the detector: e.g. {CASSETTE_MM[0] / cols:.2g}-{CASSETTE_MM[1] / cols:.2g} mm if the film's "
            f"{cols} columns span a {CASSETTE_MM[0] / 10:g} x {CASSETTE_MM[1] / 10:g} cm cassette")


def explicit_spacing(value, option: str = "--pixel-spacing") -> tuple[float, float] | None:
    """A pixel spacing the user gives (mm: one value for rows and columns, or row and column) as
    (row, column); None when not given; InputError naming ``option`` (where it was given: a CLI
    option, a table column, a Slicer field) unless one or two finite numbers > 0."""
    if value is None:
        return None
    try:
        v = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise InputError(f"{option} must be numbers > 0 (mm), got {value!r}") from None
    if v.size not in (1, 2):
        raise InputError(f"{option} takes one or two values (mm), got {v.size}")
    if not np.all(np.isfinite(v) & (v > 0)):
        raise InputError(f"{option} must be numbers > 0 (mm), got {' '.join(f'{x:g}' for x in v)}")
    return float(v[0]), float(v[-1])


def check_spacing(path: Path | str, shape: tuple[int, ...], spacing: tuple[float, float], fieldname: str,
                  fix: str,
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


def _check_magnification(path: Path, source: dict, magnification_option: str | None) -> None:
    source.setdefault("magnification", None)
    source.setdefault("magnification_field", "none")
    if source["magnification"] is not None:
        fix = (f"pass the right value explicitly ({magnification_option})" if magnification_option
               else "correct the file's field")
        check_magnification(source["magnification"], f"{path}: magnification from {source['magnification_field']}",
                            fix)


def check_magnification(m: float, where: str, fix: str) -> None:
    """:class:`InputError` saying ``where`` the value came from unless ``m`` (SDD / SOD) lies
    in :data:`MAGNIFICATION_RANGE`; ``fix`` says what to do."""
    lo, hi = MAGNIFICATION_RANGE
    if not lo <= m <= hi:
        raise InputError(f"{where} is {m:g}: implausible; expected SDD / SOD in [{lo:g}, {hi:g}]; {fix}")


def _read_itk(path: Path):
    image = read_image(path)
    size = image.GetSize()
    direction = image.GetDirection()  # the file's: one slice of a 3D image may read as the identity
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise InputError(f"{path}: a radiograph must be a 2D image (or one slice), got size {size}")
    source = {"format": "itk", "pixel_type": image.GetPixelIDTypeAsString(),
              "spacing_field": "image spacing"}
    raw = sitk.GetArrayFromImage(image)
    sx, sy = image.GetSpacing()  # ITK order (column, row)
    if not np.allclose(direction, np.eye(len(size)).ravel(), atol=1e-6):
        # which way is up is not defined by a 2D radiograph's direction matrix: writers differ
        # (a NIfTI of an identity RAS affine reads as a 180-degree turn in ITK's LPS), so the
        # pixels keep their stored order and the result says so
        source["direction"] = [round(float(v), 6) for v in direction]
    value_range = None
    if raw.dtype.kind in "iu":
        value_range = (np.iinfo(raw.dtype).min, np.iinfo(raw.dtype).max)
        source["bits_stored"] = 8 * raw.dtype.itemsize
    array = to_grey(raw, path, source)
    record = read_sidecar_record(path)
    if record is not None:
        sidecar = record_geometry(record, path)
        check_sidecar(sidecar, path, array.shape, (sy, sx))
        film = record.get("source")  # an assembled cohort's: the film it was read from
        source["sidecar_geometry"] = sidecar.to_json()  # simulated, or checked when assembled: exact
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
            if getattr(im, "n_frames", 1) > 1:  # e.g. a multi-page TIFF: which page is the film?
                raise InputError(f"{path}: holds {im.n_frames} pages (frames); expected one 2D radiograph: "
                                 "save the film alone")
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
    return to_grey(array, path, source), None, source, value_range


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
