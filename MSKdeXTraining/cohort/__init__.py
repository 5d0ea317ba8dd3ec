"""Synthetic paired CT / X-ray cohort on real anatomy, with known ground truth.

* :mod:`.anatomy` - anatomy templates (label maps + body masks), left/right split, hip centres;
* :mod:`.patient` - a synthetic patient: deformation, muscle volume change, fat infiltration,
  CT intensities (HU);
* :mod:`.radiograph` - the patient's radiograph in another pose (Beer-Lambert, noise, scatter,
  blur, clinical processing); reusable on any CT (:func:`simulate_radiograph`);
* :mod:`.generate` - cohort orchestration (layout ``mskdex-cohort`` v1, parallel, resumable,
  deterministic): :func:`generate_cohort`.
"""

from .generate import SIZES, generate_case, generate_cohort
from .deformation import RigidBody
from .radiograph import XraySettings, simulate_radiograph

__all__ = ["SIZES", "RigidBody", "XraySettings", "generate_case", "generate_cohort",
           "simulate_radiograph"]
