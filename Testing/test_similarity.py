"""Gradient correlation: invariances, sign, masking and gradients."""

import pytest
import torch

from MSKdeXTraining.imaging.similarity import gradient_correlation, sobel


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 1, 40, 40, generator=g), 3, 1, 1)[0, 0]


def test_gc_is_one_for_gain_and_offset_and_minus_one_for_inversion():
    a = _image()
    assert torch.isclose(gradient_correlation(a, 3 * a + 7), torch.tensor(1.0), atol=1e-5)
    assert torch.isclose(gradient_correlation(a, -a), torch.tensor(-1.0), atol=1e-5)


def test_gc_of_unrelated_images_is_small_and_of_a_flat_image_zero():
    a, b = _image(0), _image(1)
    assert abs(float(gradient_correlation(a, b))) < 0.2
    assert float(gradient_correlation(a, torch.full_like(a, 5.0))) == 0.0


def test_gc_ignores_linear_ramps_fully_and_curved_trends_partly_but_ranks_shifts():
    """A linear ramp only offsets the gradients (removed by the correlation's mean): GC 1 at
    any strength. A curved low-frequency trend of the image's contrast lowers GC a little, a
    stronger one more, yet far less than a 4-pixel shift does."""
    a = _image()
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 40), indexing="ij")
    for strength in (0.01, 1.0, 100.0):
        assert float(gradient_correlation(a, a + strength * (rows + 2 * cols))) == pytest.approx(1.0, abs=1e-5)
    curved = torch.sin(torch.pi * rows)
    mild, strong = (float(gradient_correlation(a, a + k * curved)) for k in (1.0, 10.0))
    assert 0.8 < mild < 0.95 and strong < mild - 0.1
    assert float(gradient_correlation(a, torch.roll(a, 4, dims=1))) < strong - 0.5


def test_sobel_of_a_ramp_is_constant():
    ramp = torch.arange(10.0).repeat(8, 1)  # increases along columns
    gx, gy = sobel(ramp)
    assert gx.shape == (6, 8) and torch.allclose(gx, torch.full_like(gx, 8.0)) and torch.all(gy == 0)


def test_mask_restricts_the_region():
    a, b = _image(0), _image(1)
    mixed = torch.cat([a[:, :20], b[:, 20:]], dim=1)
    mask = torch.zeros_like(a)
    mask[:, :18] = 1
    assert float(gradient_correlation(a, mixed, mask)) > 0.99
    assert float(gradient_correlation(a, mixed)) < 0.8


def test_gc_is_differentiable_and_batched():
    a = torch.stack([_image(0), _image(1)])[None]  # (1, 2, H, W)
    b = a.clone().requires_grad_(True)
    gc = gradient_correlation(a, b + 0.1 * torch.roll(b, 1, -1))
    assert gc.shape == (1, 2)
    gc.sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_gradient_is_finite_for_a_flat_prediction():
    flat = torch.zeros(1, 1, 16, 16, requires_grad=True)
    gradient_correlation(_image()[None, None][..., :16, :16], flat).sum().backward()
    assert torch.isfinite(flat.grad).all()


def test_sobel_of_a_row_ramp_has_a_positive_y_gradient():
    """sobel's second output is d/dy along rows: +8 per unit step for an image increasing down the rows."""
    ramp = torch.arange(8.0)[:, None].repeat(1, 10)  # increases along rows
    gx, gy = sobel(ramp)
    assert torch.allclose(gy, torch.full_like(gy, 8.0)) and torch.all(gx == 0)


def test_gc_within_an_empty_mask_is_zero():
    """A mask with no pixel gives GC 0, not NaN (nothing to correlate)."""
    assert float(gradient_correlation(_image(0), _image(1), torch.zeros(40, 40))) == 0.0
