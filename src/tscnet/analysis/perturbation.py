"""Measured amplification of input perturbations through the residual blocks.

For an image whose first residual block receives ``y_0`` and whose last residual block returns
``y_D = f(y_0)`` (``f`` the composition of all blocks, eval mode), the amplification of a
perturbation ``δ`` is

    a(δ) = ‖f(y_0 + δ) − f(y_0)‖ / ‖δ‖,

the quantity the stability bound (:mod:`tscnet.analysis.lipschitz`) caps at ``Π_j factor_j``. We
measure it per image (norms over that image's ``C×H×W`` features; pooling and head excluded) for

* random directions: ``δ = ε ‖y_0‖ u/‖u‖``, ``u ~ N(0, I)``, mean and max over K directions;
* the worst direction: the top right-singular vector of the Jacobian ``J = ∂f/∂y_0``, by power
  iteration ``v ← JᵀJ v / ‖JᵀJ v‖`` (``J v`` by :func:`torch.func.jvp`, ``Jᵀ u`` by
  :func:`torch.func.vjp`); ``σ_max(J) = ‖J v‖`` is the ε → 0 limit of the worst amplification,
  and ``a(ε ‖y_0‖ v)`` the finite-difference value along it.

Blocks act on each image independently in eval mode, so ``J`` is block-diagonal over the batch
and all images iterate at once. Finite differences run in float64 on a copy of the model (with
``ε = 1e-3`` they are then exact to many digits); the power iteration, which only needs a
direction, in float32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidValue
from ..stepping import branches_of
from .resteps import freeze_steps

__all__ = ["Amplification", "residual_io", "residual_map", "amplification"]


def residual_map(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(y_0) = block_{D−1}(… block_0(y_0))``: the composition of the residual blocks."""
    blocks = [b.block for b in branches_of(model)]

    def f(y: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            y = block(y)
        return y

    return f


@torch.no_grad()
def residual_io(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_0, y_D)``: the input of the first residual block and the output of the last one.

    Captured by hooks on a real forward pass, which also checks that the blocks form a chain
    (each block's input is the previous block's output), so that :func:`residual_map` is the
    network between the two points. Before pooling, and before a pre-activation net's final BN.
    """
    blocks = [b.block for b in branches_of(model)]
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:  # None: output unchanged
        ins.append(args[0])
        outs.append(out)

    hooks = [b.register_forward_hook(record) for b in blocks]
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
    for i in range(1, len(blocks)):
        if not (ins[i] is outs[i - 1] or torch.equal(ins[i], outs[i - 1])):
            raise InvalidValue(
                f"residual block {i} does not read block {i - 1}'s output: the blocks of "
                f"{type(model).__name__} are not one chain, the bound does not apply"
            )
    return ins[0], outs[-1]


@dataclass
class Amplification:
    """Per-image amplifications (1-D tensors over images) and their medians."""

    random_mean: torch.Tensor  # mean over K random directions
    random_max: torch.Tensor  # max over K random directions
    worst: torch.Tensor  # a(ε‖y_0‖ v) along the power-iteration direction v
    jacobian_norm: torch.Tensor  # σ_max(J) = ‖J v‖
    eps: float
    directions: int

    def medians(self) -> dict[str, float]:
        return {k: float(getattr(self, k).median()) for k in ("random_mean", "random_max", "worst", "jacobian_norm")}


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _unit(t: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` scaled to unit norm per sample; samples with ``‖t‖ = 0`` take ``fallback``'s direction."""
    shape = (-1, *[1] * (t.dim() - 1))
    if fallback is not None:
        t = torch.where((_norms(t) == 0).view(shape), fallback, t)
    return t / _norms(t).view(shape)


def amplification(
    model: nn.Module,
    images: torch.Tensor,
    directions: int = 8,
    eps: float = 1e-3,
    power_iters: int = 20,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    power_dtype: torch.dtype = torch.float32,
) -> Amplification:
    """Random and worst-case amplification of perturbations of ``y_0`` for each image.

    Args:
        images: a batch in the model's input format (normalised, NCHW).
        directions: K random directions per image.
        eps: perturbation size relative to ``‖y_0‖`` of each image.
        power_iters: iterations of ``v ← JᵀJ v`` (the Rayleigh quotient only grows with them).
        dtype: precision of the finite differences and of the final ``‖J v‖``.
        power_dtype: precision of the power iteration (only its direction is used: float32 is
            ~4x faster on CPU and converges to the same direction).
    """
    # Δt never depends on the data: hold it constant (no controller in the loop, any dtype).
    # Weights are constants here: with requires_grad on, every vjp result would carry a graph into
    # the next power iteration's tangent, and memory grew by ~0.8 GB per iteration (ResNet-110, 32 images).
    exact = freeze_steps(model).to(dtype).eval().requires_grad_(False)
    fast = copy.deepcopy(exact).to(power_dtype)
    device = next(exact.parameters()).device
    y0, yd = residual_io(exact, images.to(device, dtype))
    f, f_fast = residual_map(exact), residual_map(fast)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = (eps * _norms(y0)).view(-1, *[1] * (y0.dim() - 1))

    def fd(direction: torch.Tensor) -> torch.Tensor:
        delta = scale * _unit(direction.to(dtype))
        with torch.no_grad():
            return _norms(f(y0 + delta) - yd) / _norms(delta)

    randoms = torch.stack([fd(torch.randn(y0.shape, generator=gen, dtype=dtype).to(device)) for _ in range(directions)])
    y0_fast = y0.to(power_dtype)
    _, vjp = torch.func.vjp(f_fast, y0_fast)  # type: ignore[misc]  # a pair without has_aux (torch types both)
    v = _unit(torch.randn(y0.shape, generator=gen, dtype=power_dtype).to(device))
    for _ in range(power_iters):
        _, jv = torch.func.jvp(f_fast, (y0_fast,), (v,))  # type: ignore[misc]  # a pair without has_aux
        # Jᵀ J v = 0 where the map is locally constant (e.g. every last-stage ReLU dead): keep v there,
        # whose measured amplification is then 0, instead of dividing by zero.
        v = _unit(vjp(jv)[0], fallback=v)
    v = v.to(dtype)
    _, jv = torch.func.jvp(f, (y0,), (v,))  # type: ignore[misc]  # a pair without has_aux
    return Amplification(randoms.mean(0), randoms.max(0).values, fd(v), _norms(jv.detach()), eps, directions)
