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
from .sites import SITES, StepBatchNorm2d, StepSyncBatchNorm

POLICY_ATTR = "step_policy"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def get_policy(model: nn.Module) -> Optional[StepPolicy]:
    """The step policy attached to ``model`` (unwrapping DDP / compile wrappers), or ``None``.

    Raises:
        RuntimeError: a step site was replaced behind the policy's back (e.g. by
            ``nn.SyncBatchNorm.convert_sync_batchnorm``), so some blocks would silently lose Δt.
    """
    policy = getattr(unwrap_model(model), POLICY_ATTR, None)
    if not isinstance(policy, StepPolicy):
        return None
    for index, (branch, site) in enumerate(zip(policy.branches, policy.sites)):
        if getattr(branch.block, branch.site_attr) is not site:
            raise RuntimeError(
                f"the step site of block {index} ({type(branch.block).__name__}.{branch.site_attr}) was replaced "
                f"by a {type(getattr(branch.block, branch.site_attr)).__name__}, so its step Δt is gone; "
                "use tscnet.convert_sync_batchnorm(model) instead of nn.SyncBatchNorm.convert_sync_batchnorm")
    return policy


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
    weight = policy.branches[0].conv.weight
    policy.to(device=weight.device, dtype=weight.dtype)  # a model cast to half/bf16 gets a policy to match
    sites = [getattr(branch.block, branch.site_attr) for branch in policy.branches]
    for index, site in enumerate(sites):
        site.bind(policy, index)
    policy.__dict__["sites"] = sites
    policy.spec = str(spec)
    setattr(unwrap_model(model), POLICY_ATTR, policy)


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the step sites (torch's drops them).

    Every BatchNorm becomes a SyncBatchNorm; a BN step site becomes a
    :class:`~tscnet.stepping.sites.StepSyncBatchNorm` bound to the same policy.
    """
    policy = get_policy(model)
    if policy is None:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    norm_sites = [b for b in policy.branches if isinstance(getattr(b.block, b.site_attr), StepBatchNorm2d)]
    for branch in norm_sites:
        setattr(branch.block, branch.site_attr, getattr(branch.block, branch.site_attr).unwrap())
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    for branch in norm_sites:
        setattr(branch.block, branch.site_attr, StepSyncBatchNorm.wrap(getattr(branch.block, branch.site_attr)))
    _bind(model, policy, parse_policy(policy.spec))
    return model


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
