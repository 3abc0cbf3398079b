"""Analysis tools: the ODE step-size toy, spectral norms, the stability bound and measured
amplification, gradient flow, and the stability study / report of trained runs."""

import importlib
from typing import Any

from .gradflow import GradientFlow, fixed_step_study, gradient_flow
from .lipschitz import BlockBound, StabilityBound, register_block_ops, stability_bound
from .ode import ODEResult, euler, fehlberg_step, rkf45
from .perturbation import Amplification, amplification, residual_io
from .resteps import freeze_steps, with_steps
from .spectral import (
    bn_scale,
    conv_matrix,
    conv_operator,
    conv_spectral_norm,
    conv_spectral_norm_fft,
    fold_bn_into_conv,
    linear_spectral_norm,
)

__all__ = [
    "ODEResult",
    "euler",
    "rkf45",
    "fehlberg_step",
    "poster_figure",
    "poster_runs",
    "poster_table",
    "format_table",
    "conv_operator",
    "conv_spectral_norm",
    "conv_spectral_norm_fft",
    "linear_spectral_norm",
    "bn_scale",
    "fold_bn_into_conv",
    "conv_matrix",
    "BlockBound",
    "StabilityBound",
    "stability_bound",
    "register_block_ops",
    "Amplification",
    "amplification",
    "residual_io",
    "GradientFlow",
    "gradient_flow",
    "fixed_step_study",
    "with_steps",
    "freeze_steps",
    "stability_study",
    "build_runs_report",
]

# The figure helpers load lazily: importing the package must not import ode_plot, or
# ``python -m tscnet.analysis.ode_plot`` would find it half-imported (runpy warning); the run
# studies pull in the training package and plotting, which plain analysis users do not need.
_LAZY = {
    **dict.fromkeys(("poster_figure", "poster_runs", "poster_table", "format_table"), ".ode_plot"),
    "stability_study": ".stability",
    "build_runs_report": ".report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
