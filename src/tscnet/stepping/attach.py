"""Attach step policies to a model, and read its steps back.

``attach_steps(model, "tsc")`` turns every residual block ``y + F(y)`` of a supported model into
``y + Δt_d ⊙ F(y)`` in place: it replaces one module per branch by a step site
(:mod:`tscnet.stepping.sites`), keeping every parameter name, and registers the policy as a child
of the first block's site (``layer1.0.bn2.step_policy`` in a ResNet-18).

Why there: a backbone is taken apart in many ways (timm ``features_only``, torchvision's
``IntermediateLayerGetter`` and FX feature extractors, a detector's ``backbone.body``), and all of
them keep the network's first blocks, call the top-level children in order, trace the forward
with ``torch.fx`` or deep-copy the model. Inside the first block's site the policy is kept by
each of them, is never called with an input (no container calls a site's children), and is part
of the module tree that FX and ``copy.deepcopy`` walk. Its parameters sit under one prefix,
:func:`policy_name` ``+ "."``, next to the vanilla model's unchanged keys.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..errors import InvalidType, InvalidValue
from .branches import Branch, find_branches
from .policies import PolicySpec, StepPolicy, build_policy, is_stock, parse_policy
from .sites import POLICY_ATTR, SITES, StepBatchNorm2d, StepSite, StepSyncBatchNorm
from .watch import watch_training

__all__ = [
    "POLICY_ATTR",
    "attach_steps",
    "branches_of",
    "convert_sync_batchnorm",
    "evolution_time",
    "get_policies",
    "get_policy",
    "policy_name",
    "replace_steps",
    "step_sizes",
    "unwrap_model",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def _check_sites(policy: StepPolicy) -> None:
    """Raise if a step site of ``policy`` was replaced behind its back (its block would lose Δt)."""
    for index, (branch, site) in enumerate(zip(policy.branches, policy.sites)):
        if branch.site_module is not cast(nn.Module, site):  # every site is a module
            raise RuntimeError(
                f"the step site of block {index} ({type(branch.block).__name__}.{branch.site_attr}) was replaced "
                f"by a {type(branch.site_module).__name__}, so its step Δt is gone; "
                "use tscnet.convert_sync_batchnorm(model) instead of nn.SyncBatchNorm.convert_sync_batchnorm"
            )


def get_policies(model: nn.Module) -> dict[str, StepPolicy]:
    """Every step policy inside ``model`` (one per :func:`attach_steps` call), by qualified name.

    Raises:
        RuntimeError: a step site was replaced behind the policy's back (e.g. by
            ``nn.SyncBatchNorm.convert_sync_batchnorm``), or ``model`` holds step sites but not
            their policy (a part cut from a stepped network without its first block).
    """
    model = unwrap_model(model)
    policies = {name: m for name, m in model.named_modules() if isinstance(m, StepPolicy)}
    for policy in policies.values():
        _check_sites(policy)
    if not policies:
        site = next((name for name, m in model.named_modules() if isinstance(m, StepSite)), None)
        if site is not None:
            raise RuntimeError(
                f"{type(model).__name__} holds the step site {site} but not its step policy, which "
                "lives in the first stepped block's site: use the whole stepped network (or a part "
                "that keeps its first block)"
            )
    return policies


def get_policy(model: nn.Module) -> StepPolicy | None:
    """The step policy attached to ``model`` (unwrapping DDP / compile wrappers), or ``None``.

    Raises:
        RuntimeError: see :func:`get_policies`.
        ValueError: ``model`` holds several policies (steps attached to several of its parts).
    """
    policies = get_policies(model)
    if len(policies) > 1:
        raise InvalidValue(
            f"{type(unwrap_model(model)).__name__} holds {len(policies)} step policies "
            f"({', '.join(policies)}): steps were attached to several parts; ask each part"
        )
    return next(iter(policies.values()), None)


def policy_name(model: nn.Module) -> str | None:
    """Qualified name of the policy module inside ``model`` (its state-dict keys start with it + ``"."``)."""
    names = list(get_policies(model))
    if len(names) > 1:
        get_policy(model)  # raises the error naming them
    return names[0] if names else None


def attach_steps(model: nn.Module, steps: str | PolicySpec | dict) -> nn.Module:
    """Insert step sites and the policy ``steps`` into ``model`` in place; returns ``model``.

    Attach after loading pretrained weights: parameter names are unchanged, the policy adds
    ``<first site>.step_policy.*`` (:func:`policy_name`). ``steps="none"`` leaves the model
    untouched. ``model`` may be a whole network, a backbone or a wrapper around one (timm
    ``features_only``, torchvision ``IntermediateLayerGetter``, a detector or its backbone).
    ``steps`` has no default: calling this function is choosing a policy, and no policy is the
    obvious one (``tscnet.create_model`` defaults to ``"none"``, the stock model).
    """
    if any(isinstance(m, StepSite) for m in unwrap_model(model).modules()):
        raise InvalidValue("model already has steps attached; fold_steps() it or build a fresh model")
    spec = parse_policy(steps)
    if is_stock(spec):  # nothing to insert, so nothing to check (Fixup nets are vanilla here)
        return model
    branches = find_branches(model)
    refused = next((b.refusal for b in branches if b.refusal), None)
    if refused:
        raise InvalidType(refused)
    policy = build_policy(spec, branches)
    if policy is None:
        return model
    for branch in branches:
        branch.set_site(SITES[branch.site].wrap(branch.site_module))
    # In the model's mode: attached to a model in eval mode, a norm-aware controller must not move
    # its power iteration on every forward (nor would BN-like state of any future policy).
    policy.train(branches[0].block.training)
    _bind(policy, spec)
    return model


def replace_steps(model: nn.Module, steps: str | PolicySpec | dict) -> nn.Module:
    """Swap the policy that produces Δt for a fresh ``steps`` policy, in place; returns ``model``.

    Every weight is kept; a model without steps gets them attached. The step sites stay (their
    kind depends on the branch, not on the policy), so ``"none"`` becomes Δt ≡ 1 (``fixed:1``).
    """
    old = get_policy(model)
    if old is None:
        return attach_steps(model, steps)
    spec = parse_policy(steps)
    policy = cast(StepPolicy, build_policy(parse_policy("fixed:1") if is_stock(spec) else spec, old.branches))
    _bind(policy, spec)  # not None: "none" was replaced by fixed:1
    return model


def _bind(policy: StepPolicy, spec: PolicySpec) -> None:
    """Point every branch's step site at ``policy``; the first site holds it as its child ``step_policy``."""
    weight = cast(torch.Tensor, policy.branches[0].last_layer.weight)
    policy.to(device=weight.device, dtype=weight.dtype)  # a model cast to half/bf16 gets a policy to match
    sites = [cast(StepSite, branch.site_module) for branch in policy.branches]  # attached: step sites
    for index, site in enumerate(sites):
        site.bind(policy, index)
    policy.__dict__["sites"] = sites
    policy.spec = str(spec)
    watch_training(policy)  # warns if its parameters get gradients but never train (optimizer built too early)


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the step sites (torch's drops them).

    Every BatchNorm becomes a SyncBatchNorm; a BN step site becomes a
    :class:`~tscnet.stepping.sites.StepSyncBatchNorm` bound to the same policy.
    """
    policy = get_policy(model)
    if policy is None:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    norm_sites = [b for b in policy.branches if isinstance(b.site_module, StepBatchNorm2d)]
    for branch in norm_sites:
        branch.set_site(cast(StepBatchNorm2d, branch.site_module).unwrap())
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    for branch in norm_sites:
        branch.set_site(StepSyncBatchNorm.wrap(cast(nn.Module, branch.site_module)))  # a SyncBatchNorm now
    _bind(policy, parse_policy(policy.spec))
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
