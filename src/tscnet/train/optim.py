"""Optimizer and learning-rate schedules of the recipes (stepped once per iteration).

``lr(t) = lr_0 · warmup(t) · decay(t)`` with ``t`` the fractional epoch:

* ``multistep``: ``decay = γ^{#milestones ≤ t}`` (milestones < 1 are fractions of the run);
* ``step``: ``decay = γ^{⌊t / step_size⌋}``;
* ``cosine``: ``decay = ½ (1 + cos(π t / E))``;
* ``constant``: ``decay = 1``;
* ``warmup = s + (1 − s) · t / W`` for ``t < W`` warm-up epochs (``s = warmup_start``), else 1.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry

Decay = Callable[[float, int, dict], float]
SCHEDULES: Registry[Decay] = Registry("lr schedule")
register_schedule = SCHEDULES.register


@register_schedule("multistep")
def _multistep(t: float, epochs: int, cfg: dict) -> float:
    milestones = [m * epochs if m < 1 else m for m in cfg["milestones"]]
    return cfg["gamma"] ** sum(t >= m for m in milestones)


@register_schedule("step")
def _step(t: float, epochs: int, cfg: dict) -> float:
    return cfg["gamma"] ** math.floor(t / cfg["step_size"])


@register_schedule("cosine")
def _cosine(t: float, epochs: int, cfg: dict) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))


@register_schedule("constant")
def _constant(t: float, epochs: int, cfg: dict) -> float:
    return 1.0


def lr_factor(t: float, epochs: int, cfg: dict) -> float:
    """The multiplier of the base learning rate at fractional epoch ``t``."""
    warmup = cfg["warmup_epochs"]
    w = cfg["warmup_start"] + (1.0 - cfg["warmup_start"]) * t / warmup if t < warmup else 1.0
    return w * SCHEDULES[cfg["name"]](t, epochs, cfg)


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """SGD with momentum over every parameter, the step policy's included (its regulariser R is wd).

    Parameter groups, only where needed (otherwise one group, as before):

    * a step policy whose class sets ``weight_decay`` (``layerscale``: 0, as timm and CaiT exclude
      LayerScale's 1-D ``gamma`` from weight decay) gets that weight decay;
    * a model with ``param_lr_scale()`` (``{name: multiplier}``; Fixup's scalars: 0.1, as in the
      authors' code) trains those parameters at ``lr · multiplier``.
    """
    from ..stepping import get_policy
    from ..stepping.attach import unwrap_model

    sgd = dict(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=bool(cfg["nesterov"]),
               weight_decay=cfg["weight_decay"])
    policy = get_policy(model)
    own_decay = getattr(policy, "weight_decay", None)
    policy_params = {id(p) for p in policy.parameters()} if policy is not None and own_decay is not None else set()
    root = unwrap_model(model)
    scales = root.param_lr_scale() if hasattr(root, "param_lr_scale") else {}
    scale_of = {id(root.get_parameter(name)): multiplier for name, multiplier in scales.items()}
    groups: dict[tuple[float, Optional[float]], list[nn.Parameter]] = {}
    for p in model.parameters():
        key = (float(scale_of.get(id(p), 1.0)), float(own_decay) if id(p) in policy_params else None)
        groups.setdefault(key, []).append(p)
    if list(groups) == [(1.0, None)]:
        return torch.optim.SGD(model.parameters(), **sgd)
    param_groups = []
    # The base group first: the scheduler's get_last_lr()[0], logged as the run's lr, is then optim.lr's.
    for (scale, decay), params in sorted(groups.items(), key=lambda group: group[0][0] != 1.0):
        group: dict = {"params": params}
        if scale != 1.0:
            group["lr"] = cfg["lr"] * scale
        if decay is not None:
            group["weight_decay"] = decay
        param_groups.append(group)
    return torch.optim.SGD(param_groups, **sgd)


def build_scheduler(optimizer: torch.optim.Optimizer, sched: dict, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    if sched["name"] not in SCHEDULES:
        raise UserError(f"unknown schedule {sched['name']!r}; valid: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it / steps_per_epoch, epochs, sched))
