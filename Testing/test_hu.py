"""HU conversions: values at the section boundaries of Schneider et al. and Aubrey et al."""

import numpy as np
import pytest
import torch

from MSKdeXTraining.imaging import hu


@pytest.mark.parametrize("value, expected", [
    (-1000, 0.00121), (-98, 1.018 - 0.000893 * 98), (-98.001, 0.00121 + 0.0010297 * (1000 - 98.001)),
    (0, 1.018), (15, 1.03), (22.999, 1.03), (23, 1.003 + 0.001169 * 23), (100, 1.003 + 0.1169),
    (101, 1.017 + 0.000592 * 101), (2000, 1.017 + 0.000592 * 2000), (2001, 2.201 + 0.0005 * 1),
    (2995, 4.54), (2996, 4.54), (-2000, 0.00121), (5000, 4.54),
])
def test_schneider_mass_density_at_section_boundaries(value, expected):
    assert hu.mass_density(np.array([value], float))[0] == pytest.approx(expected, rel=1e-9)


def test_lean_fraction_and_mdrr_density():
    values = np.array([-100.0, -30.0, 0.0, 30.0, 200.0])
    np.testing.assert_allclose(hu.lean_fraction(values), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(hu.mdrr_density(values, True), hu.lean_fraction(values) * hu.mass_density(values))
    np.testing.assert_allclose(hu.mdrr_density(values, False), hu.mass_density(values))
    mixed = hu.mdrr_density(values, np.array([True, False, True, False, True]))
    assert mixed[0] == 0 and mixed[1] == pytest.approx(hu.mass_density(np.array([-30.0]))[0])


def test_attenuation_water_air_and_torch_numpy_agree():
    values = np.array([-1500.0, -1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(hu.attenuation(values), [0, 0, hu.MU_WATER_PER_CM, 2 * hu.MU_WATER_PER_CM])
    np.testing.assert_allclose(hu.mass_density(torch.tensor(values)).numpy(), hu.mass_density(values))
