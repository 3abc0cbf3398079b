"""Which parameters the optimizer's weight decay reaches, for any model with or without steps.

The paper trains the controller with the network's optimizer and weight decay (its regulariser R);
timm's optimizer factory, which DeiT and CaiT train with, exempts every 1-D parameter and bias.
The two rules give different regularisers for the step parameters, so the rule is explicit:

* ``"tscnet"`` (the default of ``tscnet train``): every parameter is decayed, the step policy's
  included; a policy class that sets ``weight_decay`` gets its own (``layerscale``: 0, as
  LayerScale's ``gamma`` in timm and CaiT);
* ``"timm"`` (``timm.optim.create_optimizer_v2`` gives the same groups): none for 1-D parameters,
  biases and the names of the model's ``no_weight_decay()``; so no free Δt (``scalar``,
  ``channel``, ``layerscale``) and no controller bias is decayed, the controller's 2-D weights are.

``torch.optim.AdamW(tscnet.param_groups(model, weight_decay=0.05), lr=1e-3)`` in a hand-written loop
trains like ``tscnet train`` with ``optim.weight_decay_rule: tscnet``. Build it after
:func:`~tscnet.stepping.attach.attach_steps`: an optimizer built before never sees the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import nn

from ..errors import InvalidValue
from .attach import get_policy, unwrap_model

#: The weight-decay rules :func:`param_groups` and :func:`weight_decay_rule` take (see above).
WEIGHT_DECAY_RULES = ("tscnet", "timm")


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names timm's rule exempts: 1-D parameters, ``.bias``, and ``model.no_weight_decay()``."""
    listed = set(cast(Any, model).no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {name for name, p in model.named_parameters() if p.ndim <= 1 or name.endswith(".bias") or name in listed}


def weight_decay_rule(model: nn.Module, rule: str = "tscnet") -> Callable[[nn.Parameter], float | None]:
    """``decay(p)``: the weight decay of parameter ``p`` of ``model`` under ``rule``, or ``None`` for
    the optimizer's own (the value it is given)."""
    if rule not in WEIGHT_DECAY_RULES:
        raise InvalidValue(f"unknown weight-decay rule {rule!r}; valid: {', '.join(WEIGHT_DECAY_RULES)}")
    root = unwrap_model(model)
    if rule == "timm":
        exempt = {id(p) for name, p in root.named_parameters() if name in _no_decay_names(root)}
        return lambda p: 0.0 if id(p) in exempt else None
    policy = get_policy(model)
    own = getattr(policy, "weight_decay", None)
    ids = {id(p) for p in policy.parameters()} if policy is not None and own is not None else set()
    return lambda p: float(own) if id(p) in ids else None  # type: ignore[arg-type]  # ids is empty when own is None


def param_groups(model: nn.Module, weight_decay: float, rule: str = "tscnet") -> list[dict]:
    """Parameter groups for a ``torch.optim`` optimizer: ``[{"params": [...], "weight_decay": wd}, ...]``,
    by ``rule`` (:data:`WEIGHT_DECAY_RULES`); parameters that do not require gradients are left out."""
    decay = weight_decay_rule(model, rule)
    groups: dict[float, list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            own = decay(p)
            groups.setdefault(weight_decay if own is None else own, []).append(p)
    return [{"params": params, "weight_decay": wd} for wd, params in groups.items()]
