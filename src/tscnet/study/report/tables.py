"""The Markdown tables of one model's (and grid point's) summary (:func:`~tscnet.study.report.summary.summarize_group`):
the arms with their comparisons, the ablations against their source, and the Holm-adjusted p-values."""

from __future__ import annotations

from typing import Any

from ...analysis.stats import format_ci, format_mean_std, format_number, format_p
from ..spec import StudySpec
from .summary import baseline_key


def _per_seed(row: dict[str, Any]) -> str:
    """``30.00, 90.00‡, 90.00†``: each seed's final error, † where it diverged, ‡ where it did not learn."""
    return ", ".join(
        f"{e:.2f}" + ("†" if seed in row["diverged"] else "‡" if seed in row["did_not_learn"] else "")
        for e, seed in zip(row["test_errors"], row["seeds"])
    )


def format_table(spec: StudySpec, summary: dict[str, Any]) -> str:
    """The Markdown table of one model's (and grid point's) summary: a row per policy."""
    best, key = summary["best_peer"], baseline_key(spec)
    lines = [
        f"| policy | seeds | final test error % (mean ± std) | per seed | T (mean) | last-3-epoch change | "
        f"Δ vs `{spec.baseline}` [95 % CI] | Δ vs best peer `{best}` [95 % CI] |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for r in summary["rows"]:
        label = f"`{r['policy']}`" + ("" if r["label"] == r["policy"] else f" ({r['label']})")
        lines.append(
            f"| {label} | {r['n']} ({', '.join(map(str, r['seeds']))}) | {format_mean_std(r['mean'], r['std'])} | "
            f"{_per_seed(r)} | {format_number(r['T_mean'], 3)} | {format_number(r['last3_change'])} | "
            f"{format_ci(r[key])} | {format_ci(r['vs_best_peer'])} |"
        )
    return "\n".join(lines)


def format_ablations(summary: dict[str, Any]) -> str | None:
    """The ablations against the run they were built from, or None when there are none."""
    rows = [r for r in summary["rows"] if r["vs_source"]]
    if not rows:
        return None
    lines = [
        "| ablation | source | seeds | Δ vs source, paired by seed [95 % CI] | Δ vs source, Welch [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        test = r["vs_source"]
        seeds = "—" if test["paired"] is None else ", ".join(map(str, test["paired"]["seeds"]))
        lines.append(
            f"| `{r['policy']}` | `{test['source']}` | {seeds} | {format_ci(test['paired'])} | "
            f"{format_ci(test['welch'])} |"
        )
    return "\n".join(lines)


def format_holm(spec: StudySpec, summary: dict[str, Any]) -> str | None:
    """Each arm's comparison with the baseline: Welch p-value and Holm-adjusted over the family."""
    key = baseline_key(spec)
    rows = [r for r in summary["rows"] if r.get(f"{key}_p_holm") is not None]
    if not rows:
        return None
    lines = [
        f"| policy | Δ vs `{spec.baseline}` | p (Welch) | p, Holm-adjusted over these {len(rows)} |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        mark = " *" if r[f"{key}_p_holm"] < 0.05 else ""
        lines.append(
            f"| `{r['policy']}` | {r[key]['diff']:+.2f} | {format_p(r[key]['p'])} | "
            f"{format_p(r[f'{key}_p_holm'])}{mark} |"
        )
    return "\n".join(lines)
