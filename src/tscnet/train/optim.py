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
from collections.abc import Callable
from typing import Any, cast

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


OPTIMIZERS = ("sgd", "adamw")


def depth_lr(model: nn.Module, cfg: dict) -> float:
    """``lr · (D / D₀)^(−P)`` (P = ``depth_lr_power``, D₀ = ``depth_lr_base``, D the residual updates):
    the learning rate of a depth-µP rule (P = 0.5: Adam's 1/√depth); ``lr`` itself when P = 0."""
    if not cfg.get("depth_lr_power"):
        return cfg["lr"]
    from ..stepping import branches_of

    depth = len(branches_of(model))
    return cfg["lr"] * (depth / cfg["depth_lr_base"]) ** -cfg["depth_lr_power"]


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """SGD with momentum (``optim.name: sgd``) or AdamW (``adamw``) over every parameter, the step
    policy's included.

    Parameter groups, only where needed (otherwise one group):

    * ``optim.weight_decay_rule`` says which parameters are decayed
      (:mod:`tscnet.stepping.param_groups`: ``tscnet``, every parameter, a policy class may set its
      own, ``layerscale``: 0; ``timm``, none for 1-D parameters and biases);
    * a model with ``param_lr_scale()`` (``{name: multiplier}``; Fixup's scalars: 0.1, as in the
      authors' code) trains those parameters at ``lr · multiplier``.
    """
    from ..stepping.attach import unwrap_model
    from ..stepping.param_groups import weight_decay_rule

    lr = depth_lr(model, cfg)
    name = cfg.get("name", "sgd")
    options: dict[str, Any]
    make: type[torch.optim.Optimizer]
    if name == "sgd":
        options = dict(
            lr=lr, momentum=cfg["momentum"], nesterov=bool(cfg["nesterov"]), weight_decay=cfg["weight_decay"]
        )
        make = torch.optim.SGD
    else:
        options = dict(lr=lr, betas=tuple(cfg["betas"]), eps=cfg["eps"], weight_decay=cfg["weight_decay"])
        make = torch.optim.AdamW
    decay_of = weight_decay_rule(model, cfg.get("weight_decay_rule", "tscnet"))  # None: the optimizer's
    root = unwrap_model(model)
    scales = cast(Any, root).param_lr_scale() if hasattr(root, "param_lr_scale") else {}
    scale_of = {id(root.get_parameter(n)): multiplier for n, multiplier in scales.items()}
    groups: dict[tuple[float, float | None], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((float(scale_of.get(id(p), 1.0)), decay_of(p)), []).append(p)
    if list(groups) == [(1.0, None)]:
        return make(model.parameters(), **options)
    param_groups = []
    # The base group first: the scheduler's get_last_lr()[0], logged as the run's lr, is then optim.lr's.
    for (scale, decay), params in sorted(groups.items(), key=lambda group: group[0][0] != 1.0):
        group: dict = {"params": params}
        if scale != 1.0:
            group["lr"] = lr * scale
        if decay is not None:
            group["weight_decay"] = decay
        param_groups.append(group)
    return make(param_groups, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, sched: dict, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler of ``optimizer``'s learning rate: the base rate × :func:`lr_factor`
    (warm-up, then the ``sched["name"]`` decay over ``epochs``).

    Raises:
        UserError: an unknown schedule name.
    """
    if sched["name"] not in SCHEDULES:
        raise UserError(f"unknown schedule {sched['name']!r}; valid: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it / steps_per_epoch, epochs, sched))
