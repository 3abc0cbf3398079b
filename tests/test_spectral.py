"""Spectral norms of true layer operators (tscnet.analysis.spectral) against dense matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tscnet.analysis import (
    bn_scale,
    conv_matrix,
    conv_operator,
    conv_spectral_norm,
    conv_spectral_norm_fft,
    fold_bn_into_conv,
    linear_spectral_norm,
)


def exact_norm(module: nn.Module, input_shape) -> float:
    return torch.linalg.matrix_norm(conv_matrix(module, input_shape), ord=2).item()


# (in, out, kernel, stride, padding, dilation, groups, (H, W))
CONVS = {
    "3x3_s1_p1": (3, 4, 3, 1, 1, 1, 1, (6, 6)),
    "3x3_s1_p0": (3, 5, 3, 1, 0, 1, 1, (6, 7)),
    "3x3_s2_p1_odd": (3, 4, 3, 2, 1, 1, 1, (7, 7)),
    "3x3_s2_p1_even_nonsquare": (4, 6, 3, 2, 1, 1, 1, (8, 5)),
    "3x3_s2_p0": (4, 4, 3, 2, 0, 1, 1, (8, 8)),
    "1x1_s1": (4, 6, 1, 1, 0, 1, 1, (5, 5)),
    "1x1_s2_downsample": (4, 8, 1, 2, 0, 1, 1, (6, 5)),
    "3x3_groups2": (4, 6, 3, 1, 1, 1, 2, (5, 6)),
    "3x3_s2_groups4": (4, 8, 3, 2, 1, 1, 4, (8, 6)),
    "3x3_depthwise": (6, 6, 3, 1, 1, 1, 6, (5, 5)),
    "3x3_dilation2": (4, 4, 3, 1, 2, 2, 1, (7, 9)),
    "3x3_s2_dilation2": (3, 4, 3, 2, 2, 2, 1, (9, 8)),
    "2x2_same": (4, 4, 2, 1, "same", 1, 1, (5, 5)),
}


def make_conv(spec, padding_mode: str = "zeros", seed: int = 0) -> nn.Conv2d:
    cin, cout, k, s, p, d, g, _ = spec
    torch.manual_seed(seed)
    return nn.Conv2d(
        cin, cout, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=padding_mode
    )


def input_shape(spec):
    return (spec[0], *spec[-1])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", list(CONVS))
def test_power_iteration_matches_dense_svd(name):
    spec = CONVS[name]
    conv = make_conv(spec)
    ref = exact_norm(conv, input_shape(spec))
    assert conv_spectral_norm(conv, input_shape(spec)) == pytest.approx(ref, rel=1e-3)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", list(CONVS))
def test_operator_and_adjoint_match_dense_matrix(name):
    # A must be the layer's own map (bias removed) and Aᵀ its exact transpose, shape included.
    spec = CONVS[name]
    conv = make_conv(spec).double()
    shape = input_shape(spec)
    m = conv_matrix(conv, shape)
    A, At = conv_operator(conv, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    y = A(x)
    torch.testing.assert_close(y, conv(x) - conv.bias.view(1, -1, 1, 1))
    g = torch.randn_like(y)
    back = At(g)
    assert back.shape == x.shape
    torch.testing.assert_close(back.reshape(2, -1), g.reshape(2, -1) @ m)


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_power_iteration_other_padding_modes(mode):
    conv = make_conv((3, 4, 3, 1, 1, 1, 1, None), padding_mode=mode)
    shape = (3, 5, 7)
    assert conv_spectral_norm(conv, shape) == pytest.approx(exact_norm(conv, shape), rel=1e-3)


def test_padding_mode_override_and_norm_depends_on_geometry():
    conv = make_conv(CONVS["3x3_s1_p1"])
    shape = (3, 6, 6)
    circular = conv_spectral_norm(conv, shape, padding_mode="circular")
    assert circular == pytest.approx(conv_spectral_norm_fft(conv.weight, (6, 6)), rel=1e-6)
    # Same kernel, different operator: zero padding and stride change the norm.
    assert conv_spectral_norm(conv, shape) != pytest.approx(circular, rel=1e-3)
    strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    strided.weight.data.copy_(conv.weight)
    assert conv_spectral_norm(strided, shape) < conv_spectral_norm(conv, shape)


def test_power_iteration_is_deterministic():
    conv = make_conv(CONVS["3x3_s2_groups4"])
    shape = input_shape(CONVS["3x3_s2_groups4"])
    assert conv_spectral_norm(conv, shape) == conv_spectral_norm(conv, shape)


@pytest.mark.parametrize(
    "cin,cout,k,groups,hw",
    [(3, 4, 3, 1, (5, 7)), (2, 5, 5, 1, (6, 6)), (4, 6, 3, 2, (5, 5)), (4, 4, 1, 1, (3, 4))],
)
def test_fft_norm_is_exact_for_circular_padding(cin, cout, k, groups, hw):
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, padding_mode="circular")
    ref = exact_norm(conv, (cin, *hw))
    assert conv_spectral_norm_fft(conv.weight, hw, groups=groups) == pytest.approx(ref, rel=1e-4)


def test_linear_spectral_norm():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5)
    ref = np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)[0]
    assert linear_spectral_norm(layer) == pytest.approx(ref, rel=1e-10)
    assert linear_spectral_norm(layer.weight) == pytest.approx(ref, rel=1e-10)


def random_bn(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, affine=affine)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3.0)
    if affine:
        bn.weight.data.uniform_(-2, 2)
        bn.bias.data.uniform_(-1, 1)
    return bn.eval()


@pytest.mark.parametrize("conv_bias,affine", [(False, True), (True, True), (False, False)])
def test_fold_bn_matches_conv_then_bn(conv_bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=conv_bias)
    bn = random_bn(6, affine)
    seq = nn.Sequential(conv, bn).eval()
    shape = (3, 7, 6)
    w, b = fold_bn_into_conv(conv, bn)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        folded_out = F.conv2d(x, w, b, stride=2, padding=1)
        torch.testing.assert_close(folded_out, seq(x), rtol=1e-5, atol=1e-5)
    folded = conv_spectral_norm(conv, shape, weight=w.detach())
    assert folded == pytest.approx(exact_norm(seq, shape), rel=1e-3)
    # The BN scale really changes the norm (the check above is not vacuous).
    assert folded != pytest.approx(conv_spectral_norm(conv, shape), rel=1e-2)


def test_bn_scale():
    bn = random_bn(5)
    torch.testing.assert_close(bn_scale(bn), bn.weight / torch.sqrt(bn.running_var + bn.eps))
    with pytest.raises(ValueError):
        bn_scale(nn.BatchNorm2d(5, track_running_stats=False))


def test_conv_matrix_guards_size():
    with pytest.raises(ValueError):
        conv_matrix(nn.Conv2d(64, 64, 3, padding=1), (64, 32, 32))
