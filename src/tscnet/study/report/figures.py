"""The study report's figures (PNG): per model and grid point, test error per epoch, over the last
epochs, the final Δt per block and the Δt heatmaps; per model with a one-key grid, the final error
against the grid value. Drawn with :mod:`tscnet.analysis.plots`, as ``tscnet report``'s are; a
controller's arm solid, the others dashed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...analysis.plots import Series, new_figure, palette, plot_dt_heatmaps, plot_series, save_figure
from ..spec import StudySpec
from .arms import is_constant, is_controller, ordered
from .grid import format_value, is_numeric
from .load import Result

_NOTE = "solid: Δt from a controller; dashed: without"


def _error_figures(curves: list[Series], name: str, title: str, out: Path) -> dict[str, Path]:
    """Test error per epoch (``curves``) and over the last epochs, where the policies separate (or not)."""
    files = {
        "curves": plot_series(
            curves,
            out / f"{name}_test_error.png",
            "test error (%)",
            f"{title}: test error per epoch (mean ± std over seeds)",
            note=_NOTE,
        )
    }
    epochs = min(s.values.shape[1] for s in curves)
    last = min(epochs, max(4, epochs // 2))  # the end of training, where the policies separate (or not)
    tail = [Series(s.label, s.values[:, epochs - last : epochs], s.dashed) for s in curves]
    files["curves_end"] = plot_series(
        tail,
        out / f"{name}_test_error_end.png",
        "test error (%)",
        f"{title}: test error over the last {last} epochs (mean ± std over seeds)",
        note=_NOTE,
        first=epochs - last + 1,
    )
    return files


def _block_means(result: Result) -> list[float]:
    """The run's final Δt per block, averaged over channels."""
    return [float(np.mean(b)) for b in result.profile["dt"]]


def group_figures(spec: StudySpec, name: str, title: str, group: list[Result], out: Path) -> dict[str, Path]:
    """Test error per epoch, over the last epochs, final Δt per block and the Δt heatmaps of one group."""
    by_arm: dict[str, list[Result]] = {}
    for r in sorted(group, key=lambda r: r.seed):
        by_arm.setdefault(r.arm, []).append(r)
    order = ordered(list(by_arm), [a.name for a in spec.arms])
    steps = {a: by_arm[a][0].steps for a in order}
    dashed = {a: not is_controller(steps[a]) for a in order}
    curves = [Series.from_runs(a, [r.errors for r in by_arm[a]], dashed=dashed[a]) for a in order]
    files = _error_figures(curves, name, title, out)
    finished = {a: [r for r in by_arm[a] if not r.diverged and r.profile] for a in order}
    profiles = [
        Series.from_runs(a, [_block_means(r) for r in finished[a]], dashed=dashed[a]) for a in order if finished[a]
    ]
    if profiles:
        files["profiles"] = plot_series(
            profiles,
            out / f"{name}_dt_profile.png",
            "final mean_c Δt_d",
            f"{title}: final step size of each block (mean over channels; mean ± std over seeds)",
            note=_NOTE,
            xlabel="residual block d (1 = first)",
        )
    learned = [a for a in order if not is_constant(steps[a]) and finished[a]]
    if learned:
        panels = [
            (f"{a} (seed {finished[a][0].seed})", [np.asarray(b, dtype=float) for b in finished[a][0].profile["dt"]])
            for a in learned
        ]
        files["heatmap"] = plot_dt_heatmaps(panels, out / f"{name}_dt_heatmap.png")
    return files


def _sweep_axis(sweep: dict[str, Any]) -> tuple[dict[Any, float], bool, bool]:
    """Where each grid value sits on the x axis (a category's index where a value is not a number) and
    whether the axis is numeric and logarithmic (a learning rate, or values over a decade)."""
    values = sweep["values"]
    numeric = all(is_numeric(v) for v in values)
    positions = {v: (v if numeric else i) for i, v in enumerate(values)}
    log_x = (
        numeric
        and min(values) > 0
        and (sweep["key"].rpartition(".")[2].startswith("lr") or max(values) / min(values) >= 10)
    )
    return positions, numeric, log_x


def plot_sweep(model: str, sweep: dict[str, Any], chance: float, path: Path) -> Path:
    """Final test error against the grid value, one line per arm (mean ± std over seeds; diverged seeds ×, at chance)."""
    fig, axes = new_figure(1, 1, 9, 5.5)
    ax = axes[0, 0]
    positions, numeric, log_x = _sweep_axis(sweep)
    arms = list(sweep["arms"])
    span = (max(positions.values()) - min(positions.values())) or 1.0
    for i, (arm, color) in enumerate(zip(arms, palette(len(arms)))):
        points = sweep["arms"][arm]["points"]
        # each arm a little to the side (×1.5 % a step on a log axis), so error bars of equal means stay apart
        dodge = (i - (len(arms) - 1) / 2) * 0.015
        xs = [positions[p["value"]] * (1 + dodge) if log_x else positions[p["value"]] + dodge * span for p in points]
        dashed = not is_controller(sweep["arms"][arm]["steps"])
        ax.errorbar(
            xs,
            [p["mean"] for p in points],
            yerr=[p["std"] or 0.0 for p in points],
            color=color,
            marker="o",
            capsize=3,
            lw=1.5,
            label=arm,
            ls="--" if dashed else "-",
        )
        bad = [(x, chance) for x, p in zip(xs, points) for _ in p["failed"]]
        if bad:
            ax.scatter(*zip(*bad), marker="x", s=70, color=color, zorder=5)
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(sweep["values"], [format_value(v) for v in sweep["values"]])  # the grid, not powers of 10
        ax.minorticks_off()
    if not numeric:
        ax.set_xticks(list(positions.values()), [format_value(v) for v in sweep["values"]])
    ax.axhline(chance, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel=sweep["key"],
        ylabel="final test error (%)",
        title=f"{model}: final test error against {sweep['key']}\n(mean ± std over seeds; × a diverged seed, counted at chance)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
