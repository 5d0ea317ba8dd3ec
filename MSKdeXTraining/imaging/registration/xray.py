"""A radiograph and its detector geometry, as registration reads them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..geometry import Geometry


def read_xray(path: str | Path, pixel_spacing: tuple[float, float] | None = None,
              sdd: float | None = None, sod: float | None = None,
              require_distances: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read a 2D radiograph (float32 (rows, cols), bright = attenuating) and its :class:`Geometry`.

    A radiograph with a ``<name>.json`` sidecar in the ``mskdex-xray`` format (the synthetic
    cohort) takes its geometry from there. Any other file is read by
    :func:`MSKdeXTraining.radiograph_io.read_radiograph` (which refuses images that are not 2D
    and files without a usable spacing unless ``pixel_spacing`` (row, col mm) is given).
    Source distances (mm), by priority: the arguments, a ``<name>.json`` sidecar in the
    ``mskdex-xray`` format (the synthetic cohort), the file's (DICOM (0018,1110) SDD; the SOD
    as that SDD over the magnification :func:`read_radiograph` found), else the defaults of
    :class:`Geometry` (SDD 1100, SOD 880), with a warning, or an InputError with
    ``require_distances``. A PixelSpacing calibrated at the patient is scaled to the detector by
    SDD / SOD.
    """
    from ...radiograph_io import check_sidecar, read_radiograph, read_sidecar, sidecar_path

    path = Path(path)
    factor, at_patient = None, False
    sidecar = read_sidecar(path)
    if sidecar is not None and pixel_spacing is None:  # simulated: its geometry is exact
        array, spacing = _read_cohort_image(path)
        check_sidecar(sidecar, path, array.shape, spacing)
        known = {"sdd": sidecar.sdd, "sod": sidecar.sod}
    else:
        radiograph = read_radiograph(path, pixel_spacing)
        array, spacing, source = radiograph.array, radiograph.pixel_spacing, radiograph.source
        known = {} if source.get("sdd_mm") is None else {"sdd": float(source["sdd_mm"])}
        m = source.get("magnification")
        factor = m if m is not None and m > 1.0 else None
        at_patient = m == 1.0  # a PixelSpacing calibrated at the patient
    meta = {"rows": array.shape[0], "cols": array.shape[1], "pixel_spacing": spacing,
            "parallel": sidecar is not None and sidecar.parallel}
    assumed = []
    meta["sdd"] = float(sdd) if sdd is not None else known.get("sdd")
    if meta["sdd"] is None:
        meta["sdd"] = Geometry.sdd
        assumed.append(f"SDD {Geometry.sdd:g} mm")
    meta["sod"] = (float(sod) if sod is not None else known.get("sod")
                   or (meta["sdd"] / factor if factor is not None else None))
    if meta["sod"] is None:
        meta["sod"] = Geometry.sod
        assumed.append(f"SOD {Geometry.sod:g} mm")
    if at_patient:  # the detector's pixels are larger by the magnification
        meta["pixel_spacing"] = tuple(s * meta["sdd"] / meta["sod"] for s in spacing)
    if assumed and require_distances:
        raise InputError(f"{path}: source distances not in the file (DICOM (0018,1110) / (0018,1111)) "
                         f"nor in a {sidecar_path(path).name} sidecar (mskdex-xray: geometry sdd, sod in mm); "
                         "they set the patient's scale, so they are not assumed here")
    if assumed:
        warnings.warn(f"{path}: source distances not in the file or arguments; assuming "
                      f"{', '.join(assumed)}", stacklevel=2)
    return array, Geometry.from_json(meta, str(path))


def _read_cohort_image(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D float32 image of a cohort radiograph (MHA written by `mskdex cohort`) and its
    (row, column) spacing in mm."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 2 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: radiograph must be a 2D grey image, got size {image.GetSize()}")
    sx, sy = image.GetSpacing()
    return sitk.GetArrayFromImage(image).astype(np.float32), (sy, sx)
