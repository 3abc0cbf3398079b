"""tscnet: residual networks as Euler steps ``y_{d+1} = y_d + Δt_d ⊙ F(y_d)`` with step policies.

Quick start::

    import tscnet
    model = tscnet.create_model("cifar_resnet20", num_classes=10, steps="tsc")
    ...train...
    tscnet.step_sizes(model)      # Δt per block
    plain = tscnet.fold_steps(model)  # the vanilla architecture, steps folded into weights

The names below are imported on first use (PEP 562): ``import tscnet`` alone imports neither torch
nor timm, so the ``tscnet`` command starts (``tscnet --help``) without them. Subpackages load the
same way (``tscnet.stepping.policy_name``, ``tscnet.hub.save_timm_folder``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it (dynamic version)

# Public name -> the subpackage that defines it.
_EXPORTS = {
    "create_model": "models",
    "list_models": "models",
    "PolicySpec": "stepping",
    "attach_steps": "stepping",
    "convert_sync_batchnorm": "stepping",
    "evolution_time": "stepping",
    "fold_steps": "stepping",
    "get_policy": "stepping",
    "parse_policy": "stepping",
    "policy_names": "stepping",
    "step_sizes": "stepping",
    "unfold_steps": "stepping",
    "param_groups": "stepping",
}
__all__ = [
    "PolicySpec",
    "attach_steps",
    "convert_sync_batchnorm",
    "create_model",
    "evolution_time",
    "fold_steps",
    "get_policy",
    "list_models",
    "param_groups",
    "parse_policy",
    "policy_names",
    "step_sizes",
    "unfold_steps",
]


def __getattr__(name: str) -> Any:
    """A public name (``create_model``, ...) or a subpackage (``stepping``, ...), imported on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # cached: later accesses do not come back here
        return value
    # A subpackage not imported yet: `import tscnet; tscnet.stepping.policy_name(...)` worked when
    # this file imported .stepping eagerly, and keeps working.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's attributes with the public names that are not imported yet."""
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # type checkers and IDEs see the names as if imported here
    from .models import create_model, list_models
    from .stepping import (
        PolicySpec,
        attach_steps,
        convert_sync_batchnorm,
        evolution_time,
        fold_steps,
        get_policy,
        param_groups,
        parse_policy,
        policy_names,
        step_sizes,
        unfold_steps,
    )
