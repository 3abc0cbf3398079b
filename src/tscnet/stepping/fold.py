"""Fold learned steps into the weights: the deployed model *is* the vanilla architecture.

For each branch with step Δt (per output channel c):

* last BN (post-activation): ``γ ← γ·Δt``, ``β ← β·Δt``, since ``Δt ⊙ BN_{γ,β}(x) = BN_{γΔt,βΔt}(x)``;
* last conv (pre-activation): ``W[c] ← Δt_c·W[c]``, ``b ← Δt·b``;
* a gate after the BN (squeeze-and-excitation): the gate must see what it saw before, so the
  first layer that reads the pooled input gets ``A[:, c] ← A[:, c] / Δt_c``:
  ``A·pool(Δt ⊙ x) / Δt = A·pool(x)`` for average pooling (and max pooling when Δt > 0); a
  Δt_c = 0 there cannot be folded (the gate still reads channel c) and raises.

Gates that mix channels before their first linear map (ECA's 1-D conv, ...) cannot be folded
exactly; folding them raises instead of returning a silently different model.

:func:`unfold_steps` is the inverse: it rebuilds a stepped model from folded weights and the steps
(a run's ``model.safetensors`` and ``steps.json``) by folding with 1/Δt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from ..errors import InvalidValue
from ..registry import Registry, qualname
from .attach import attach_steps, get_policies, get_policy, unwrap_model
from .branches import Branch
from .policies import PolicySpec
from .sites import StepSite

#: ``fold(gate, dt)``: folds the steps ``dt`` through a gate module, in place.
GateFolder = Callable[[nn.Module, torch.Tensor], None]
#: How to fold Δt through each gate class: ``module.Class`` → a :data:`~tscnet.stepping.fold.GateFolder`.
#: A gate is not a block: it sits inside a branch (``Branch.se_attr``), so gates have their own registry.
GATE_FOLDERS: Registry[GateFolder] = Registry("gate folder")
#: Decorator: ``@register_gate("module.Class")`` registers ``fold(gate, dt)``, which folds Δt through a
#: gate of that class (a :data:`GateFolder`); ``GATE_FOLDERS.register``.
register_gate = GATE_FOLDERS.register


def _divide_input_columns(layer: nn.Module, dt: torch.Tensor, gate: nn.Module) -> None:
    if getattr(gate, "add_maxpool", False) and bool((dt <= 0).any()):
        raise InvalidValue(f"cannot fold non-positive steps through the max-pooled gate {qualname(gate)}")
    if bool((dt == 0).any()):  # the gate reads BN_c(x), which the folded BN (γ_c = β_c = 0) no longer gives
        raise InvalidValue(
            f"cannot fold Δt = 0 exactly through the gate {qualname(gate)}: it reads channels "
            f"{(dt == 0).nonzero().flatten().tolist()[:8]} before the step, and the folded block zeroes them"
        )
    weight = cast(torch.Tensor, layer.weight)
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    weight.div_(dt.view(shape))


@register_gate("timm.layers.squeeze_excite.SEModule")
def _fold_timm_se(gate: nn.Module, dt: torch.Tensor) -> None:
    _divide_input_columns(cast(nn.Module, gate.fc1), dt, gate)


@register_gate("timm.layers.squeeze_excite.EffectiveSEModule")
def _fold_timm_ese(gate: nn.Module, dt: torch.Tensor) -> None:
    _divide_input_columns(cast(nn.Module, gate.fc), dt, gate)


def fold_targets(branch: Branch) -> list[torch.Tensor]:
    """The tensors whose first dimension is the branch's output channel and that Δt multiplies:
    the scale that ends it (LayerScale γ), else its last BN's γ and β, else its last layer's
    weight rows (filters) and bias."""
    if branch.scale is not None:
        return [branch.scale]
    target = branch.norm if branch.norm is not None else branch.last_layer
    return cast(list[torch.Tensor], [t for t in (target.weight, target.bias) if t is not None])


def _fold_branch(branch: Branch, dt: torch.Tensor) -> None:
    for target in fold_targets(branch):
        target.mul_(dt.view((-1,) + (1,) * (target.dim() - 1)))
    gate = branch.se
    if gate is not None:
        folder = GATE_FOLDERS.get(qualname(gate))
        if folder is None:
            raise InvalidValue(
                f"cannot fold steps exactly through the gate {qualname(gate)}: it is not known to act "
                f"per channel on pooled inputs (foldable gates: {', '.join(GATE_FOLDERS.names())}); "
                "register one with tscnet.stepping.fold.register_gate"
            )
        folder(gate, dt)


def fold_steps(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the steps multiplied into existing weights and no step modules.

    The result has exactly the parameters and state-dict keys of the vanilla model and loads into
    it with ``strict=True``; in eval mode it computes the same function as ``model``.
    """
    folded = copy.deepcopy(unwrap_model(model))
    with torch.no_grad():
        for policy in get_policies(folded).values():  # one per part steps were attached to
            steps = policy.compute()
            for branch, dt in zip(policy.branches, steps):
                branch.set_site(cast(StepSite, branch.site_module).unwrap())  # the first site takes the policy with it
                _fold_branch(branch, dt.detach().to(cast(torch.Tensor, branch.last_layer.weight).dtype))
    return folded


def unfold_steps(model: nn.Module, steps: str | PolicySpec | dict) -> nn.Module:
    """Attach the constant ``steps`` to ``model``, which holds folded weights, and divide them out; in place.

    The inverse of :func:`fold_steps` for each branch with step Δt: ``γ ← γ/Δt``, ``β ← β/Δt``
    (last BN), ``W[c] ← W[c]/Δt_c`` (last conv of a pre-activation block), gate input columns
    ``A[:, c] ← A[:, c]·Δt_c``; so ``fold_steps(unfold_steps(m, s))`` has ``m``'s weights up to
    rounding and the model computes the same function. ``steps`` must not depend on the weights
    (``profile:RUN`` with a run's final steps, ``fixed:V``, ...): a controller would compute other
    steps from the changed weights. Where Δt_c = 0 the folded model no longer holds the channel's
    F_c (it was multiplied by 0); the folded values (zero) are kept, which computes the same
    Δt_c ⊙ F_c = 0.
    """
    attach_steps(model, steps)
    policy = get_policy(model)
    if policy is None:
        return model
    with torch.no_grad():
        for branch, dt in zip(policy.branches, policy.compute()):
            dt = dt.detach().to(cast(torch.Tensor, branch.last_layer.weight).dtype)
            _fold_branch(branch, torch.where(dt == 0, torch.ones_like(dt), dt.reciprocal()))
    return model
