"""The statistics of both reports (``tscnet report`` and a study's), and how they are written.

Summaries: mean and sample standard deviation over seeds (:func:`mean_std`), and whether a final
error is at chance level (:func:`at_chance`). Tests: Welch's and the paired t-test with 95 %
intervals, Holm's correction. Every test returns ``{"diff", "ci95": [low, high], "p"}`` (plus
``"seeds"`` for the paired test) or ``None`` when a side has fewer than two values. Differences are
``a − b`` (for errors: negative means ``a`` is better). Formatting: the strings the reports' tables
print for each (``26.17 ± 0.81``, ``+1.23 [+0.45, +2.01] *``, ``—`` for a missing value).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from typing import Any

from ..train.metrics import CHANCE_FRACTION


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean of ``values``, ``None`` when there are none."""
    return statistics.fmean(values) if values else None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of ``values``: ``(None, None)`` without values, a ``None``
    std with one (a single seed has no spread)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def at_chance(error: float, chance: float) -> bool:
    """Whether a final test error (%) is at chance level: at least ``CHANCE_FRACTION`` (0.95) of the chance
    error ``chance`` (:func:`tscnet.train.metrics.chance_error`) — the run did not learn."""
    return error >= CHANCE_FRACTION * chance


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any] | None:
    """Welch's unequal-variance t-test of mean(a) − mean(b): the difference, its 95 % CI and the p-value.

    CI = diff ± t_{0.975, ν} · sqrt(s_a²/n_a + s_b²/n_b), ν by Welch–Satterthwaite
    (``scipy.stats.ttest_ind(equal_var=False).confidence_interval(0.95)``). Two constant samples
    give the degenerate interval [diff, diff] and p = 0 (differ) or 1 (equal).
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return {"diff": diff, "ci95": [diff, diff], "p": 0.0 if diff else 1.0}
    with warnings.catch_warnings():  # nearly equal samples (e.g. two diverged at chance): scipy warns, still right
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)
    return {"diff": diff, "ci95": [float(ci.low), float(ci.high)], "p": float(test.pvalue)}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Paired t-test over the seeds both have (same seed: same initial weights and batches):
    mean_s (a_s − b_s), its 95 % CI (mean ± t_{0.975, n−1} · s_d / √n) and the p-value."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if statistics.stdev(diffs) == 0:
        return {"diff": mean, "ci95": [mean, mean], "p": 0.0 if mean else 1.0, "seeds": seeds}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        ci = test.confidence_interval(0.95)
    return {"diff": mean, "ci95": [float(ci.low), float(ci.high)], "p": float(test.pvalue), "seeds": seeds}


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values. With the m p-values sorted, p_(1) ≤ … ≤ p_(m):
    p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)); calling every p̃ < α significant keeps the chance of
    any false call among the m at most α (scipy has no Holm; statsmodels would be a dependency for 6 lines)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(pvalues) - rank) * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def format_number(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, ``—`` for ``None``."""
    return "—" if value is None else f"{value:.{digits}f}"


def format_mean_std(mean: float, std: float | None) -> str:
    """``26.17 ± 0.81`` (``26.17`` alone where one seed gives no std)."""
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def format_ci(test: dict[str, Any] | None) -> str:
    """``+1.23 [+0.45, +2.01] *`` from a test's ``diff`` and ``ci95`` (``*``: the interval excludes 0;
    ``—`` without a test)."""
    if test is None:
        return "—"
    low, high = test["ci95"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{test['diff']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def format_p(p: float) -> str:
    """A p-value with 3 decimals, in scientific notation below 0.001."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"
