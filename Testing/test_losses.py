"""Each loss of the paper (Eq. 1-5, supplement Eq. 1-2) against hand-computed values."""

import math

import pytest
import torch

from MSKdeXTraining import losses


def ramp(h=6, w=7, gain=1.0, offset=0.0):
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    return gain * (r ** 2 + 0.7 * c ** 2 + r * c) + offset  # both gradients vary


def test_owis_hand_computed():
    # B=1, 3 types, N=2 objects, 2x2 pixels
    pred = torch.zeros(1, 3, 2, 2, 2)
    true = torch.zeros(1, 3, 2, 2, 2)
    pred[0, 0, 0] = 1.0      # S = 4, true 0 -> |4|
    true[0, 0, 1] = 0.5      # S = 2 -> |0 - 2|
    pred[0, 1, 0, 0, 0] = 3.0  # S = 3 vs true S = 1 -> 2
    true[0, 1, 0, 1, 1] = 1.0
    pred[0, 2, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # paired in sums only:
    true[0, 2, 1] = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # other pixel, same sum -> 0
    nhw = 2 * 2 * 2
    torch.testing.assert_close(losses.owis_terms(pred, true), torch.tensor([6 / nhw, 2 / nhw, 0.0]))
    assert float(losses.owis_terms(pred, true).sum()) == pytest.approx(8 / nhw)


def test_owis_is_batch_mean():
    pred = torch.zeros(2, 3, 1, 2, 2)
    pred[1] = 1.0  # second sample: S = 4 per type
    assert losses.owis_terms(pred, torch.zeros_like(pred)).tolist() == pytest.approx([2.0 / 4] * 3)


def test_gc_beta_value_and_stop_gradient():
    wv = ramp()
    pred = torch.stack([torch.stack([wv, ramp(gain=-1)]),
                        torch.stack([2 * wv + 1, ramp(gain=-3)]),
                        torch.stack([0.5 * wv, ramp(gain=-0.1, offset=4)])])[None]  # (1, 3, 2, H, W)
    pred.requires_grad_(True)
    loss = losses.gc_beta_loss(pred)
    # every VDRR/MDRR is an affine (positive gain) copy of its WVDRR: GC = 1 -> -(1/N) * 2N = -2
    assert float(loss.detach()) == pytest.approx(-2.0, abs=1e-5)
    perturbed = pred.detach().clone()
    perturbed[0, 1, 0] += torch.rand(6, 7)
    perturbed.requires_grad_(True)
    losses.gc_beta_loss(perturbed).backward()
    assert torch.count_nonzero(perturbed.grad[:, 0]) == 0  # st(.) on the WVDRR side
    assert torch.count_nonzero(perturbed.grad[:, 1, 0]) > 0


def test_gc_alpha_sums_physical_wvdrr():
    x_img = ramp()
    x = (x_img / x_img.max())[None, None]  # (1, 1, H, W)
    a, b = ramp(), torch.arange(7.0).expand(6, 7) ** 3
    scale = torch.tensor([[2.0, 5.0], [1.0, 1.0], [1.0, 1.0]])
    pred = torch.zeros(1, 3, 2, 6, 7)
    # physical WV: object 0 = 2 * (x_img / 2) = x_img, object 1 = 5 * 0 -> V = x_img: GC = 1
    pred[0, 0, 0] = a / 2
    assert float(losses.gc_alpha_loss(x, pred, scale)) == pytest.approx(-1.0, abs=1e-5)
    # with a second object the virtual radiograph is the scale-weighted sum
    pred[0, 0, 1] = b / 5
    v = a + b
    expected = -float(losses.gradient_correlation(x[0, 0], v))
    assert float(losses.gc_alpha_loss(x, pred, scale)) == pytest.approx(expected, abs=1e-6)
    assert expected > -0.999


def test_bone_loss_hand_computed():
    a = torch.stack([ramp(), ramp(gain=2.0)])[None, None].repeat(1, 3, 1, 1, 1)  # (1, 3, Nb=2, H, W)
    pred = a + 0.1  # L1 = 0.1, GC = 1 for every bone and type
    terms = losses.bone_terms(pred, a, lambda_l1=100.0)
    torch.testing.assert_close(terms, torch.full((3,), 100 * 0.1 - 1.0), rtol=1e-5, atol=1e-4)
    assert float(losses.bone_terms(pred, a, 100.0).sum()) == pytest.approx(3 * (10 - 1), rel=1e-5)
    flipped = a.flip(-1)  # different structure: GC < 1, L1 > 0
    assert float(losses.bone_terms(flipped, a, 0.0).sum()) > -3 + 1e-3
    # a bone whose registration failed contributes nothing; the mean still counts it
    valid = torch.tensor([[True, False]])
    torch.testing.assert_close(losses.bone_terms(pred, a, 100.0, valid), terms / 2)
    wrong = a.clone()
    wrong[:, :, 1] = wrong[:, :, 1].flip(-1)  # the failed bone's DRR is elsewhere: ignored
    torch.testing.assert_close(losses.bone_terms(pred, wrong, 100.0, valid), terms / 2)


def test_gan_losses():
    zeros = [torch.zeros(2, 1, 3, 3)]
    assert float(losses.gan_loss(zeros, True, "lsgan")) == pytest.approx(1.0)
    assert float(losses.gan_loss(zeros, False, "lsgan")) == pytest.approx(0.0)
    assert float(losses.gan_loss(zeros, True, "bce")) == pytest.approx(math.log(2))
    two = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 3.0)]  # mean over scales
    assert float(losses.gan_loss(two, False, "lsgan")) == pytest.approx((1 + 9) / 2)
    with pytest.raises(ValueError, match="gan mode"):
        losses.gan_loss(zeros, True, "wgan")


def test_cycle_loss():
    x, d = torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2, 2)
    assert float(losses.cycle_loss(x, x + 0.5, d, d - 2)) == pytest.approx(2.5)


def test_gc_beta_counts_the_mdrr_channel():
    """Eq. 2 correlates the WVDRR with the VDRR (GC 1 here) and with the MDRR (GC -1): they cancel."""
    wv = ramp()
    pred = torch.stack([wv, 2 * wv + 1, -wv])[None, :, None]  # (1, 3, 1, H, W)
    assert float(losses.gc_beta_loss(pred)) == pytest.approx(0.0, abs=1e-4)


def test_bone_validity_mask_is_per_sample():
    """``valid`` (B, N_b) masks each sample's own bones: with every sample and bone off by its
    own constant, the loss is the mean of the valid ones' L1 terms (GC 1 each: a shift keeps it)."""
    a = torch.stack([ramp(), ramp(gain=2.0)])[None, None].repeat(2, 3, 1, 1, 1)  # (B=2, 3, Nb=2, H, W)
    off = torch.tensor([[0.1, 0.2], [0.3, 0.4]])  # sample x bone
    pred = a + off[:, None, :, None, None]
    valid = torch.tensor([[True, True], [False, True]])  # not its own transpose
    expected = (100.0 * (0.1 + 0.2 + 0.4) - 3.0) / 4  # the valid (sample, bone)s' terms, mean over B and N_b
    torch.testing.assert_close(losses.bone_terms(pred, a, 100.0, valid), torch.full((3,), expected))


def test_virtual_xray_sums_the_objects():
    """V(.) is the sum over objects (GC alone cannot tell a sum from a mean)."""
    wv = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    torch.testing.assert_close(losses.virtual_xray(wv), wv[:, 0] + wv[:, 1] + wv[:, 2])
