"""Analysis tools: the ODE step-size toy and spectral norms of residual-branch operators."""
import importlib
from typing import Any

from .ode import ODEResult, euler, fehlberg_step, rkf45
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
]

# The figure helpers load lazily: importing the package must not import ode_plot, or
# ``python -m tscnet.analysis.ode_plot`` would find it half-imported (runpy warning).
_PLOT_NAMES = ("poster_figure", "poster_runs", "poster_table", "format_table")


def __getattr__(name: str) -> Any:
    if name in _PLOT_NAMES:
        return getattr(importlib.import_module(".ode_plot", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
