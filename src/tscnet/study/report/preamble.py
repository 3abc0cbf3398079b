"""The text at the top of a study's report, before any table: title, method, the recipe the runs share
(or a warning that they do not), and where the runs ran."""

from __future__ import annotations

import json
from typing import Any

from ...train.config import DEFAULTS
from ..results import definition
from ..spec import StudySpec
from .load import Result


def _fill_or_drop_missing_keys(defined: list[dict[str, Any]]) -> None:
    """A key some runs' configs lack (saved before the schema had it) reads as its default there: left
    out where every run that has it holds the default, filled in with the default otherwise (in place)."""
    keys = {(s, k) for recipe in defined for s, values in recipe.items() for k in values}
    for section, key in keys:
        if all(key in recipe.get(section, {}) for recipe in defined):
            continue
        default = DEFAULTS.get(section, {}).get(key)
        drop = all(recipe[section][key] == default for recipe in defined if key in recipe.get(section, {}))
        for recipe in defined:
            if drop:
                recipe.get(section, {}).pop(key, None)
            else:
                recipe.setdefault(section, {}).setdefault(key, default)


def run_recipes(found: list[Result]) -> dict[str, list[str]]:
    """The recipe of each run (model, seed, grid keys, the arm's own overrides and placement aside)
    as canonical JSON → the runs with it (one entry when the runs share one recipe)."""
    defined = []
    for r in found:
        recipe = definition(r.config, r.config)
        recipe.pop("model")
        recipe["train"].pop("seed")
        own = [item.partition("=")[0].strip() for item in r.info.get("set", [])]
        for key in [*r.grid, *own]:
            section, _, name = key.partition(".")
            recipe.get(section, {}).pop(name, None)
        defined.append(recipe)
    _fill_or_drop_missing_keys(defined)
    recipes: dict[str, list[str]] = {}
    for r, recipe in zip(found, defined):
        recipes.setdefault(json.dumps(recipe, sort_keys=True), []).append(str(r))
    return recipes


def _ablations_text(spec: StudySpec, grid: bool) -> str:
    """What each ablation of the spec freezes, of which arm, and how it is compared with its source."""
    sources: dict[str, list] = {}
    for arm in spec.arms:
        if arm.source is not None:  # an ablation
            sources.setdefault(arm.source, []).append(arm)
    what = {
        "profile-of": "its final per-block, per-channel Δt frozen from the first step",
        "fixed-of": "a uniform fixed step equal to its final T / D",
    }
    text = ""
    for source, arms in sources.items():
        parts = [f"{what[a.ablation]} (`{a.name}`)" for a in arms]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]
        text += (
            f"Ablations of `{source}` (same model{', grid point' if grid else ''} and seed): {listed}; "
            f"{'each is' if len(parts) > 1 else 'it is'} also compared with its source run seed by seed "
            "(paired t-test, `scipy.stats.ttest_rel`, over the seeds both have). "
        )
    return text


def method_paragraph(spec: StudySpec, grid: bool) -> str:
    """**Method.**: what the numbers are, how arms are compared, ablations, and how failed runs count."""
    text = (
        "**Method.** Final-epoch test error (never the best epoch), mean ± sample std over seeds; the same "
        "seed gives every policy the same initial weights and batches. *T* = Σ_d mean_c Δt_d at the end. "
        "*Last-3-epoch change*: mean over seeds of |err_E − err_{E−3}| (convergence: small means flat). "
        "*Δ*: difference of mean final errors (policy − reference, percentage points; negative = better "
        "than the reference) with the 95 % confidence interval of Welch's unequal-variance t-test "
        "(`scipy.stats.ttest_ind(equal_var=False).confidence_interval(0.95)`); * marks an interval that "
        "excludes 0. Best peer: the controller-free peer (" + ", ".join(f"`{p}`" for p in spec.peers) + ") with "
        f"the lowest mean error for that model{' and grid point' if grid else ''}. "
    )
    if spec.baseline != "none":
        text += f"Baseline: `{spec.baseline}`. "
    text += _ablations_text(spec, grid)
    text += (
        "A run that diverged (the engine stopped it at a NaN or infinite loss) counts at chance error "
        "(100 − 100 / classes %) and is marked †; one that did not learn (finished at a final error at chance "
        "level) counts at chance too and is marked ‡; neither has T, a Δt profile or ablations.\n"
    )
    return text


def platforms_paragraph(found: list[Result]) -> str | None:
    """Where the cells ran, or ``None`` when no cell recorded its platform.

    The cells of the most common platform are not listed (``summary.json`` maps every cell to its
    platform); those of the others are, since they are the ones a reader may want to set apart.
    """
    where: dict[str, list[str]] = {}
    for r in found:
        where.setdefault(r.platform or "unrecorded", []).append(str(r))
    if set(where) == {"unrecorded"}:
        return None
    text = (
        "**Platforms.** Runs are bit-exact on one machine, not across CPU or GPU types; a re-run elsewhere "
        "matches in distribution, not digit for digit. "
    )
    if len(where) == 1:
        ((label, cells),) = where.items()
        return text + f"All {len(cells)} runs: {label}.\n"
    ranked = sorted(where.items(), key=lambda kv: (-len(kv[1]), kv[0] == "unrecorded", kv[0]))
    lines = [text + "Where the cells ran:\n", f"- {ranked[0][0]} ({len(ranked[0][1])}): every cell not listed below"]
    lines += [f"- {label} ({len(cells)}): {', '.join(cells)}" for label, cells in ranked[1:]]
    return "\n".join(lines) + "\n"


def preamble(spec: StudySpec, found: list[Result], recipes: dict[str, list[str]], platforms: str | None) -> list[str]:
    """The report's first sections: title, where its numbers come from, method, recipe, platforms
    (``recipes``: :func:`run_recipes`; ``platforms``: :func:`platforms_paragraph`)."""
    grid = any(r.grid for r in found)
    title = spec.report.get("title", f"Study {spec.name}")
    written_by = spec.report.get("written_by", f"tscnet study {spec.name}")
    layout = spec.report.get("layout", "`<model>/<policy>/<grid>/seed<k>/`" if grid else "`<model>/<policy>/seed<k>/`")
    aside = "model, seed" + (", " + ", ".join(f"`{k}`" for k in spec.grid_keys) if spec.grid_keys else "")
    sections = [
        f"# {title}: {len(found)} runs on {found[0].config['data']['name']}\n",
        f"Written by `{written_by}` from the committed per-run results in this folder "
        f"({layout}: config, metrics per epoch, final Δt profile, model card). "
        "Every number below is recomputed from those files.\n",
        method_paragraph(spec, grid),
    ]
    if len(recipes) > 1:
        sections.append(f"**WARNING: the runs do not share one recipe** ({aside} and placement aside):\n")
        sections += [f"- `{text}`: {', '.join(cells)}" for text, cells in recipes.items()] + [""]
    else:
        sections.append(f"Recipe (identical for every cell; {aside} and placement aside): `{next(iter(recipes))}`\n")
    if platforms:
        sections.append(platforms)
    return sections
