"""The statistics of one model (and grid point): a row per arm, compared with the baseline, the best peer
and, for an ablation, the run it was built from.

Final-epoch test error mean ± sample std and per seed (a failed run at chance error), T, convergence
(mean over seeds of ``|err_E − err_{E−3}|``), Welch 95 % intervals of each arm's difference to the
baseline and to the best peer, ablations against their source (paired by seed and Welch), and the
p-values of the comparisons with the baseline Holm-adjusted over that family.
"""

from __future__ import annotations

import math
from typing import Any

from ...analysis.stats import holm, mean_or_none, mean_std, paired, welch
from ..spec import StudySpec
from .arms import arm_label, arm_source, ordered
from .load import Result


def baseline_key(spec: StudySpec) -> str:
    """The summary key of the comparison with the baseline: ``vs_none`` when it is ``none``, else ``vs_baseline``."""
    return "vs_none" if spec.baseline == "none" else "vs_baseline"


def arm_row(spec: StudySpec, arm: str, results: list[Result]) -> dict[str, Any]:
    """The statistics of one arm's seeds (``results``, sorted by seed), before any comparison."""
    errors = [r.error for r in results]
    drift = [abs(r.errors[-1] - r.errors[-4]) for r in results if len(r.errors) >= 4 and not r.diverged]
    drift = [d for d in drift if math.isfinite(d)]  # epoch E-3 not evaluated (train.eval_epochs): unknown
    times = [float(r.profile["evolution_time"]) for r in results if not r.diverged]
    mean, std = mean_std(errors)
    return {
        "policy": arm,
        "label": arm_label(spec, arm),
        "steps": sorted({str(r.config["model"]["steps"]) for r in results}),
        "seeds": [r.seed for r in results],
        "n": len(results),
        "epochs": sorted({len(r.metrics) for r in results}),
        "test_errors": errors,
        "mean": mean,
        "std": std,
        "failed": [r.seed for r in results if r.diverged],  # counted at chance: diverged or did not learn
        "diverged": [r.seed for r in results if r.outcome == "diverged"],
        "did_not_learn": [r.seed for r in results if r.did_not_learn],
        "T": [None if r.diverged else float(r.profile["evolution_time"]) for r in results],
        "T_mean": mean_or_none(times),
        "last3_change": mean_or_none(drift),
        "last3_change_per_seed": drift,
        "runs": [str(r.folder) for r in results],
    }


def _vs_source(rows: dict[str, dict], arm: str, source: str | None) -> dict[str, Any] | None:
    """An ablation against the run it was built from: paired by seed and Welch; ``None`` for another arm."""
    if source not in rows:
        return None
    mine, theirs = (dict(zip(rows[a]["seeds"], rows[a]["test_errors"])) for a in (arm, source))
    return {
        "source": source,
        "paired": paired(mine, theirs),
        "welch": welch(rows[arm]["test_errors"], rows[source]["test_errors"]),
    }


def summarize_group(spec: StudySpec, group: list[Result]) -> dict[str, Any]:
    """One model (and grid point): ``{"best_peer", "rows"}``, a row per arm with the report's statistics."""
    by_arm: dict[str, list[Result]] = {}
    for r in group:
        by_arm.setdefault(r.arm, []).append(r)
    rows = {
        arm: arm_row(spec, arm, sorted(by_arm[arm], key=lambda r: r.seed))
        for arm in ordered(list(by_arm), [a.name for a in spec.arms])
    }
    sources = {r.arm: arm_source(spec, r) for r in group}
    peers = [p for p in spec.peers if p in rows]
    best = min(peers, key=lambda p: rows[p]["mean"]) if peers else None
    base, key = spec.baseline, baseline_key(spec)
    for arm, row in rows.items():
        row[key] = welch(row["test_errors"], rows[base]["test_errors"]) if base in rows and arm != base else None
        row["vs_best_peer"] = (
            welch(row["test_errors"], rows[best]["test_errors"]) if best is not None and arm != best else None
        )
        row["vs_source"] = _vs_source(rows, arm, sources.get(arm))
    # One family per model and grid point: every arm's comparison with the baseline, corrected together.
    family = [row for row in rows.values() if row[key] is not None]
    for row, p in zip(family, holm([row[key]["p"] for row in family])):
        row[f"{key}_p_holm"] = p
    return {"best_peer": best, "rows": list(rows.values())}
