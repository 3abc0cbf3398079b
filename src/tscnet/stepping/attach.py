"""Attach step policies to a model, and read its steps back.

``attach_steps(model, "tsc")`` turns every residual block ``y + F(y)`` of a supported model into
``y + Δt_d ⊙ F(y)`` in place: it registers the policy as ``model.step_policy`` and replaces one
module per branch by a step site (:mod:`tscnet.stepping.sites`), keeping every parameter name.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .branches import Branch, find_branches
from .policies import PolicySpec, StepPolicy, build_policy, parse_policy
from .sites import SITES

POLICY_ATTR = "step_policy"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def get_policy(model: nn.Module) -> Optional[StepPolicy]:
    """The step policy attached to ``model`` (unwrapping DDP / compile wrappers), or ``None``."""
    policy = getattr(unwrap_model(model), POLICY_ATTR, None)
    return policy if isinstance(policy, StepPolicy) else None


def attach_steps(model: nn.Module, steps: Union[str, PolicySpec, dict] = "tsc") -> nn.Module:
    """Insert step sites and the policy ``steps`` into ``model`` in place; returns ``model``.

    Attach after loading pretrained weights: parameter names are unchanged, the policy adds
    ``step_policy.*``. ``steps="none"`` leaves the model untouched.
    """
    if get_policy(model) is not None:
        raise ValueError("model already has steps attached; fold_steps() it or build a fresh model")
    spec = parse_policy(steps)
    branches = find_branches(model)
    policy = build_policy(spec, branches)
    if policy is None:
        return model
    for branch in branches:
        setattr(branch.block, branch.site_attr, SITES[branch.site].wrap(getattr(branch.block, branch.site_attr)))
    _bind(model, policy, spec)
    return model


def replace_steps(model: nn.Module, steps: Union[str, PolicySpec, dict]) -> nn.Module:
    """Swap the policy that produces Δt for a fresh ``steps`` policy, in place; returns ``model``.

    Every weight is kept; a model without steps gets them attached. The step sites stay (their
    kind depends on the branch, not on the policy), so ``"none"`` becomes Δt ≡ 1 (``fixed:1``).
    """
    old = get_policy(model)
    if old is None:
        return attach_steps(model, steps)
    spec = parse_policy(steps)
    _bind(model, build_policy(spec if spec.name != "none" else parse_policy("fixed:1"), old.branches), spec)
    return model


def _bind(model: nn.Module, policy: StepPolicy, spec: PolicySpec) -> None:
    """Point every branch's step site at ``policy`` and register it as ``model.step_policy``."""
    policy.to(next(iter(model.parameters())).device)
    for index, branch in enumerate(policy.branches):
        getattr(branch.block, branch.site_attr).bind(policy, index)
    policy.spec = str(spec)
    setattr(unwrap_model(model), POLICY_ATTR, policy)


def step_sizes(model: nn.Module) -> list[torch.Tensor]:
    """The current Δt of every residual block in network order (detached; ones if none attached)."""
    policy = get_policy(model)
    with torch.no_grad():
        if policy is None:
            return [torch.ones(b.channels) for b in find_branches(model)]
        return [dt.detach().clone() for dt in policy.compute()]


def evolution_time(model: nn.Module) -> float:
    """``T = Σ_d mean_c Δt_d[c]``, the ODE's evolution time (the depth D for a vanilla ResNet)."""
    return float(sum(dt.mean() for dt in step_sizes(model)))


def branches_of(model: nn.Module) -> list[Branch]:
    """The residual branches, from the attached policy when there is one."""
    policy = get_policy(model)
    return policy.branches if policy is not None else find_branches(model)
