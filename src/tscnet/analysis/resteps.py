"""Copies of a model with its step sizes replaced, for what-if studies.

``with_steps(model, "fixed:0.1")`` keeps every weight and swaps the policy that produces Δt;
``with_steps(model, tscnet.step_sizes(model))`` freezes the current steps as constants (exactly the
same function: the controller never sees the data, so its Δt is a constant per weight state).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ..stepping import PolicySpec, get_policy, parse_policy, replace_steps, step_sizes
from ..stepping.attach import unwrap_model
from ..stepping.policies import ChannelSteps

__all__ = ["with_steps", "freeze_steps"]

Steps = str | PolicySpec | dict | Sequence[torch.Tensor]


def with_steps(model: nn.Module, steps: Steps) -> nn.Module:
    """A copy of ``model`` whose block ``d`` computes ``y + Δt'_d ⊙ F(y)`` with the new ``Δt'``.

    ``steps`` is a policy spec (a fresh policy of that kind) or one tensor of ``C_d`` values per
    block (held constant, not trainable). The branches' weights are those of ``model``.
    """
    values = None if isinstance(steps, (str, PolicySpec, dict)) else [torch.as_tensor(v).detach() for v in steps]
    spec = parse_policy("channel" if values is not None else cast("str | PolicySpec | dict", steps))
    model = replace_steps(copy.deepcopy(unwrap_model(model)), spec)
    if values is not None:
        policy = cast(ChannelSteps, get_policy(model))  # the "channel" policy just attached
        with torch.no_grad():
            policy.dt.copy_(torch.cat(values).to(policy.dt))
        policy.dt.requires_grad_(False)
    return model


def freeze_steps(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its current Δt held constant (a vanilla model is copied as is)."""
    if get_policy(model) is None:
        return copy.deepcopy(unwrap_model(model))
    return with_steps(model, step_sizes(model))
