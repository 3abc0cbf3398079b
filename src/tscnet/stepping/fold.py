"""Fold learned steps into the weights: the deployed model *is* the vanilla architecture.

For each branch with step Δt (per output channel c):

* last BN (post-activation): ``γ ← γ·Δt``, ``β ← β·Δt``, since ``Δt ⊙ BN_{γ,β}(x) = BN_{γΔt,βΔt}(x)``;
* last conv (pre-activation): ``W[c] ← Δt_c·W[c]``, ``b ← Δt·b``;
* a gate after the BN (squeeze-and-excitation): the gate must see what it saw before, so the
  first layer that reads the pooled input gets ``A[:, c] ← A[:, c] / Δt_c``:
  ``A·pool(Δt ⊙ x) / Δt = A·pool(x)`` for average pooling (and max pooling when Δt > 0).

Gates that mix channels before their first linear map (ECA's 1-D conv, ...) cannot be folded
exactly; folding them raises instead of returning a silently different model.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..registry import Registry, qualname
from .attach import POLICY_ATTR, get_policy, unwrap_model
from .branches import Branch

GateFolder = Callable[[nn.Module, torch.Tensor], None]
_GATE_FOLDERS: Registry[GateFolder] = Registry("gate folder")
register_gate = _GATE_FOLDERS.register  # how to fold Δt through a gate class ("module.Class")


def _divide_input_columns(layer: nn.Module, dt: torch.Tensor, gate: nn.Module) -> None:
    if getattr(gate, "add_maxpool", False) and bool((dt <= 0).any()):
        raise ValueError(f"cannot fold non-positive steps through the max-pooled gate {qualname(gate)}")
    # Where Δt_c = 0 the channel contributes nothing either way: keep its column as it is.
    scale = torch.where(dt == 0, torch.ones_like(dt), dt)
    shape = (1, -1) + (1,) * (layer.weight.dim() - 2)
    layer.weight.div_(scale.view(shape))


@register_gate("timm.layers.squeeze_excite.SEModule")
def _fold_timm_se(gate: nn.Module, dt: torch.Tensor) -> None:
    _divide_input_columns(gate.fc1, dt, gate)


@register_gate("timm.layers.squeeze_excite.EffectiveSEModule")
def _fold_timm_ese(gate: nn.Module, dt: torch.Tensor) -> None:
    _divide_input_columns(gate.fc, dt, gate)


def _fold_branch(branch: Branch, dt: torch.Tensor) -> None:
    target = branch.norm if branch.norm is not None else branch.conv
    shape = (-1,) + (1,) * (target.weight.dim() - 1)
    target.weight.mul_(dt.view(shape))
    if target.bias is not None:
        target.bias.mul_(dt)
    gate = branch.se
    if gate is not None:
        folder = _GATE_FOLDERS.get(qualname(gate))
        if folder is None:
            raise ValueError(
                f"cannot fold steps exactly through the gate {qualname(gate)}: it is not known to act "
                f"per channel on pooled inputs (foldable gates: {', '.join(_GATE_FOLDERS.names())}); "
                "register one with tscnet.stepping.fold.register_gate"
            )
        folder(gate, dt)


def fold_steps(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the steps multiplied into existing weights and no step modules.

    The result has exactly the parameters and state-dict keys of the vanilla model and loads into
    it with ``strict=True``; in eval mode it computes the same function as ``model``.
    """
    folded = copy.deepcopy(unwrap_model(model))
    policy = get_policy(folded)
    if policy is None:
        return folded
    with torch.no_grad():
        steps = policy.compute()
        for branch, dt in zip(policy.branches, steps):
            site = getattr(branch.block, branch.site_attr)
            setattr(branch.block, branch.site_attr, site.unwrap())
            _fold_branch(branch, dt.detach().to(branch.conv.weight.dtype))
    delattr(folded, POLICY_ATTR)
    return folded
