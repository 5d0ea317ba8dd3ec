"""A radiograph and its detector geometry, as registration reads them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError, MSKdeXWarning
from ..geometry import Geometry

if TYPE_CHECKING:
    from ...radiograph_io import Radiograph


def read_xray(path: str | Path, pixel_spacing: tuple[float, float] | None = None,
              sdd: float | None = None, sod: float | None = None,
              require_distances: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read a 2D radiograph (float32 (rows, cols), bright = attenuating) and its :class:`Geometry`.

    A radiograph with a ``<name>.json`` sidecar in the ``mskdex-xray`` format (the synthetic
    cohort) takes its geometry from there. Any other file is read by
    :func:`MSKdeXTraining.radiograph_io.read_radiograph` (which refuses images that are not 2D
    and files without a usable spacing unless ``pixel_spacing`` (row, col mm) is given) and
    gets its geometry from :func:`radiograph_geometry`.
    """
    from ...radiograph_io import read_radiograph
    from ...sidecar import check_sidecar, read_sidecar

    path = Path(path)
    sidecar = read_sidecar(path)
    if sidecar is not None and pixel_spacing is None:  # simulated: its geometry is exact
        array, spacing = _read_cohort_image(path)
        check_sidecar(sidecar, path, array.shape, spacing)
        return array, sidecar_film_geometry(sidecar, path, sdd, sod)
    radiograph = read_radiograph(path, pixel_spacing)
    return radiograph.array, radiograph_geometry(radiograph, path, sdd, sod, require_distances,
                                                 parallel=sidecar is not None and sidecar.parallel)


def sidecar_film_geometry(sidecar: Geometry, path: str | Path, sdd: float | None = None,
                          sod: float | None = None) -> Geometry:
    """The detector :class:`Geometry` of a radiograph with its ``mskdex-xray`` sidecar's
    geometry ``sidecar``, as :func:`read_xray` takes it: exact (pixel spacing at the detector,
    ``parallel`` included), with ``sdd`` / ``sod`` (mm) replacing the sidecar's when given. No
    distance is assumed, so nothing is warned; ``path`` names the file in errors."""
    given = {k: float(v) for k, v in (("sdd", sdd), ("sod", sod)) if v is not None}
    return Geometry.from_json({**sidecar.to_json(), **given}, str(path))


def radiograph_geometry(radiograph: Radiograph, path: str | Path, sdd: float | None = None,
                        sod: float | None = None, require_distances: bool = False,
                        parallel: bool = False, *, distances_option: str = "sdd / sod") -> Geometry:
    """The detector :class:`Geometry` of a radiograph read by ``read_radiograph``.

    Source distances (mm), by priority: the arguments, then the file's: DICOM (0018,1110) SDD and
    the SOD as that SDD over the magnification ``read_radiograph`` found (the one decompose
    matches with), or (0018,1111) for a spacing calibrated at the patient; else the defaults of
    :class:`Geometry` (SDD 1100, SOD 880) with a warning, or an InputError with
    ``require_distances`` (``distances_option`` names where the user gives them). A PixelSpacing
    calibrated at the patient is scaled to the detector by SDD / SOD, unless the view is
    ``parallel`` (magnification 1 at any distance)."""
    source = radiograph.source
    m = source.get("magnification")
    sdd = float(sdd) if sdd is not None else source.get("sdd_mm")
    assumed = []
    if sdd is None:
        sdd = Geometry.sdd
        assumed.append(f"SDD {sdd:g} mm")
    if sod is not None:
        sod = float(sod)
    elif m is not None and m > 1.0:  # the magnification decompose matches with
        sod = sdd / m
    else:  # a spacing calibrated at the patient (magnification 1) or none known
        sod = source.get("sod_mm")
    if sod is None:
        sod = Geometry.sod
        assumed.append(f"SOD {sod:g} mm")
    if assumed and require_distances:
        raise InputError(f"{path}: source distances not in the file (DICOM (0018,1110) / (0018,1111)) nor "
                         f"given ({distances_option}, mm); they set the patient's scale, so they are not "
                         "assumed here")
    if assumed:
        warnings.warn(f"{path}: source distances not in the file or arguments; assuming "
                      f"{', '.join(assumed)}", MSKdeXWarning, stacklevel=2)
    spacing = radiograph.pixel_spacing
    if m == 1.0 and not parallel:  # calibrated at the patient: the detector's pixels are larger
        spacing = tuple(s * sdd / sod for s in spacing)
    return Geometry.from_json({"rows": radiograph.shape[0], "cols": radiograph.shape[1],
                               "pixel_spacing": list(spacing), "sdd": sdd, "sod": sod,
                               "parallel": parallel}, str(path))


def _read_cohort_image(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D float32 image of a cohort radiograph (MHA written by `mskdex cohort`) and its
    (row, column) spacing in mm."""
    import SimpleITK as sitk

    from ..volume import read_image

    image = read_image(path)
    if image.GetDimension() != 2 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: radiograph must be a 2D grey image, got size {image.GetSize()}")
    sx, sy = image.GetSpacing()
    return sitk.GetArrayFromImage(image).astype(np.float32), (sy, sx)
