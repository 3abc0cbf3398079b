"""tscnet: residual networks as Euler steps ``y_{d+1} = y_d + Δt_d ⊙ F(y_d)`` with step policies.

Quick start::

    import tscnet
    model = tscnet.create_model("cifar_resnet20", num_classes=10, steps="tsc")
    ...train...
    tscnet.step_sizes(model)      # Δt per block
    plain = tscnet.fold_steps(model)  # the vanilla architecture, steps folded into weights
"""
from .models import create_model, list_models
from .stepping import (
    PolicySpec,
    attach_steps,
    convert_sync_batchnorm,
    evolution_time,
    fold_steps,
    get_policy,
    parse_policy,
    policy_names,
    step_sizes,
    unfold_steps,
)

__version__ = "0.1.0"
__all__ = [
    "PolicySpec", "attach_steps", "convert_sync_batchnorm", "create_model", "evolution_time", "fold_steps", "get_policy",
    "list_models", "parse_policy", "policy_names", "step_sizes", "unfold_steps",
]
