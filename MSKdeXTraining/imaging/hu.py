"""Conversions from CT numbers (HU) to the physical quantities projected into DRRs.

Every function takes HU (any array shape, numpy or torch) and returns the same shape.

* :func:`attenuation` - linear attenuation coefficient mu (1/cm) for the WVDRR;
* :func:`mass_density` - mass density rho (g/cm3) after Schneider et al. 2000;
* :func:`lean_fraction` - lean-muscle fraction of a voxel after Aubrey et al. 2014;
* :func:`mdrr_density` - the density projected into the MDRR (g/cm3).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

#: Effective photon energy of the simulated hip radiograph (keV): about the mean energy of an
#: 80 kVp, ~3 mm Al beam (the usual AP pelvis setting) after ~20 cm of tissue (55-60 keV; the
#: incident beam's mean is about 44 keV). mu from HU by water scaling (:func:`attenuation`) holds
#: for soft tissue; it puts cortical bone 13-20 % low against its tabulated mu at 60 keV.
EFFECTIVE_ENERGY_KEV = 60.0
#: CT numbers (HU) at or below this are air: the radiograph simulation does not project them.
AIR_HU = -900.0
#: Linear attenuation coefficient of water at 60 keV (1/cm): mass attenuation coefficient
#: 0.2059 cm2/g (NIST XCOM, Hubbell & Seltzer, NISTIR 5632) times 1.000 g/cm3.
MU_WATER_PER_CM = 0.2059

#: Schneider W, Bortfeld T, Schlegel W. Correlation between CT numbers and tissue parameters
#: needed for Monte Carlo simulations of clinical dose distributions. Phys Med Biol
#: 45:459-478 (2000), the piecewise-linear HU -> mass density calibration (their Fig. 5), extended
#: above 2000 HU to dense bone (0.0005 g/cm3 per HU) and, from 2995 HU, to titanium (4.54 g/cm3): a
#: CT's saturated voxels are an implant's metal, which segmentation QC flags. Section k covers
#: HU in [LOWER[k], LOWER[k+1]); rho = OFFSET + FACTOR * (FACTOR_OFFSET + HU).
SCHNEIDER_LOWER_HU = (-1000.0, -98.0, 15.0, 23.0, 101.0, 2001.0, 2995.0)
SCHNEIDER_UPPER_HU = 2996.0
SCHNEIDER_OFFSET = (0.00121, 1.018, 1.03, 1.003, 1.017, 2.201, 4.54)
SCHNEIDER_FACTOR = (0.0010297, 0.000893, 0.0, 0.001169, 0.000592, 0.0005, 0.0)
SCHNEIDER_FACTOR_OFFSET = (1000.0, 0.0, 1000.0, 0.0, 0.0, -2000.0, 0.0)

#: Aubrey J et al. Measurement of skeletal muscle radiation attenuation and basis of its
#: biological variation. Acta Physiol 210:489-497 (2014): voxels below -30 HU are fat, above
#: +30 HU lean muscle, and in between a mixture in linear proportion.
LEAN_FAT_HU = -30.0
LEAN_MUSCLE_HU = 30.0


def _lib(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def attenuation(hu: Array) -> Array:
    """Linear attenuation coefficient (1/cm) at :data:`EFFECTIVE_ENERGY_KEV`.

    ``mu = mu_water * max(0, 1 + HU / 1000)``: the definition of the Hounsfield scale
    inverted, with air (-1000 HU and below) as zero.
    """
    lib = _lib(hu)
    return MU_WATER_PER_CM * lib.clip(1.0 + hu / 1000.0, 0.0, None)


def mass_density(hu: Array) -> Array:
    """Mass density (g/cm3) after Schneider et al. 2000; HU is clipped to [-1000, 2996]."""
    lib = _lib(hu)
    h = lib.clip(hu * 1.0, SCHNEIDER_LOWER_HU[0], SCHNEIDER_UPPER_HU)
    rho = lib.zeros_like(h)
    bounds = SCHNEIDER_LOWER_HU[1:] + (np.inf,)
    for lower, upper, off, fac, foff in zip(
        SCHNEIDER_LOWER_HU, bounds, SCHNEIDER_OFFSET, SCHNEIDER_FACTOR, SCHNEIDER_FACTOR_OFFSET
    ):
        inside = (h >= lower) & (h < upper)
        rho = lib.where(inside, off + fac * (foff + h), rho)
    return rho


def lean_fraction(hu: Array) -> Array:
    """Lean-muscle fraction in [0, 1]: 0 below -30 HU, 1 above +30 HU, linear between."""
    lib = _lib(hu)
    return lib.clip((hu - LEAN_FAT_HU) / (LEAN_MUSCLE_HU - LEAN_FAT_HU), 0.0, 1.0)


def mdrr_density(hu: Array, is_muscle: bool | Array) -> Array:
    """Density projected into the MDRR (g/cm3).

    Muscles: lean fraction x mass density (lean muscle mass density, paper Suppl. Fig. 2a).
    Bones: mass density. ``is_muscle`` is a bool or a boolean array broadcastable to ``hu``.
    """
    rho = mass_density(hu)
    if isinstance(is_muscle, bool):
        return lean_fraction(hu) * rho if is_muscle else rho
    return _lib(hu).where(is_muscle, lean_fraction(hu) * rho, rho)
