"""The JSON sidecar (``<stem>.json``, format ``mskdex-xray``) of a cohort radiograph: where it
is, reading its record and projection geometry, and checking that geometry against the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .imaging.geometry import Geometry
from .radiograph_formats import ITK_SUFFIXES, known_suffix, stem

#: Format of the JSON sidecar (``<stem>.json``) of a cohort radiograph.
SIDECAR_FORMAT = "mskdex-xray"
SIDECAR_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    """Where a radiograph's ``<stem>.json`` sidecar would be."""
    path = Path(path)
    return path.with_name(stem(path) + ".json")


def read_sidecar_path(path: str | Path) -> Path | None:
    """The sidecar :func:`~.radiograph_io.read_radiograph` reads for ``path``: a NIfTI/NRRD/MHA file's
    ``<stem>.json`` when there is one (other formats read none), else ``None``."""
    side = sidecar_path(path)
    return side if known_suffix(Path(path)) in ITK_SUFFIXES and side.is_file() else None


def read_sidecar_record(path: str | Path) -> dict | None:
    """A cohort radiograph's ``<stem>.json`` sidecar (format ``mskdex-xray`` v1), or ``None``."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{side}: not valid UTF-8 JSON ({e}); a <stem>.json beside a NIfTI/NRRD/MHA "
                         "radiograph is read as its mskdex-xray sidecar: rename or move it") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None
    if data.get("version") != SIDECAR_VERSION:
        raise InputError(f"{side}: field 'version' must be {SIDECAR_VERSION}, got {data.get('version')!r}")
    return data


def simulated(path: str | Path) -> bool:
    """Whether ``path`` is a radiograph MSKdeX simulated: its ``mskdex-xray`` sidecar names no
    film it was assembled from (its orientation is then known: AP, the patient's right on the
    viewer's left)."""
    record = read_sidecar_record(path) if read_sidecar_path(path) is not None else None
    return record is not None and not isinstance(record.get("source"), dict)


def read_sidecar(path: str | Path) -> Geometry | None:
    """The geometry of a cohort radiograph's ``<stem>.json`` sidecar (format ``mskdex-xray`` v1),
    or ``None`` when there is none."""
    data = read_sidecar_record(path)
    return None if data is None else record_geometry(data, path)


def record_geometry(data: dict, path: str | Path) -> Geometry:
    """The geometry of a sidecar record ``data`` (:func:`read_sidecar_record`) of radiograph ``path``."""
    return Geometry.from_json(data.get("geometry"), f"{sidecar_path(path)}: field 'geometry'")


def fits(geometry: Geometry, shape: tuple[int, int], spacing: tuple[float, float]) -> bool:
    """Whether a sidecar ``geometry`` describes an image of ``shape`` (rows, cols) and pixel
    ``spacing`` (row, column) mm (to a relative 1e-4)."""
    return geometry.shape == tuple(shape) and bool(np.allclose(geometry.pixel_spacing, spacing, rtol=1e-4))


def source_sidecar(source: dict, where: str) -> Geometry | None:
    """The sidecar geometry :func:`~.radiograph_io.read_radiograph` took, from its record
    ``source`` (``None`` when it took none, or for a record of MSKdeX 0.3.3 or older, which kept
    only that it did); ``where`` names the record in errors."""
    recorded = source.get("sidecar_geometry")
    return Geometry.from_json(recorded, f"{where}: field 'sidecar_geometry'") if isinstance(recorded, dict) else None


def check_sidecar(geometry: Geometry, path: str | Path, shape: tuple[int, int],
                  spacing: tuple[float, float]) -> None:
    """Refuse a sidecar ``geometry`` that does not describe the image ``path`` of ``shape``
    (rows, cols) and ``spacing`` (row, column) mm."""
    if not fits(geometry, shape, spacing):
        raise InputError(f"{sidecar_path(path)}: field 'geometry' describes {geometry.rows}x{geometry.cols} "
                         f"pixels of {list(geometry.pixel_spacing)} mm, but {Path(path).name} has "
                         f"{shape[0]}x{shape[1]} of {[round(float(v), 6) for v in spacing]} mm: the sidecar "
                         "is not this image's")
