"""A model's grid over one key (a learning-rate sweep, say): per arm its stability, best value, sensitivity
and early speed, and the tables that show them. (:mod:`tscnet.study.sweep` is another thing: it trains
N runs over a grid without a study spec.)

Stable: every planned seed of the model has a result at that value and none diverged. Best value: the
lowest mean final error (diverged seeds at chance). Spread: max − min over values of the mean final
error, over every value and over the stable values only.
"""

from __future__ import annotations

import math
from typing import Any

from ...analysis.stats import format_ci, format_mean_std, format_number, format_p, holm, mean_or_none, mean_std, welch
from ..spec import StudySpec
from .arms import ordered
from .load import Result


def is_numeric(value: Any) -> bool:
    """Whether a grid value is a number (``True``/``False`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def grid_value(value: Any) -> Any:
    """A grid value as a dictionary key and sort item: a list (``[0.9, 0.999]``) as a tuple."""
    return tuple(value) if isinstance(value, list) else value


def format_value(value: Any) -> str:
    """A grid value in a table or on an axis: ``0.1``, ``0.9,0.999`` for a tuple, ``—`` for ``None``."""
    return "—" if value is None else (",".join(map(str, value)) if isinstance(value, tuple) else str(value))


def _point(value: Any, results: list[Result], planned: list[int], steps: list[int]) -> dict[str, Any]:
    """One arm at one grid value: its seeds' final errors and their mean ± std, which failed, whether the
    value is stable, the error after epoch 1, T and the training loss at ``steps``."""
    errors = [r.error for r in results]
    mean, std = mean_std(errors)
    first = [float(r.metrics[0].get("test_error", math.nan)) if r.metrics else r.chance for r in results]
    times = [float(r.profile["evolution_time"]) for r in results if not r.diverged and r.profile]
    losses = {}
    for step in steps:
        have = [r.loss_at_step[step] for r in results if step in r.loss_at_step]
        losses[str(step)] = {"mean": mean_or_none(have), "n": len(have)}
    return {
        "value": value,
        "seeds": [r.seed for r in results],
        "n": len(results),
        "test_errors": errors,
        "mean": mean,
        "std": std,
        "failed": [r.seed for r in results if r.diverged],
        "diverged": [r.seed for r in results if r.outcome == "diverged"],
        "did_not_learn": [r.seed for r in results if r.did_not_learn],
        "stable": {r.seed for r in results} >= set(planned) and not any(r.diverged for r in results),
        "error_epoch1": mean_or_none(first) if all(map(math.isfinite, first)) else None,
        "T_mean": mean_or_none(times),
        "loss_at_step": losses,
        "runs": [str(r.folder) for r in results],
    }


def _arm_reading(steps: str, points: list[dict], values: list, planned: list[int]) -> dict[str, Any]:
    """One arm over the grid (``points``, ascending values): its largest stable value, best value and spread."""
    stable = [p for p in points if p["stable"]]
    largest = stable[-1]["value"] if stable else None  # values ascend
    above = [p for p in points if largest is None or values.index(p["value"]) > values.index(largest)]
    best = min(points, key=lambda p: p["mean"]) if points else None
    means = [p["mean"] for p in points]
    stable_means = [p["mean"] for p in stable]
    return {
        "steps": steps,
        "points": points,
        "largest_stable": largest,
        # Seeds still to run where no seed diverged yet: the largest stable value may still grow.
        "pending": [p["value"] for p in above if not p["failed"] and not set(planned) <= set(p["seeds"])],
        # No value stable and a diverged seed at every one: below the smallest value run.
        "below_grid": bool(points) and not stable and all(p["failed"] for p in points),
        "best_value": best["value"] if best else None,
        "best": best,
        "spread": max(means) - min(means) if means else None,
        "spread_stable": max(stable_means) - min(stable_means) if stable_means else None,
    }


def _compare_with_best_peer(spec: StudySpec, arms: dict[str, dict]) -> str | None:
    """Add to each arm its comparison at its best value with the best peer at the peer's own (Welch;
    ``vs_best_peer_p_holm``: Holm over these comparisons); return the best peer, ``None`` without one."""
    peers = [p for p in spec.peers if p in arms and arms[p]["best"]]
    best_peer = min(peers, key=lambda p: arms[p]["best"]["mean"]) if peers else None
    family = []
    for arm, entry in arms.items():
        entry["vs_best_peer"] = None
        if best_peer is not None and arm != best_peer and entry["best"]:
            entry["vs_best_peer"] = welch(entry["best"]["test_errors"], arms[best_peer]["best"]["test_errors"])
            if entry["vs_best_peer"] is not None:
                family.append(entry)
    for entry, p in zip(family, holm([e["vs_best_peer"]["p"] for e in family])):
        entry["vs_best_peer_p_holm"] = p
    return best_peer


def sweep_analysis(spec: StudySpec, model: str, found: list[Result]) -> dict[str, Any] | None:
    """The one-key grid of ``model``: per arm and value, and per arm its largest stable value, best value
    (with Welch/Holm against the best peer at its own best value) and spread (see the module's docstring).
    ``None`` unless the model's cells vary exactly one grid key."""
    mine = [r for r in found if r.model == model and r.grid]
    keys = {tuple(r.grid) for r in mine}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        return None
    key = next(iter(keys))[0]
    values = sorted(
        {grid_value(r.grid[key]) for r in mine}, key=lambda v: (not is_numeric(v), v if is_numeric(v) else str(v))
    )
    planned = spec.seeds_for(model) if model in spec.models else sorted({r.seed for r in mine})
    loss_steps = sorted({s for r in mine for s in r.loss_at_step}) or [100, 300]
    out: dict[str, Any] = {"key": key, "values": values, "seeds": planned, "loss_steps": loss_steps, "arms": {}}
    for arm in ordered(sorted({r.arm for r in mine}), [a.name for a in spec.arms]):
        runs = sorted((r for r in mine if r.arm == arm), key=lambda r: r.seed)
        at = {value: [r for r in runs if grid_value(r.grid[key]) == value] for value in values}
        points = [_point(value, at[value], planned, loss_steps) for value in values if at[value]]
        policy = next(r.steps for r in mine if r.arm == arm)  # the first found, not the first seed's
        out["arms"][arm] = _arm_reading(policy, points, values, planned)
    out["best_peer"] = _compare_with_best_peer(spec, out["arms"])
    return out


def _largest_stable(entry: dict[str, Any], values: list) -> str:
    """``0.1``; ``< 0.01`` (diverged at every value); ``0.1 (0.3 pending)`` while seeds are missing."""
    if entry.get("below_grid"):
        return f"< {format_value(values[0])}"
    pending = entry.get("pending") or []
    text = format_value(entry["largest_stable"])
    return text + (f" ({', '.join(map(format_value, pending))} pending)" if pending else "")


def _matrix_cell(point: dict[str, Any] | None, planned: int) -> str:
    """``26.17 ± 0.81``; ``✗ 2/3 (35.59)``: 2 of 3 seeds diverged, the others' errors in brackets."""
    if point is None:
        return "—"
    bad = set(point["failed"])
    if bad:
        others = [f"{e:.2f}" for seed, e in zip(point["seeds"], point["test_errors"]) if seed not in bad]
        return f"✗ {len(bad)}/{point['n']}" + (f" ({', '.join(others)})" if others else "")
    return format_mean_std(point["mean"], point["std"]) + (f" (n = {point['n']})" if point["n"] < planned else "")


def format_sweep_matrix(sweep: dict[str, Any]) -> str:
    """Final test error per arm (rows) and grid value (columns): the figure of
    :func:`~tscnet.study.report.figures.plot_sweep` in numbers."""
    key, values, planned = sweep["key"], sweep["values"], len(sweep["seeds"])
    lines = [
        "| policy | " + " | ".join(f"`{key}` = {format_value(v)}" for v in values) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for arm, e in sweep["arms"].items():
        at = {p["value"]: p for p in e["points"]}
        lines.append(f"| `{arm}` | " + " | ".join(_matrix_cell(at.get(v), planned) for v in values) + " |")
    return "\n".join(lines)


def _stability_table(sweep: dict[str, Any], chance: float) -> list[str]:
    """Per arm: largest stable value, best value and the error there against the best peer, spread."""
    key, best_peer = sweep["key"], sweep["best_peer"]
    seeds = ", ".join(map(str, sweep["seeds"]))
    family = sum(1 for e in sweep["arms"].values() if e.get("vs_best_peer_p_holm") is not None)
    lines = [
        f"Stability and sensitivity over `{key}` (final test error %, mean over seeds; a diverged seed counts "
        f"at chance, {chance:.2f} %). *Largest stable*: the largest value at which every seed ({seeds}) "
        "trained and none diverged (*pending*: values where seeds are still to run and none diverged yet). "
        "*Best*: the value with the lowest mean final error, per arm; each arm at "
        f"its best value is compared with the best peer at its own best value (`{best_peer}`), Welch 95 % CI "
        f"and p Holm-adjusted over these {family} comparisons"
        f"{'' if family else ' (none yet: a comparison needs two seeds of the arm and of the best peer)'}. "
        "The best values are chosen on the same seeds that measure "
        "them, so these comparisons favour arms (and peers) with more values to pick from; they are not "
        "corrected for that choice. *Spread*: max − min of the mean final error over the whole grid, and over "
        "the stable values only (sensitivity to the choice).\n",
        f"| policy | largest stable `{key}` | best `{key}` | final error at best (mean ± std) | "
        f"Δ vs best peer `{best_peer}` at its best [95 % CI] | p, Holm-adjusted | spread, whole grid | "
        "spread, stable range |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for arm, e in sweep["arms"].items():
        best = e["best"]
        at_best = "—" if best is None else f"{format_mean_std(best['mean'], best['std'])} (n = {best['n']})"
        p = e.get("vs_best_peer_p_holm")
        mark = " *" if p is not None and p < 0.05 else ""
        lines.append(
            f"| `{arm}` | {_largest_stable(e, sweep['values'])} | {format_value(e['best_value'])} | {at_best} | "
            f"{format_ci(e['vs_best_peer'])} | {'—' if p is None else format_p(p) + mark} | "
            f"{format_number(e['spread'])} | {format_number(e['spread_stable'])} |"
        )
    return lines


def _speed_row(arm: str, point: dict[str, Any], steps: list[int]) -> str:
    """One arm at one value: its seeds (× the failed), the loss at ``steps`` ((k/n): k of n seeds got
    there), the error after epoch 1, the final error and T."""
    losses = []
    for s in steps:
        loss = point["loss_at_step"][str(s)]
        text = format_number(loss["mean"], 3)
        if loss["mean"] is not None and loss["n"] < point["n"]:
            text += f" ({loss['n']}/{point['n']})"
        losses.append(text)
    failed = f", {len(point['failed'])}×" if point["failed"] else ""
    return (
        f"| `{arm}` | {format_value(point['value'])} | {point['n']}{failed} | "
        + " | ".join(losses)
        + f" | {format_number(point['error_epoch1'], 2)} | {format_mean_std(point['mean'], point['std'])} | "
        f"{format_number(point['T_mean'], 3)} |"
    )


def _speed_table(sweep: dict[str, Any]) -> list[str]:
    """Per arm and value: the training loss early on, the error after epoch 1, the final error and T."""
    key, steps = sweep["key"], sweep["loss_steps"]
    lines = [
        f"Early speed per arm and `{key}`: mean training loss around steps "
        + ", ".join(map(str, steps))
        + " (the run's `loss_at_step`; — where not recorded; (k/n): only k of the "
        "n seeds reached the step), test error after epoch 1, final test error, T. × counts the seeds "
        "that failed (diverged or did not learn).\n",
        f"| policy | `{key}` | seeds | "
        + " | ".join(f"loss @ {s}" for s in steps)
        + " | error after epoch 1 | final error (mean ± std) | T (mean) |",
        "|---|---:|---|" + "---:|" * len(steps) + "---:|---|---:|",
    ]
    return lines + [_speed_row(arm, point, steps) for arm, e in sweep["arms"].items() for point in e["points"]]


def format_sweep(sweep: dict[str, Any], chance: float) -> str:
    """The tables of :func:`sweep_analysis`: the error per value, stability, best value and sensitivity;
    early speed. ``chance``: the chance error (%) a failed seed counts at."""
    seeds = ", ".join(map(str, sweep["seeds"]))
    lines = [
        f"Final test error % per policy and `{sweep['key']}`, mean ± std over seeds {seeds}. ✗ k/n: k of the n "
        "seeds diverged or ended at chance level, and the errors of the others are in brackets; (n = k): only k "
        "seeds so far.\n",
        format_sweep_matrix(sweep),
        "",
        *_stability_table(sweep, chance),
        "",
        *_speed_table(sweep),
    ]
    return "\n".join(lines)
