"""Radiograph file formats: the suffixes each reader takes, a file's format suffix and stem,
which files batch mode reads, and what the readers share (the placeholder spacing, grey from
colour).

:func:`~.radiograph_io.read_radiograph` reads :data:`ITK_SUFFIXES` with SimpleITK,
:data:`PICTURE_SUFFIXES` as pictures and anything else as DICOM (:mod:`.dicom_radiograph`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

#: Spacing (row, column mm) that converters write, and ITK reads from a file storing none, when
#: the spacing is unknown: refused as a placeholder (see :mod:`.radiograph_io`).
PLACEHOLDER_SPACING_MM = (1.0, 1.0)
#: SOP class of a DICOM media directory (DICOMDIR), listed beside the images of an export.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Suffixes read with SimpleITK (they store the spacing in the file).
ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes read as plain pictures (no spacing in the file).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Suffixes treated as DICOM (files without a suffix are tried as DICOM too).
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
#: Every suffix :func:`~.radiograph_io.read_radiograph` accepts (used by folder batch mode).
SUFFIXES = ITK_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES
#: Luma weights (ITU-R BT.601) used when a colour file has to be turned into grey.
LUMA = np.array([0.299, 0.587, 0.114])


def known_suffix(path: Path) -> str:
    """The format suffix of ``path`` that :func:`~.radiograph_io.read_radiograph` knows (lower
    case), or ""."""
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


def to_grey(array: np.ndarray, path: Path, source: dict) -> np.ndarray:
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
