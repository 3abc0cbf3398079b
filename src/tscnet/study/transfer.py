"""Depth transfer: does a policy keep its best learning rate as the network deepens?

A study whose models are one architecture at several depths, each swept over the same grid key
(``optim.lr``), answers the practical question of depth-µP (Yang et al., ICLR 2024; Bordelon et
al., ICLR 2024): tune on a shallow model, train a deep one. From the per-model sweeps
(:func:`tscnet.study.report.grid.sweep_analysis`), per arm:

* ``lr*(D)``: the best grid value at each depth D (the residual updates of the model, read from
  the runs' Δt profiles), its grid index, and how far it moves: ``max − min`` of the index over the
  depths (0: it transfers on this grid);
* the slope of ``log lr*`` against ``log D`` (least squares; 0: transfers, −0.5: lr ∝ 1/√D);
* what a user who tunes at the shallowest depth gets: at each deeper depth, the arm's mean final
  error at the shallowest depth's best value, and how much worse that is than the arm's own best
  there (the price of not re-tuning).

Switched on by ``report: {transfer: true}`` in the spec.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..analysis.plots import new_figure, palette, save_figure
from ..analysis.stats import format_number


def model_depths(found: list) -> dict[str, int]:
    """D (residual updates, one Δt profile entry each) of every model with a run that wrote its profile."""
    depths: dict[str, int] = {}
    for result in found:
        dt = result.profile.get("dt") if isinstance(result.profile, dict) else None
        if dt and result.model not in depths:
            depths[result.model] = len(dt)
    return depths


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs, ``None`` with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def transfer_analysis(sweeps: dict[str, dict], depths: dict[str, int]) -> dict | None:
    """The transfer readings of the arms swept at two or more depths over one key; ``None`` otherwise."""
    models = sorted((m for m in sweeps if m in depths), key=lambda m: depths[m])
    keys = {sweeps[m]["key"] for m in models}
    if len(models) < 2 or len(keys) != 1:
        return None
    out: dict[str, Any] = {"key": keys.pop(), "models": models, "depths": [depths[m] for m in models], "arms": {}}
    arms = [a for a in sweeps[models[0]]["arms"] if all(a in sweeps[m]["arms"] for m in models)]
    for arm in arms:
        entries = [sweeps[m]["arms"][arm] for m in models]
        if any(e["best"] is None for e in entries):
            continue
        best = [e["best_value"] for e in entries]
        index = [sweeps[m]["values"].index(v) for m, v in zip(models, best)]
        numeric = all(isinstance(v, (int, float)) and v > 0 for v in best)
        slope = _slope([math.log(depths[m]) for m in models], [math.log(v) for v in best]) if numeric else None
        shallow = best[0]
        at_shallow = []
        for e in entries[1:]:
            point = next((p for p in e["points"] if p["value"] == shallow), None)
            mean = None if point is None else point["mean"]
            at_shallow.append(
                {
                    "mean": mean,
                    "n": 0 if point is None else point["n"],
                    "gap": None if mean is None else mean - e["best"]["mean"],
                }
            )
        out["arms"][arm] = {
            "best_values": best,
            "best_index": index,
            "moves": max(index) - min(index),
            "slope": slope,
            "best_means": [e["best"]["mean"] for e in entries],
            "at_shallow_best": at_shallow,
        }
    return out


def format_transfer(transfer: dict) -> str:
    """The transfer table: best value per depth, its moves and slope, and the error at the shallow best."""
    key, depths = transfer["key"], transfer["depths"]
    deeper = depths[1:]
    lines = [
        f"Depth transfer of the best `{key}` (final test error %, mean over seeds; D = residual updates). "
        f"*Moves*: grid steps between the lowest and highest best value over the depths (0: the best value "
        f"transfers on this grid). *Slope*: least-squares slope of log best `{key}` against log D (0: transfers; "
        f"−0.5: ∝ 1/√D). *At the shallow best*: the error at each deeper depth when trained at the best value of "
        f"D = {depths[0]}, and in brackets how much worse that is than the arm's own best there.\n",
        "| policy | "
        + " | ".join(f"best `{key}`, D = {d}" for d in depths)
        + " | moves | slope | "
        + " | ".join(f"at the shallow best, D = {d}" for d in deeper)
        + " |",
        "|---|" + "---:|" * len(depths) + "---:|---:|" + "---:|" * len(deeper),
    ]
    for arm, e in transfer["arms"].items():
        shallow = [
            f"{format_number(s['mean'])} (+{format_number(s['gap'])})" if s["mean"] is not None else "—"
            for s in e["at_shallow_best"]
        ]
        lines.append(
            f"| `{arm}` | " + " | ".join(str(v) for v in e["best_values"]) + f" | {e['moves']} | "
            f"{format_number(e['slope'])} | " + " | ".join(shallow) + " |"
        )
    return "\n".join(lines)


def plot_transfer(transfer: dict, controller_arms: set[str], path: Path) -> Path:
    """Best grid value against depth, one line per arm (log–log), controllers solid, the others dashed."""
    fig, axes = new_figure(1, 1, 8, 5)
    ax = axes[0, 0]
    arms = list(transfer["arms"])
    for i, (arm, color) in enumerate(zip(arms, palette(len(arms)))):
        entry = transfer["arms"][arm]
        dodge = 1 + (i - (len(arms) - 1) / 2) * 0.012  # equal best values of several arms stay apart
        ax.plot(
            [d * dodge for d in transfer["depths"]],
            entry["best_values"],
            marker="o",
            color=color,
            label=arm,
            ls="-" if arm in controller_arms else "--",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(transfer["depths"], [str(d) for d in transfer["depths"]])
    best = sorted({v for entry in transfer["arms"].values() for v in entry["best_values"]})
    ax.set_yticks(best, [f"{v:g}" for v in best])  # the grid values some arm chose, not decades
    ax.minorticks_off()
    ax.set(
        xlabel="D (residual updates)",
        ylabel=f"best {transfer['key']}",
        title=f"Best {transfer['key']} against depth (flat: transfers across depth)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
