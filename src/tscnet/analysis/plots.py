"""Figures of the stability, gradient-flow and training studies (PNG, matplotlib's Agg canvas).

Every function takes plain data (lists, arrays, the analysis dataclasses) and a path, draws one
self-explanatory figure and returns the path. Figures are built with ``Figure`` + Agg directly,
never pyplot, so callers' matplotlib state is untouched. :func:`new_figure`, :func:`palette` and
:func:`save_figure` are the steps every figure shares; the study report's figures
(:mod:`tscnet.study.report.figures`, :mod:`tscnet.study.transfer`) draw with them too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .gradflow import GradientFlow

__all__ = [
    "new_figure",
    "palette",
    "save_figure",
    "Series",
    "plot_series",
    "plot_stability_vs_depth",
    "plot_gradient_flow",
    "plot_dt_heatmaps",
    "plot_block_series",
]

PathLike = str | Path
_MARKERS = "osD^vP*Xh<>"


def new_figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Any, np.ndarray]:
    """A ``width`` × ``height`` inch figure on its own Agg canvas (no pyplot) and its ``nrows`` × ``ncols``
    axes, always as a 2-D array (``axes[0, 0]`` for one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def palette(n: int) -> list:
    """``n`` distinct colours, one per curve: tab10 up to 10, tab20 beyond (repeating past 20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def save_figure(fig: Any, path: PathLike, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` (PNG, 130 dpi unless ``dpi``) and return the path."""
    fig.savefig(path, dpi=dpi)
    return Path(path)


@dataclass
class Series:
    """One group's curve over epochs: ``values[seed, epoch]`` (NaN where a seed has no such epoch)."""

    label: str
    values: np.ndarray
    dashed: bool = False  # e.g. runs without a controller

    @classmethod
    def from_runs(cls, label: str, per_seed: Sequence[Sequence[float]], dashed: bool = False) -> Series:
        n = max(len(v) for v in per_seed)
        values = np.full((len(per_seed), n), np.nan)
        for i, v in enumerate(per_seed):
            values[i, : len(v)] = v
        return cls(label, values, dashed)


def plot_series(
    series: Sequence[Series],
    path: PathLike,
    ylabel: str,
    title: str,
    log: bool = False,
    note: str = "",
    xlabel: str = "epoch",
    first: int = 1,
) -> Path:
    """Mean over seeds against epoch (or ``xlabel``: x = ``first``, ``first`` + 1, ...), with a ±1 std
    band where a group has several seeds."""
    fig, axes = new_figure(1, 1, 9, 5.5)
    ax = axes[0, 0]
    for s, color in zip(series, palette(len(series))):
        epochs = np.arange(first, first + s.values.shape[1])
        with warnings.catch_warnings():  # an all-NaN column: an epoch without a value (not evaluated)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(s.values, axis=0)
            std = np.nanstd(s.values, axis=0, ddof=1) if s.values.shape[0] > 1 else None
        n, known = s.values.shape[0], np.isfinite(mean)  # connect the epochs that have a value, not gaps
        ax.plot(
            epochs[known],
            mean[known],
            color=color,
            ls="--" if s.dashed else "-",
            marker="o",
            ms=3,
            lw=1.8,
            label=f"{s.label} ({_plural(n, 'seed')})",
        )
        if std is not None:
            ax.fill_between(epochs[known], (mean - std)[known], (mean + std)[known], color=color, alpha=0.15, lw=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(_integer_locator())
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # every run diverged in its first epoch: nothing to plot
        ax.legend(fontsize=8, title=note or None, title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no epoch finished", transform=ax.transAxes, ha="center", va="center")
    return save_figure(fig, path)


def plot_stability_vs_depth(rows: Sequence[Mapping], path: PathLike) -> Path:
    """Amplification against depth, one colour/marker per policy: measured worst case (solid,
    filled), the bound ``Π_j (‖S_j‖ + L_j max Δt_j)`` (dashed, open) and random directions (dotted).

    ``rows`` need ``policy``, ``depth``, ``worst``, ``bound`` and ``random_mean`` (medians over
    images); runs of one policy and depth (seeds) are combined by their geometric mean. A run whose
    measured amplification is 0 (a constant map: a collapsed network) has no place on a log axis:
    it is left out of the mean and counted in a note at the bottom of the plot.
    """
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, 11, 6)
    ax = axes[0, 0]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    kinds = (
        ("bound", "--", False, "bound Π_j (‖S_j‖ + L_j·max_c Δt_j)"),
        ("worst", "-", True, "measured, worst direction\n(power iteration on J^T J)"),
        ("random_mean", ":", True, "measured, random directions (mean)"),
    )
    notes = []
    for policy, color, marker in zip(policies, palette(len(policies)), _MARKERS):
        mine = [r for r in rows if r["policy"] == policy]
        depths = sorted({r["depth"] for r in mine})
        for key, ls, filled, _ in kinds:
            ys = []
            for d in depths:
                values = [r[key] for r in mine if r["depth"] == d and r[key] is not None and not math.isnan(r[key])]
                positive = [v for v in values if v > 0]
                ys.append(math.exp(np.mean(np.log(positive))) if positive else math.nan)
                if key == "worst" and len(positive) < len(values):
                    notes.append(
                        f"{policy}, depth {d}: {len(values) - len(positive)} of {len(values)} runs amplify 0 "
                        "(constant map: collapsed network), not drawn"
                    )
            ax.plot(depths, ys, ls=ls, marker=marker, color=color, mfc=color if filled else "none", ms=7, lw=1.6)
    if notes:
        ax.text(
            0.01,
            0.01,
            "\n".join(notes),
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
            bbox=dict(boxstyle="round", fc="white", alpha=0.8),
        )
    ax.set_yscale("log")
    ax.set(
        xlabel="depth (weight layers: stem + branch convs + classifier)",
        ylabel="amplification ‖y_D^ε − y_D‖ / ‖ε‖  (median over images)",
        title="Perturbation ε at the input of the first residual block, measured at the output of the last",
    )
    ax.xaxis.set_major_locator(_integer_locator())
    ax.grid(alpha=0.3, which="both")
    colors = [
        Line2D([], [], color=c, marker=m, ls="-", label=p)
        for p, c, m in zip(policies, palette(len(policies)), _MARKERS)
    ]
    styles = [
        Line2D([], [], color="black", ls=ls, marker="o", mfc="black" if filled else "none", label=text)
        for _, ls, filled, text in kinds
    ]
    # Outside the axes, where no data point can hide under them.
    ax.add_artist(
        ax.legend(handles=colors, title="step policy", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    )
    ax.legend(handles=styles, title="quantity", fontsize=8, loc="lower left", bbox_to_anchor=(1.02, 0))
    return save_figure(fig, path)


def plot_gradient_flow(panels: Sequence[tuple[str, Mapping[str, GradientFlow]]], path: PathLike) -> Path:
    """Per panel (e.g. one run): ``‖∂L/∂y_n‖`` (left) and ``‖∂L/∂w_n‖`` (right) against block n.

    Curves whose label starts with ``"Δt ="`` (fixed steps) are drawn dashed in a blue-to-red
    scale; every other curve (a learned policy) as a thick grey line underneath.
    """
    from matplotlib import colormaps

    fig, axes = new_figure(len(panels), 2, 13, 4.2 * len(panels) + 0.9)
    cmap = colormaps["coolwarm"]
    for row, (title, curves) in zip(axes, panels):
        fixed = [k for k in curves if k.startswith("Δt =")]
        for k, curve in curves.items():
            # Learned curves underneath (thick, translucent) so that an equal fixed line stays visible.
            style = (
                dict(color=cmap(fixed.index(k) / max(1, len(fixed) - 1)), ls="--", marker="o", ms=4, zorder=3)
                if k in fixed
                else dict(color="black", ls="-", lw=5, alpha=0.35, zorder=2)
            )
            blocks = np.arange(len(curve.input_grad))
            row[0].plot(blocks, curve.input_grad, label=k, **style)
            row[1].plot(blocks, curve.weight_grad, label=k, **style)
        row[0].set(ylabel="‖∂L/∂y_n‖", title=f"{title}\ngradient reaching the input of block n")
        row[1].set(ylabel="‖∂L/∂w_n‖", title=f"{title}\ngradient of block n's weights (its convs and BNs)")
        for ax in row:
            ax.set_yscale("log")
            ax.set_xlabel("residual block n (0 = first, next to the stem)")
            ax.xaxis.set_major_locator(_integer_locator())
            ax.title.set_fontsize(10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle(
        "Gradient flow: cross-entropy on one batch of real test images (BN in training mode).\n"
        "Small Δt starves early blocks: ∂L/∂y_n stays ≈ ∂L/∂y_D (the blocks add little), "
        "and weight gradients shrink with Δt",
        fontsize=11,
    )
    return save_figure(fig, path)


def plot_dt_heatmaps(panels: Sequence[tuple[str, Sequence[np.ndarray]]], path: PathLike) -> Path:
    """Learned Δt as a blocks × channels image per panel; narrower blocks padded with NaN (white)."""
    vmax = max(float(np.max(np.concatenate([np.ravel(s) for s in steps]))) for _, steps in panels)
    vmin = min(float(np.min(np.concatenate([np.ravel(s) for s in steps]))) for _, steps in panels)
    blocks = max(len(s) for _, s in panels)
    fig, axes = new_figure(len(panels), 1, 11, len(panels) * max(3.2, 1.6 + 0.2 * blocks))
    for ax, (title, steps) in zip(axes[:, 0], panels):
        width = max(len(s) for s in steps)
        grid = np.full((len(steps), width), np.nan)
        for d, s in enumerate(steps):
            grid[d, : len(s)] = s
        image = ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=vmin,
            vmax=vmax if vmax > vmin else vmin + 1e-6,
        )
        ax.set(xlabel="output channel c", ylabel="residual block d", title=f"{title}: Δt_d[c] (white: no such channel)")
        ax.yaxis.set_major_locator(_integer_locator())
        fig.colorbar(image, ax=ax, label="step size Δt")
    return save_figure(fig, path)


def plot_block_series(panels: Sequence[tuple[str, np.ndarray]], path: PathLike, ylabel: str, title: str) -> Path:
    """Per panel, ``values[epoch, block]``: one line per block, coloured by block index."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, 5.2 * ncols + 1, 3.8 * nrows + 0.6)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, values) in zip(axes.flat, panels):
        epochs = np.arange(1, values.shape[0] + 1)
        blocks = values.shape[1]
        cmap = colormaps["viridis"].resampled(blocks)
        norm = BoundaryNorm(np.arange(blocks + 1) - 0.5, blocks)  # one colour per block
        for d in range(blocks):
            ax.plot(epochs, values[:, d], color=cmap(d), lw=1.2, marker="o", ms=2)
        ax.set(xlabel="epoch", ylabel=ylabel, title=label)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.grid(alpha=0.3)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="residual block d (0 = first)")
        bar.locator = _integer_locator()
        bar.update_ticks()
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
