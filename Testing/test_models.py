"""Networks: output shapes, non-negativity, any image size, per-sample independence."""

import pytest
import torch
import torch.nn.functional as F

from MSKdeXTraining.models import Generator, HRNetSpec, PatchGAN, ResnetTranslator
from MSKdeXTraining.models.layers import bilinear_by_matrices, resize_bilinear
from MSKdeXTraining.training.trainer import deterministic_kernels


@pytest.mark.parametrize("spec", [
    HRNetSpec(width=4, branches=1, blocks=1, stem_stride=1),
    HRNetSpec(width=4, branches=2, blocks=1, stem_stride=2),
    HRNetSpec(width=4, branches=4, modules=2, blocks=1, stem_stride=4, head_width=12),
])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
def test_generator_shape_and_non_negative(spec, size):
    torch.manual_seed(0)
    g = Generator(5, spec)
    x = torch.randn(2, 1, *size) * 3
    y = g(x)
    assert y.shape == (2, 3, 5, *size)
    assert torch.all(y >= 0) and torch.isfinite(y).all()
    assert g.pooled_features(x).shape == (2, spec.head_width or sum(spec.widths))


def test_generator_starts_near_scale_constant_and_is_per_sample():
    torch.manual_seed(0)
    g = Generator(3, HRNetSpec(width=8, branches=3, blocks=1, stem_stride=2))
    x = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        y = g(x)
    assert 0.8 < float(y.mean()) < 1.2  # softplus bias = 1 network unit = the channel's mean
    assert float(y.std()) > 0  # not flat: GC needs gradients
    with torch.no_grad():
        torch.testing.assert_close(g(x[1:2])[0], y[1], rtol=1e-5, atol=1e-6)  # GroupNorm: no batch coupling


def test_hrnet_fuses_all_branches():
    """Perturbing the lowest-resolution branch of the last stage (before its fusion) changes
    the highest-resolution branch's part of the head input, and so G's output; so does
    perturbing any other branch."""
    torch.manual_seed(0)
    g = Generator(2, HRNetSpec(width=4, branches=3, blocks=1, stem_stride=2)).eval()
    module = g.net.stages[2][0]
    assert len(g.net.stages) == 3 and len(module.fuse.paths) == 3
    assert g.net.head[0].in_channels == 4 + 8 + 16
    head_input = []
    g.net.head.register_forward_pre_hook(lambda m, args: head_input.append(args[0]))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        y = g(x)
        for k, branch in reversed(list(enumerate(module.branches))):
            hook = branch.register_forward_hook(lambda m, args, out: out + torch.randn_like(out))
            changed = (g(x) - y).abs().amax()
            hook.remove()
            assert changed > 1e-4, k
        assert (head_input[1] - head_input[0])[:, :4].abs().amax() > 1e-3  # lowest into the highest


def test_translator_and_patchgan_shapes():
    f = ResnetTranslator(27, 1, width=8, n_down=2, n_blocks=2)
    x = torch.rand(2, 27, 33, 50)
    y = f(x)
    assert y.shape == (2, 1, 33, 50) and torch.all((y >= 0) & (y <= 1))
    d = PatchGAN(27, width=8, n_layers=3, scales=2)
    out = d(torch.rand(2, 27, 64, 64))
    assert len(out) == 2 and out[0].shape == (2, 1, 6, 6) and out[1].shape == (2, 1, 2, 2)


@pytest.mark.parametrize("kwargs", [dict(branches=5), dict(stem_stride=3), dict(width=0)])
def test_hrnet_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="HRNet"):
        HRNetSpec(**kwargs)


def test_hrnet_fusion_mixes_the_lowest_resolution_into_the_highest():
    """Changing only
    the lowest-resolution branch changes the highest-resolution output of the fusion."""
    from MSKdeXTraining.models import Generator, HRNetSpec

    torch.manual_seed(0)
    g = Generator(2, HRNetSpec(width=4, branches=3, blocks=1, stem_stride=2)).eval()
    fuse = g.net.stages[2][0].fuse
    xs = [torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    with torch.no_grad():
        a = fuse(xs)[0]
        b = fuse(xs[:2] + [xs[2] + torch.randn_like(xs[2])])[0]
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("size_in, size_out", [((8, 8), (16, 16)), ((4, 6), (16, 24)), ((5, 9), (9, 17)),
                                               ((19, 37), (37, 74)), ((16, 12), (7, 5)), ((1, 3), (4, 4)),
                                               ((6, 6), (6, 6))])
def test_bilinear_by_matrices_is_pytorchs_bilinear_resize_and_its_gradient(size_in, size_out):
    """Up (2x, 4x, odd sizes), down, from one row, identity: values and gradients as PyTorch's kernel."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, *size_out, dtype=torch.float64)
    ours = bilinear_by_matrices(x, size_out)
    (grad,) = torch.autograd.grad((ours * weights).sum(), x)
    native = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    (native_grad,) = torch.autograd.grad((native * weights).sum(), x)
    torch.testing.assert_close(ours, native, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, native_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("deterministic", [False, True])
def test_resize_bilinear_is_pytorchs_kernel_on_the_cpu(deterministic):
    """Deterministic algorithms or not, the CPU keeps PyTorch's kernel: CPU runs are unchanged bit for bit."""
    x = torch.randn(1, 4, 9, 13, requires_grad=True)
    with deterministic_kernels(torch.device("cuda" if deterministic else "cpu")):  # a flag: no GPU needed
        assert torch.are_deterministic_algorithms_enabled() == deterministic
        y = resize_bilinear(x, (18, 26))
    assert torch.equal(y, F.interpolate(x, size=(18, 26), mode="bilinear", align_corners=False))
    assert type(y.grad_fn).__name__.startswith("UpsampleBilinear2D")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_resize_bilinear_takes_the_matrices_on_cuda_under_deterministic_algorithms():
    x = torch.randn(1, 4, 9, 13, device="cuda", requires_grad=True)
    with deterministic_kernels(x.device):
        y = resize_bilinear(x, (18, 26))
    assert not type(y.grad_fn).__name__.startswith("Upsample")
    torch.testing.assert_close(y, F.interpolate(x, size=(18, 26), mode="bilinear", align_corners=False),
                               rtol=0, atol=1e-5)
