"""The three object-wise DRR types, their units, and the amounts their image sums give.

NumPy only: the projector, the model files, the tables and the Slicer module (which loads
before PyTorch is installed) share these names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Channel order of a DRR stack: attenuation (WVDRR), volume (VDRR), lean/bone mass (MDRR).
DRR_TYPES = ("wvdrr", "vdrr", "mdrr")
DRR_UNITS = {"wvdrr": "1 (line integral of mu)", "vdrr": "cm (cm3/cm2)", "mdrr": "g/cm2"}
#: The same units in short form (image metadata, axis labels).
DRR_SHORT_UNITS = {t: u.split()[0] for t, u in DRR_UNITS.items()}
#: DRR types whose pixels are amounts per detector area (their sums times pixel area are cm3, g).
PER_AREA_TYPES = ("vdrr", "mdrr")


def volume_mass(drrs: np.ndarray, pixel_area_cm2: float,
                drr_types: Sequence[str] = DRR_TYPES) -> tuple[np.ndarray, np.ndarray]:
    """Volume (cm3) and mass (g) of each object from the image sums of ``drrs`` (..., types, N,
    rows, cols; per area of pixels of ``pixel_area_cm2``), summed in float64: two (..., N)
    arrays."""
    sums = np.sum(drrs, axis=(-1, -2), dtype=np.float64) * pixel_area_cm2
    return sums[..., drr_types.index("vdrr"), :], sums[..., drr_types.index("mdrr"), :]
