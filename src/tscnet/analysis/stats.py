"""The statistics of a study: Welch's and the paired t-test with 95 % intervals, Holm's correction.

Every test returns ``{"diff", "ci95": [low, high], "p"}`` (plus ``"seeds"`` for the paired test)
or ``None`` when a side has fewer than two values. Differences are ``a − b`` (for errors:
negative means ``a`` is better).
"""

from __future__ import annotations

import statistics
import warnings


def welch(a: list[float], b: list[float]) -> dict | None:
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


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
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
