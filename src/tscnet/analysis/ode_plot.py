"""The poster's ODE figure: why the step size matters (docs/design.md, section 2).

Explicit Euler on ``Y' = −4Y, Y(0) = 1`` over ``t ∈ [0, 2.5]`` multiplies ``Y`` by ``1 − 4h`` per
step: ``h = 0.05`` tracks ``e^{−4t}``, ``h = 0.4`` oscillates (factor −0.6) and ``h = 0.5`` sits on
the stability limit (factor −1, ``Y`` alternates ±1). Adaptive RKF45 picks its own steps, which
grow as the solution decays. Run ``python -m tscnet.analysis.ode_plot out.png`` to draw it and
print the table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .ode import ODEResult, euler, rkf45

__all__ = ["poster_runs", "poster_table", "format_table", "poster_figure"]

LAMBDA = 4.0
T_END = 2.5
EULER_STEPS = (0.05, 0.4, 0.5)
RKF_TOL = 1e-4
_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown")
_RKF_COLOR = "tab:green"


def _decay(t: float, y: np.ndarray) -> np.ndarray:
    """Right-hand side of ``Y' = −λY``."""
    return -LAMBDA * y


def _exact(t: np.ndarray) -> np.ndarray:
    """Analytic solution ``Y(t) = e^{−λt}``."""
    return np.exp(-LAMBDA * np.asarray(t))


def poster_runs(
    hs: Sequence[float] = EULER_STEPS, tol: float = RKF_TOL, t_end: float = T_END, **rkf_options
) -> list[ODEResult]:
    """Euler at each ``h`` in ``hs``, then RKF45 at ``tol``, all on ``Y' = −4Y, Y(0) = 1``.

    ``rkf_options`` go to :func:`rkf45` (e.g. ``safety``, ``order`` of the step controller).
    """
    runs = [euler(_decay, (0.0, t_end), 1.0, h) for h in hs]
    return runs + [rkf45(_decay, (0.0, t_end), 1.0, tol=tol, **rkf_options)]


def poster_table(runs: Sequence[ODEResult], hs: Sequence[float], tol: float) -> list[dict]:
    """One row per run: method, step or tolerance, steps, rejected, ``|Y_n − e^{−4 t_end}|``."""
    settings = [f"h={h:g}" for h in hs] + [f"tol={tol:g}"]
    return [
        {
            "method": r.method,
            "setting": s,
            "steps": r.n_accepted,
            "rejected": r.n_rejected,
            "error": float(abs(r.y[-1, 0] - _exact(r.t[-1]))),
        }
        for r, s in zip(runs, settings)
    ]


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of :func:`poster_table` rows."""
    lines = [f"{'method':<7} {'h / tol':<10} {'steps':>5} {'rejected':>8} {'|error at t_end|':>16}"]
    lines += [
        f"{r['method']:<7} {r['setting']:<10} {r['steps']:>5} {r['rejected']:>8} {r['error']:>16.3e}" for r in rows
    ]
    return "\n".join(lines)


def poster_figure(
    path: str | Path,
    hs: Sequence[float] = EULER_STEPS,
    tol: float = RKF_TOL,
    t_end: float = T_END,
    dpi: int = 150,
    **rkf_options,
) -> list[dict]:
    """Draw the figure to ``path`` (PNG) and return the :func:`poster_table` rows.

    Left: Euler trajectories at each ``h`` and the RKF45 accepted points against ``e^{−4t}``.
    Right: RKF45's accepted step sizes against ``t``.
    """
    # Figure + Agg canvas directly, not pyplot: no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = poster_runs(hs, tol, t_end, **rkf_options)
    rows = poster_table(runs, hs, tol)
    fig = Figure(figsize=(13, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_h = fig.subplots(1, 2, width_ratios=(1.7, 1))

    t = np.linspace(0.0, t_end, 400)
    ax.plot(t, _exact(t), color="black", lw=2.5, label=r"exact solution $e^{-4t}$", zorder=5)
    for r, h, color, marker in zip(runs, hs, _COLORS, "os^v"):
        amp = f"{1 - LAMBDA * h:+.2g}".replace("-", "−")
        ax.plot(
            r.t,
            r.y[:, 0],
            marker=marker,
            ms=4 if h < 0.1 else 6,
            lw=1.3,
            color=color,
            label=f"Euler h = {h:g} ({r.n_accepted} steps): Y multiplied by 1 − 4h = {amp}",
        )
    rkf = runs[-1]
    ax.plot(
        rkf.t,
        rkf.y[:, 0],
        "D",
        ms=8,
        mfc="none",
        mew=2,
        color=_RKF_COLOR,
        zorder=6,
        label=f"RKF45, Tol = {tol:g} ({rkf.n_accepted} adaptive steps, accepted points)",
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set(
        xlabel="t",
        ylabel="Y(t)",
        xlim=(-0.05, t_end + 0.05),
        ylim=(-1.15, 1.15),
        title="Y′ = −4Y, Y(0) = 1: fixed-step explicit Euler vs. adaptive RKF45\n"
        "h = 0.5 is Euler's stability limit |1 − 4h| = 1: Y alternates between ±1",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9)
    ax.grid(alpha=0.3)

    # Each step drawn as a horizontal segment over [t_j, t_{j+1}], a marker at its start.
    ax_h.stairs(rkf.h, rkf.t, color=_RKF_COLOR, lw=2, baseline=None)
    ax_h.plot(
        rkf.t[:-1],
        rkf.h,
        "D",
        ms=7,
        mfc="none",
        mew=2,
        color=_RKF_COLOR,
        label=r"RKF45 accepted step $\Delta t_j$ (marker at $t_j$)",
    )
    ax_h.plot(rkf.t[-2], rkf.h[-1], "D", ms=7, color=_RKF_COLOR, label=f"last step, shortened to end at t = {t_end:g}")
    # The fixed Euler steps as references: RKF45 needs far fewer steps than accurate Euler.
    for h, color in zip(hs, _COLORS):
        ax_h.axhline(h, color=color, ls="--", lw=1.2)
        ax_h.annotate(
            f"Euler fixed h = {h:g}",
            (0.15, h),
            xytext=(0, 3),
            textcoords="offset points",
            va="bottom",
            color=color,
            fontsize=9,
        )
    ax_h.set(
        xlabel="t",
        ylabel=r"step size $\Delta t$",
        xlim=(0.0, t_end),
        ylim=(0.0, 1.15 * max(max(hs), rkf.h.max())),
        title=f"RKF45 step sizes (Tol = {tol:g})\nsteps grow as the solution decays",
    )
    ax_h.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=9)
    ax_h.grid(alpha=0.3)
    fig.savefig(path, dpi=dpi)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tscnet.analysis.ode_plot [out.png]``: draw the figure, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "ode_poster.png"
    print(format_table(poster_figure(path)))
    print(f"figure written to {path}")


if __name__ == "__main__":
    main()
