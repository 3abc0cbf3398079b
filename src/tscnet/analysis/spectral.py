"""Spectral norms (Lipschitz constants) of the linear operators inside residual branches.

The stability bound of docs/design.md (section 2), ``‖y_D^ε − y_D‖ ≤ ε Π_j (1 + ‖W_j‖₂ Δt_j)``, needs ``‖W‖₂`` of
the operator a layer actually applies: a convolution acts on a whole ``(C, H, W)`` feature map,
with its stride, padding, dilation and groups, and its norm is not the norm of the reshaped
kernel. Bias (and any other affine offset) is ignored: it does not change a Lipschitz constant.

* :func:`conv_spectral_norm` — power iteration on ``AᵀA`` with ``A`` the convolution and ``Aᵀ``
  its adjoint (``conv_transpose2d``); any padding size or mode.
* :func:`conv_spectral_norm_fft` — exact for circular padding with stride 1 (Sedghi et al. 2019).
* :func:`fold_bn_into_conv` — conv followed by an eval-mode BN is one conv; take its norm.
* :func:`conv_matrix` — the dense matrix of a small layer, for validation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidValue

__all__ = [
    "conv_operator",
    "conv_spectral_norm",
    "conv_spectral_norm_fft",
    "linear_spectral_norm",
    "bn_scale",
    "fold_bn_into_conv",
    "conv_matrix",
]

Operator = Callable[[torch.Tensor], torch.Tensor]


def _pad_adjoint(pads: Sequence[int], mode: str, chw: tuple[int, int, int]) -> Operator:
    """Adjoint of ``x ↦ F.pad(x, pads, mode)`` on inputs of shape ``(N, *chw)``.

    Zero padding's adjoint is a crop; for circular/reflect/replicate it also folds the border back
    onto the interior, which we get as the vector-Jacobian product of the (linear) pad.
    """
    left, right, top, bottom = pads
    _, h, w = chw
    if mode == "constant":
        return lambda g: g[..., top : top + h, left : left + w]

    def adjoint(g: torch.Tensor) -> torch.Tensor:
        # enable_grad: the adjoint must work inside the caller's no_grad (the power iteration).
        with torch.enable_grad():
            x = torch.zeros((g.shape[0], *chw), dtype=g.dtype, device=g.device, requires_grad=True)
            (gx,) = torch.autograd.grad(F.pad(x, list(pads), mode=mode), x, g)
        return gx

    return adjoint


def conv_operator(
    conv: nn.Conv2d,
    input_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    padding_mode: str | None = None,
) -> tuple[Operator, Operator]:
    """``(A, Aᵀ)``: the bias-free convolution on ``(N, C, H, W)`` inputs and its adjoint.

    ``A x = conv2d(pad(x), W)`` with the layer's stride, dilation and groups, and
    ``Aᵀ y = pad*(conv_transpose2d(y, W))`` with ``output_padding`` chosen so that the transpose
    returns exactly the padded input size (a strided conv drops trailing rows that ``Aᵀ`` must
    give back as zeros). ``weight`` overrides ``conv.weight`` (e.g. a BN-folded weight);
    ``padding_mode`` overrides ``conv.padding_mode``.
    """
    c, h, w = input_shape
    if c != conv.in_channels:
        raise ValueError(f"input has {c} channels, the conv expects {conv.in_channels}")
    weight = conv.weight if weight is None else weight
    mode = conv.padding_mode if padding_mode is None else padding_mode
    mode = "constant" if mode == "zeros" else mode
    # Explicit (left, right, top, bottom) pads; nn.Conv2d keeps them for every padding spec,
    # including asymmetric "same" padding of even kernels.
    pads = tuple(conv._reversed_padding_repeated_twice)
    hp, wp = h + pads[2] + pads[3], w + pads[0] + pads[1]
    kwargs: dict[str, Any] = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    out_hw = [
        (n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip((hp, wp), conv.kernel_size, conv.stride, conv.dilation)
    ]
    if min(out_hw) < 1:
        raise InvalidValue(f"input {tuple(input_shape)} is smaller than the conv's receptive field")
    output_padding = [
        n - ((o - 1) * s + d * (k - 1) + 1)
        for n, o, k, s, d in zip((hp, wp), out_hw, conv.kernel_size, conv.stride, conv.dilation)
    ]
    pad_t = _pad_adjoint(pads, mode, (c, h, w))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, list(pads), mode=mode), weight.to(x.dtype), **kwargs)

    def adjoint(y: torch.Tensor) -> torch.Tensor:
        g = F.conv_transpose2d(y, weight.to(y.dtype), output_padding=output_padding, **kwargs)
        return pad_t(g)

    return forward, adjoint


@torch.no_grad()
def conv_spectral_norm(
    conv: nn.Conv2d,
    input_shape: Sequence[int],
    n_iter: int = 1000,
    tol: float = 1e-8,
    padding_mode: str | None = None,
    weight: torch.Tensor | None = None,
    block: int = 8,
    seed: int = 0,
) -> float:
    """``‖A‖₂ = σ_max(A)`` of the convolution on inputs of shape ``(C, H, W)``, by power iteration.

    Block power iteration on ``AᵀA`` with Rayleigh–Ritz: orthonormalise the ``block`` vectors
    ``V_k`` to ``Q_k``, take the SVD ``A Q_k = P S Lᵀ`` (``σ_k = S_max``), rotate ``Q_k`` by ``P``
    and set ``V_{k+1} = AᵀA Q_k P``. Stops when ``|σ_k − σ_{k−1}| ≤ tol·σ_k`` or after ``n_iter``
    iterations. ``block = 1`` is the classical power iteration; a block converges like
    ``(σ_{block+1}/σ_1)^{2k}`` instead of ``(σ_2/σ_1)^{2k}``, which matters because conv operators
    have clustered top singular values. Seeded Gaussian start, float64. ``σ_k ≤ σ_max`` always,
    so a truncated run returns a lower bound. Bias is ignored.

    Args:
        input_shape: ``(C, H, W)`` of one input (the norm depends on ``H × W`` through the border).
        padding_mode: override of ``conv.padding_mode`` (``"zeros"``, ``"circular"``, ...).
        weight: override of ``conv.weight``, e.g. the first output of :func:`fold_bn_into_conv`.
    """
    A, At = conv_operator(conv, input_shape, weight, padding_mode)
    n = 1
    for d in input_shape:
        n *= d
    b = max(1, min(block, n))
    device = (conv.weight if weight is None else weight).device
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((b, n), generator=gen, dtype=torch.float64).to(device)
    sigma = 0.0
    for _ in range(n_iter):
        q = torch.linalg.qr(v.T).Q.T  # (b, n), orthonormal rows
        out = A(q.view(b, *input_shape))
        u = out.reshape(b, -1)  # rows A q_i
        p, s, _ = torch.linalg.svd(u, full_matrices=False)  # u = P S Lᵀ
        sigma_prev, sigma = sigma, s[0].item()
        if sigma == 0.0 or abs(sigma - sigma_prev) <= tol * sigma:
            break
        # Rows of Pᵀu are A applied to the Ritz vectors Pᵀq; map back with Aᵀ.
        v = At((p.T @ u).view_as(out)).reshape(b, -1)
    return sigma


@torch.no_grad()
def conv_spectral_norm_fft(weight: torch.Tensor, hw: tuple[int, int], groups: int = 1) -> float:
    """Exact ``‖A‖₂`` of the **circular** (periodic) stride-1 convolution on ``H × W`` maps.

    A periodic convolution is block-diagonalised by the 2-D DFT, so its singular values are those
    of the ``C_out × C_in`` matrices ``K̂[:, :, u, v] = FFT2(K zero-padded to H×W)[u, v]``, and
    ``‖A‖₂ = max_{u,v} σ_max(K̂[:, :, u, v])`` (Sedghi, Gupta & Long, ICLR 2019). Spatial shifts
    (the padding offset) and flipping (correlation vs. convolution) only change phases per
    frequency, not singular values. With ``groups > 1`` the operator is block-diagonal over groups
    and the norm is the largest group's norm. Equals ``conv_spectral_norm`` of
    ``nn.Conv2d(..., padding=k // 2, padding_mode="circular")`` for odd ``k``.
    """
    h, w = hw
    kh, kw = weight.shape[-2:]
    if kh > h or kw > w:
        raise InvalidValue(f"kernel {kh}x{kw} is larger than the {h}x{w} input")
    per_group = weight.detach().to(torch.float64).chunk(groups, dim=0)
    norms = []
    for k in per_group:
        k_hat = torch.fft.fft2(k, s=(h, w))  # (C_out/g, C_in/g, H, W), complex
        norms.append(torch.linalg.matrix_norm(k_hat.permute(2, 3, 0, 1), ord=2).max())
    return torch.stack(norms).max().item()


def linear_spectral_norm(layer: nn.Linear | torch.Tensor) -> float:
    """Exact ``‖W‖₂ = σ_max(W)`` of an ``nn.Linear`` (or a weight matrix), bias ignored."""
    weight = layer.weight if isinstance(layer, nn.Linear) else layer
    return torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2).item()


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Per-channel scale of an eval-mode BatchNorm: ``s_c = γ_c / sqrt(running_var_c + eps)``.

    Eval-mode BN is the affine map ``x ↦ s ⊙ (x − μ) + β``; ``γ = 1, β = 0`` without ``affine``.
    """
    if bn.running_var is None:
        raise InvalidValue("BatchNorm without running stats is not an affine map in eval mode")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.affine else scale


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of the single conv equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``W'[o] = s_o W[o]`` and ``b'_o = s_o (b_o − μ_o) + β_o`` with ``s = bn_scale(bn)``, ``b = 0``
    for a bias-free conv. The result is differentiable in the layers' parameters.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BN has {bn.num_features} channels, the conv outputs {conv.out_channels}")
    s = bn_scale(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(s)
    shift = bn.bias if bn.affine else torch.zeros_like(s)
    mean = cast(torch.Tensor, bn.running_mean)  # eval mode: the running statistics
    return conv.weight * s.view(-1, 1, 1, 1), s * (bias - mean) + shift


@torch.no_grad()
def conv_matrix(module: nn.Module, input_shape: Sequence[int], max_size: int = 8192) -> torch.Tensor:
    """Dense float64 matrix ``M`` of the linear part of an affine ``module`` on ``(C, H, W)``.

    Column ``i`` is ``module(e_i) − module(0)`` (removing bias and BN shifts), so
    ``module(x).flatten() = M x.flatten() + module(0).flatten()``. Runs the module's own forward
    (on a float64 copy, in eval mode), hence any conv geometry, padding mode or a conv→BN stack.
    Meant for small layers: ``C·H·W`` must not exceed ``max_size``.
    """
    n = 1
    for d in input_shape:
        n *= d
    if n > max_size:
        raise InvalidValue(f"input size {n} > max_size={max_size}: too large for a dense matrix")
    m = copy.deepcopy(module).to(torch.float64).eval()
    basis = torch.eye(n, dtype=torch.float64).view(n, *input_shape)
    out = m(basis) - m(torch.zeros_like(basis[:1]))
    return out.reshape(n, -1).T
