"""A study's report from its results folder only: ``report.md``, ``summary.json`` and PNG figures.

Per model (and per grid point, with a grid): final-epoch test error mean ± sample std and per seed,
T, convergence (mean over seeds of ``|err_E − err_{E−3}|``), Welch 95 % intervals of each arm's
difference to the baseline and to the best peer, ablations against their source (paired by seed
and Welch), and the p-values of the comparisons with the baseline Holm-adjusted over that family.
A failed run counts at chance error (100 − 100 / classes %): one that diverged (a non-finite loss) is
marked †, one that finished at chance level (did not learn) ‡. Where cells recorded
their platform (``platform.json`` or the model card), the report says which cells ran where.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import UserError
from ..formats import stamped
from ..jobs.run_folder import RunFolder
from ..stepping import policy_class
from ..train.run import read_diverged
from .plan import SCRATCH_RECORD, grid_tag
from .results import (
    CELL_FILE,
    DIVERGED_FILES,
    RESULT_FILES,
    definition,
    did_not_learn,
    read_cell_info,
    read_metrics_or_empty,
)
from .spec import StudySpec, ablation_kind
from .stats import holm, paired, welch
from .transfer import format_transfer, model_depths, plot_transfer, transfer_analysis


def _controller(steps: str) -> bool:
    """Whether an arm's Δt comes from a controller (solid lines in the figures); an ablation's is frozen."""
    return not ablation_kind(steps) and policy_class(steps).controller


def _constant(steps: str) -> bool:
    """Whether an arm's Δt is a constant its steps state (no heatmap); an ablation's comes from its source run."""
    return not ablation_kind(steps) and policy_class(steps).constant


@dataclass
class Result:
    """One collected cell, read back from its results folder."""

    model: str
    arm: str
    steps: str  # the arm's policy (an ablation's "profile-of:SRC"), for figure styles
    seed: int
    grid: dict
    folder: Path
    config: dict
    metrics: list[dict]
    profile: dict  # {} for a diverged run
    card: dict
    info: dict
    diverged: str | None = None

    @property
    def grid_tag(self) -> str:
        return grid_tag(tuple(self.grid.items()))

    @property
    def chance(self) -> float:
        return 100.0 - 100.0 / int(self.config["model"]["num_classes"])

    @property
    def errors(self) -> list[float]:
        """Test error per epoch (NaN where ``train.eval_epochs`` skipped the evaluation); a diverged run
        is at chance from the epoch it diverged in to the end."""
        errors = [float(m.get("test_error", math.nan)) for m in self.metrics]
        if self.diverged:
            errors += [self.chance] * (int(self.config["train"]["epochs"]) - len(errors))
        return errors

    @property
    def error(self) -> float:
        """Final test error; a diverged run counts at chance (also one that finished at chance level)."""
        return self.chance if self.diverged else self.errors[-1]

    @property
    def did_not_learn(self) -> bool:
        """It finished with finite losses at a final error at chance level (``diverged`` holds why)."""
        return bool(self.diverged) and did_not_learn(self.diverged)

    @property
    def outcome(self) -> str | None:
        """``"diverged"`` (a non-finite loss), ``"did not learn"`` (finished at chance level) or ``None``."""
        return None if not self.diverged else ("did not learn" if self.did_not_learn else "diverged")

    @property
    def loss_at_step(self) -> dict[int, float]:
        """Mean training loss around given global steps (``loss_at_step`` of the metrics rows and of
        ``diverged.json``), ``{step: loss}``."""
        found: dict[int, float] = {}
        rows = [m.get("loss_at_step") for m in self.metrics]
        try:
            rows.append((read_diverged(self.folder) or {}).get("loss_at_step"))
        except (OSError, UserError):  # unreadable or damaged: the metrics rows alone
            pass
        for row in rows:
            for step, loss in (row or {}).items() if isinstance(row, dict) else ():
                try:
                    found[int(step)] = float(loss)
                except (TypeError, ValueError):
                    continue
        return found

    @property
    def platform(self) -> str | None:
        """Where the run ran (``platform.json``, else the model card's ``platform``), ``None`` if unrecorded."""
        record = None
        try:
            record = json.loads((self.folder / RunFolder.PLATFORM).read_text())
            if isinstance(record, dict):  # versioned: {"format_version": 1, "platforms": [...]}
                record = record.get("platforms")
        except (OSError, ValueError):
            record = self.card.get("platform") if isinstance(self.card, dict) else None
        return platform_label(record) if record else None

    def __str__(self) -> str:
        grid = f" {self.grid_tag}" if self.grid else ""
        return f"{self.model} {self.arm}{grid} seed{self.seed}"


def platform_label(record: Any) -> str:
    """A short label of a platform record (``platform.json``: a list, one entry per machine the run ran
    on, first to last): ``"AMD EPYC 7B13, 1 thread, torch 2.14.1"``, joined by `` → `` when it moved."""
    if isinstance(record, list):
        labels = list(dict.fromkeys(platform_label(r) for r in record))
        return " → ".join(labels) if labels else "unrecorded"
    if not isinstance(record, dict):
        return str(record)
    device = record.get("device") or record.get("cpu")
    parts = [str(device)] if device else []
    if (record.get("world_size") or 1) > 1:
        parts.append(f"{record['world_size']} processes")
    threads = record.get("threads")
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if record.get("torch"):
        parts.append(f"torch {record['torch']}")
    return ", ".join(parts) if parts else json.dumps(record, sort_keys=True)


# libyaml's parser where PyYAML was built with it: the same documents (built by the same SafeConstructor)
# about 7x faster than the pure-Python one, which took 9 of a 1,000-cell report's 11 s besides its figures.
_CONFIG_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_config(path: Path) -> dict:
    """A collected cell's ``config.yaml``, as :func:`~tscnet.study.results.read_yaml` reads it."""
    return yaml.load(Path(path).read_text(), Loader=_CONFIG_LOADER)


def load_results(results: Path) -> list[Result]:
    """Every collected cell under ``results`` (``<model>/<arm>/[<grid>/]seed<k>/`` with ``cell.json``)."""
    found = []
    markers = sorted([*Path(results).glob(f"*/*/seed*/{CELL_FILE}"), *Path(results).glob(f"*/*/*/seed*/{CELL_FILE}")])
    for marker in markers:
        folder = marker.parent
        info = read_cell_info(folder)
        if info is None:
            continue
        diverged = info.get("diverged")
        if not all((folder / name).is_file() for name in (DIVERGED_FILES if diverged else RESULT_FILES)):
            continue
        metrics = read_metrics_or_empty(folder)
        if not metrics and not diverged:
            continue

        def read(name: str, folder: Path = folder) -> dict:
            try:
                return json.loads((folder / name).read_text())
            except (OSError, ValueError):
                return {}

        arm = info.get("arm", info["policy"])
        steps = info["policy"] if ablation_kind(str(info["policy"])) else str(info.get("policy", arm))
        found.append(
            Result(
                info["model"],
                arm,
                steps,
                int(info["seed"]),
                dict(info.get("grid") or {}),
                folder,
                _read_config(folder / RunFolder.CONFIG),
                metrics,
                {} if diverged else read(RunFolder.STEPS),
                read(RunFolder.CARD),
                info,
                diverged,
            )
        )
    return found


# ---------------------------------------------------------------------------------------------
# Tables


def baseline_key(spec: StudySpec) -> str:
    """The summary key of the comparison with the baseline: ``vs_none`` when it is ``none``, else ``vs_baseline``."""
    return "vs_none" if spec.baseline == "none" else "vs_baseline"


def arm_label(spec: StudySpec, name: str) -> str:
    """The arm's label in tables and legends (an ablation not in the spec: what it freezes, of which arm)."""
    try:
        return spec.arm(name).label
    except KeyError:
        kind = ablation_kind(name)
        source = name.partition(":")[2]
        return (
            f"{source}'s final Δt profile, frozen"
            if kind == "profile-of"
            else f"fixed Δt = T/D of {source}"
            if kind == "fixed-of"
            else name
        )


def arm_source(spec: StudySpec, result: Result) -> str | None:
    """The arm an ablation's result was made from (``tsc`` for ``profile-of:tsc``), else ``None``."""
    try:
        return spec.arm(result.arm).source
    except KeyError:
        return result.steps.partition(":")[2] if ablation_kind(result.steps) else None


def _order(names: list[str], known: list[str]) -> list[str]:
    first = [n for n in known if n in names]
    return first + sorted(n for n in names if n not in first)


def summarize_group(spec: StudySpec, group: list[Result]) -> dict:
    """One model (and grid point): ``{"best_peer", "rows"}``, a row per arm with the report's statistics."""
    by_arm: dict[str, list[Result]] = {}
    for r in group:
        by_arm.setdefault(r.arm, []).append(r)
    key = baseline_key(spec)
    rows = {}
    for arm in _order(list(by_arm), [a.name for a in spec.arms]):
        rs = sorted(by_arm[arm], key=lambda r: r.seed)
        errors = [r.error for r in rs]
        drift = [abs(r.errors[-1] - r.errors[-4]) for r in rs if len(r.errors) >= 4 and not r.diverged]
        drift = [d for d in drift if math.isfinite(d)]  # epoch E-3 not evaluated (train.eval_epochs): unknown
        times = [float(r.profile["evolution_time"]) for r in rs if not r.diverged]
        rows[arm] = {
            "policy": arm,
            "label": arm_label(spec, arm),
            "steps": sorted({str(r.config["model"]["steps"]) for r in rs}),
            "seeds": [r.seed for r in rs],
            "n": len(rs),
            "epochs": sorted({len(r.metrics) for r in rs}),
            "test_errors": errors,
            "mean": statistics.fmean(errors),
            "std": statistics.stdev(errors) if len(errors) > 1 else None,
            "failed": [r.seed for r in rs if r.diverged],  # counted at chance: diverged or did not learn
            "diverged": [r.seed for r in rs if r.outcome == "diverged"],
            "did_not_learn": [r.seed for r in rs if r.did_not_learn],
            "T": [None if r.diverged else float(r.profile["evolution_time"]) for r in rs],
            "T_mean": statistics.fmean(times) if times else None,
            "last3_change": statistics.fmean(drift) if drift else None,
            "last3_change_per_seed": drift,
            "runs": [str(r.folder) for r in rs],
        }
    sources = {r.arm: arm_source(spec, r) for r in group}
    peers = [p for p in spec.peers if p in rows]
    best = min(peers, key=lambda p: rows[p]["mean"]) if peers else None
    base = spec.baseline
    for arm, row in rows.items():
        row[key] = welch(row["test_errors"], rows[base]["test_errors"]) if base in rows and arm != base else None
        row["vs_best_peer"] = (
            welch(row["test_errors"], rows[best]["test_errors"]) if best is not None and arm != best else None
        )
        source, row["vs_source"] = sources.get(arm), None
        if source in rows:
            mine, theirs = (dict(zip(rows[p]["seeds"], rows[p]["test_errors"])) for p in (arm, source))
            row["vs_source"] = {
                "source": source,
                "paired": paired(mine, theirs),
                "welch": welch(row["test_errors"], rows[source]["test_errors"]),
            }
    # One family per model and grid point: every arm's comparison with the baseline, corrected together.
    family = [row for row in rows.values() if row[key] is not None]
    for row, p in zip(family, holm([row[key]["p"] for row in family])):
        row[f"{key}_p_holm"] = p
    return {"best_peer": best, "rows": list(rows.values())}


def fmt_ci(test: dict | None) -> str:
    """``+1.23 [+0.45, +2.01] *`` from a test's ``diff`` and ``ci95`` (``*``: the interval excludes 0;
    ``—`` without a test)."""
    if test is None:
        return "—"
    low, high = test["ci95"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{test['diff']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def fmt_mean_std(entry: dict) -> str:
    """``26.17 ± 0.81`` from an entry's ``mean`` and ``std`` (``26.17`` alone where one seed gives no std)."""
    return f"{entry['mean']:.2f}" + ("" if entry["std"] is None else f" ± {entry['std']:.2f}")


def fmt_p(p: float) -> str:
    """A p-value with 3 decimals, in scientific notation below 0.001."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def format_table(spec: StudySpec, summary: dict) -> str:
    """The Markdown table of one model's (and grid point's) summary: a row per policy."""
    best, key = summary["best_peer"], baseline_key(spec)
    lines = [
        f"| policy | seeds | final test error % (mean ± std) | per seed | T (mean) | last-3-epoch change | "
        f"Δ vs `{spec.baseline}` [95 % CI] | Δ vs best peer `{best}` [95 % CI] |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for r in summary["rows"]:
        change = "—" if r["last3_change"] is None else f"{r['last3_change']:.2f}"
        label = f"`{r['policy']}`" + ("" if r["label"] == r["policy"] else f" ({r['label']})")
        per_seed = ", ".join(
            f"{e:.2f}" + ("†" if seed in r["diverged"] else "‡" if seed in r["did_not_learn"] else "")
            for e, seed in zip(r["test_errors"], r["seeds"])
        )
        t_mean = "—" if r["T_mean"] is None else f"{r['T_mean']:.3f}"
        lines.append(
            f"| {label} | {r['n']} ({', '.join(map(str, r['seeds']))}) | {fmt_mean_std(r)} | "
            f"{per_seed} | {t_mean} | {change} | {fmt_ci(r[key])} | {fmt_ci(r['vs_best_peer'])} |"
        )
    return "\n".join(lines)


def format_ablations(summary: dict) -> str | None:
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
            f"| `{r['policy']}` | `{test['source']}` | {seeds} | {fmt_ci(test['paired'])} | {fmt_ci(test['welch'])} |"
        )
    return "\n".join(lines)


def format_holm(spec: StudySpec, summary: dict) -> str | None:
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
            f"| `{r['policy']}` | {r[key]['diff']:+.2f} | {fmt_p(r[key]['p'])} | {fmt_p(r[f'{key}_p_holm'])}{mark} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures


def group_figures(spec: StudySpec, name: str, title: str, group: list[Result], out: Path) -> dict[str, Path]:
    """Test error per epoch, over the last epochs, final Δt per block and the Δt heatmaps of one group."""
    from ..analysis.plots import Series, plot_dt_heatmaps, plot_series

    groups: dict[str, list[Result]] = {}
    for r in sorted(group, key=lambda r: r.seed):
        groups.setdefault(r.arm, []).append(r)
    order = _order(list(groups), [a.name for a in spec.arms])
    steps = {a: groups[a][0].steps for a in order}
    dashed = {a: not _controller(steps[a]) for a in order}
    files = {}
    curves = [Series.from_runs(a, [r.errors for r in groups[a]], dashed=dashed[a]) for a in order]
    note = "solid: Δt from a controller; dashed: without"
    files["curves"] = plot_series(
        curves,
        out / f"{name}_test_error.png",
        "test error (%)",
        f"{title}: test error per epoch (mean ± std over seeds)",
        note=note,
    )
    epochs = min(s.values.shape[1] for s in curves)
    last = min(epochs, max(4, epochs // 2))  # the end of training, where the policies separate (or not)
    tail = [Series(s.label, s.values[:, epochs - last : epochs], s.dashed) for s in curves]
    files["curves_end"] = plot_series(
        tail,
        out / f"{name}_test_error_end.png",
        "test error (%)",
        f"{title}: test error over the last {last} epochs (mean ± std over seeds)",
        note=note,
        first=epochs - last + 1,
    )
    finished = {a: [r for r in groups[a] if not r.diverged and r.profile] for a in order}
    profiles = [
        Series.from_runs(a, [[float(np.mean(b)) for b in r.profile["dt"]] for r in finished[a]], dashed=dashed[a])
        for a in order
        if finished[a]
    ]
    if profiles:
        files["profiles"] = plot_series(
            profiles,
            out / f"{name}_dt_profile.png",
            "final mean_c Δt_d",
            f"{title}: final step size of each block (mean over channels; mean ± std over seeds)",
            note=note,
            xlabel="residual block d (1 = first)",
        )
    learned = [a for a in order if not _constant(steps[a]) and finished[a]]
    if learned:
        panels = [
            (f"{a} (seed {finished[a][0].seed})", [np.asarray(b, dtype=float) for b in finished[a][0].profile["dt"]])
            for a in learned
        ]
        files["heatmap"] = plot_dt_heatmaps(panels, out / f"{name}_dt_heatmap.png")
    return files


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """What :func:`build_report` wrote: ``report.md`` (``path``), the ``summary.json`` document
    (``summary``) and every file, figures included (``files``)."""

    path: Path
    summary: dict
    files: list[Path] = field(default_factory=list)  # report.md, summary.json and every figure


def _recipes(spec: StudySpec, found: list[Result]) -> dict[str, list[str]]:
    """The recipe of each run (model, seed, grid keys, the arm's own overrides and placement aside)
    as canonical JSON → the runs with it."""
    from ..train.config import DEFAULTS

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
    # A key some runs' configs lack (saved before the schema had it) reads as its default there: left
    # out where every run that has it holds the default, filled in with the default otherwise.
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
    recipes: dict[str, list[str]] = {}
    for r, recipe in zip(found, defined):
        recipes.setdefault(json.dumps(recipe, sort_keys=True), []).append(str(r))
    return recipes


def _method(spec: StudySpec, grid: bool) -> str:
    base = spec.baseline
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
    if base != "none":
        text += f"Baseline: `{base}`. "
    sources: dict[str, list] = {}
    for arm in spec.arms:
        if arm.ablation:
            sources.setdefault(arm.source, []).append(arm)
    what = {
        "profile-of": "its final per-block, per-channel Δt frozen from the first step",
        "fixed-of": "a uniform fixed step equal to its final T / D",
    }
    for source, arms in sources.items():
        parts = [f"{what[a.ablation]} (`{a.name}`)" for a in arms]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]
        text += (
            f"Ablations of `{source}` (same model{', grid point' if grid else ''} and seed): {listed}; "
            f"{'each is' if len(parts) > 1 else 'it is'} also compared with its source run seed by seed "
            "(paired t-test, `scipy.stats.ttest_rel`, over the seeds both have). "
        )
    text += (
        "A run that diverged (the engine stopped it at a NaN or infinite loss) counts at chance error "
        "(100 − 100 / classes %) and is marked †; one that did not learn (finished at a final error at chance "
        "level) counts at chance too and is marked ‡; neither has T, a Δt profile or ablations.\n"
    )
    return text


def _platforms(found: list[Result]) -> str | None:
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


def build_report(spec: StudySpec, results: Path) -> Report:
    """Write ``report.md``, ``summary.json`` and the figures into ``results`` from its collected cells."""
    results = Path(results)
    found = load_results(results)
    if not found:
        raise UserError(f"no collected results under {results}")
    grid = any(r.grid for r in found)
    models = _order(sorted({r.model for r in found}), spec.models)
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in sorted(found, key=lambda r: (models.index(r.model), _grid_sort(r.grid))):
        groups.setdefault((r.model, r.grid_tag), []).append(r)
    recipes = _recipes(spec, found)
    title = spec.report.get("title", f"Study {spec.name}")
    written_by = spec.report.get("written_by", f"tscnet study {spec.name}")
    layout = spec.report.get("layout", "`<model>/<policy>/<grid>/seed<k>/`" if grid else "`<model>/<policy>/seed<k>/`")
    aside = "model, seed" + (", " + ", ".join(f"`{k}`" for k in spec.grid_keys) if spec.grid_keys else "")
    sections = [
        f"# {title}: {len(found)} runs on {found[0].config['data']['name']}\n",
        f"Written by `{written_by}` from the committed per-run results in this folder "
        f"({layout}: config, metrics per epoch, final Δt profile, model card). "
        "Every number below is recomputed from those files.\n",
        _method(spec, grid),
    ]
    if len(recipes) > 1:
        sections.append(f"**WARNING: the runs do not share one recipe** ({aside} and placement aside):\n")
        sections += [f"- `{text}`: {', '.join(cells)}" for text, cells in recipes.items()] + [""]
    else:
        sections.append(f"Recipe (identical for every cell; {aside} and placement aside): `{next(iter(recipes))}`\n")
    platforms = _platforms(found)
    if platforms:
        sections.append(platforms)
    summaries: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    files: list[Path] = []
    sweeps = {}
    for model in models:
        sweep = sweep_analysis(spec, model, found)
        if sweep is None:
            continue
        sweeps[model] = sweep
        chance = next(r.chance for r in found if r.model == model)
        figure = plot_sweep(model, sweep, chance, results / f"{model}_{sweep['key'].rpartition('.')[2]}_sweep.png")
        files.append(figure)
        sections += [
            f"## {model}: final test error against `{sweep['key']}`\n",
            f"![final test error against {sweep['key']}]({figure.name})\n",
            format_sweep(model, sweep, chance) + "\n",
        ]
    transfer = transfer_analysis(sweeps, model_depths(found)) if spec.report.get("transfer") else None
    if transfer is not None:
        controller_arms = {
            arm for sweep in sweeps.values() for arm, e in sweep["arms"].items() if _controller(e["steps"])
        }
        figure = plot_transfer(transfer, controller_arms, results / "depth_transfer.png")
        files.append(figure)
        sections += [
            f"## Depth transfer: the best `{transfer['key']}` across {', '.join(transfer['models'])}\n",
            f"![best {transfer['key']} against depth]({figure.name})\n",
            format_transfer(transfer) + "\n",
        ]
    for (model, tag), group in groups.items():
        summary = summarize_group(spec, group)
        values = group[0].grid
        name = f"{model}_{tag}" if tag else model
        heading = f"{model}, " + ", ".join(f"{k} = {v}" for k, v in values.items()) if tag else model
        made = group_figures(spec, name, heading, group, results)
        files += list(made.values())
        if tag:
            summaries.setdefault(model, {"grid": {}})["grid"][tag] = {"values": values, **summary}
            figures.setdefault(model, {})[tag] = {k: v.name for k, v in made.items()}
        else:
            summaries[model] = summary
            figures[model] = {k: v.name for k, v in made.items()}
        sections += [f"## {heading}\n", format_table(spec, summary) + "\n"]
        ablations = format_ablations(summary)
        if ablations:
            sections += [
                "Ablations against the run each was built from (same model and seed; negative = the "
                "ablation is better):\n",
                ablations + "\n",
            ]
        corrected = format_holm(spec, summary)
        if corrected:
            sections += [
                "Multiple comparisons: the table's intervals are per comparison. Corrected together "
                f"(Holm–Bonferroni over every policy's comparison with `{spec.baseline}` for this "
                f"{'model and grid point' if tag else 'model'}; * marks an adjusted p below 0.05):\n",
                corrected + "\n",
            ]
        sections += [
            f"![test error per epoch]({made['curves'].name})\n",
            f"![test error over the last epochs]({made['curves_end'].name})\n",
        ]
        if "profiles" in made:
            sections.append(f"![final Δt per block]({made['profiles'].name})\n")
        if "heatmap" in made:
            sections.append(f"![final Δt per block and channel]({made['heatmap'].name})\n")
    path = results / "report.md"
    path.write_text("\n".join(sections))

    def relative(summary: dict) -> dict:
        return {
            **summary,
            "rows": [{**row, "runs": [os.path.relpath(f, results) for f in row["runs"]]} for row in summary["rows"]],
        }

    rel = {
        model: (
            {"grid": {t: relative(s) for t, s in summary["grid"].items()}} if "grid" in summary else relative(summary)
        )
        for model, summary in summaries.items()
    }
    for model, sweep in sweeps.items():
        rel[model]["sweep"] = json.loads(json.dumps(sweep, default=list))
        for entry in rel[model]["sweep"]["arms"].values():
            for point in entry["points"] + ([entry["best"]] if entry["best"] else []):
                point["runs"] = [os.path.relpath(f, results) for f in point["runs"]]
    key = baseline_key(spec)
    document = {
        "method": {
            "error": "final-epoch test error %, mean ± sample std over seeds",
            "ci": "Welch t-test 95 % CI of mean(policy) - mean(reference), scipy.stats.ttest_ind(equal_var=False)",
            "p_holm": f"{key}_p_holm: Welch p-value vs {spec.baseline}, Holm-Bonferroni adjusted over every "
            f"policy's comparison with {spec.baseline} for the model" + (" and grid point" if grid else ""),
            "convergence": "mean over seeds of |err_E - err_{E-3}|",
            "peers": spec.peers,
            "vs_source": "ablation - its source run: paired t-test over common seeds (scipy.stats.ttest_rel) and Welch",
        },
        "recipe": [json.loads(text) for text in recipes],
        "recipe_cells": list(recipes.values()),
        "models": rel,
        "figures": figures,
    }
    if transfer is not None:
        document["transfer"] = transfer
    if platforms:
        document["platforms"] = {str(r): r.platform or "unrecorded" for r in found}
    (results / "summary.json").write_text(json.dumps(stamped(document), indent=2) + "\n")
    record = results / SCRATCH_RECORD  # where the scratch runs are: kept (and committed) with the report
    return Report(path, document, [path, results / "summary.json", *files, *([record] if record.is_file() else [])])


def _grid_sort(values: dict) -> tuple:
    return tuple((k, v if isinstance(v, (int, float)) else str(v)) for k, v in values.items())


# ---------------------------------------------------------------------------------------------
# A grid over one key (per model): stability, best values, sensitivity, early speed


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def sweep_analysis(spec: StudySpec, model: str, found: list[Result]) -> dict | None:
    """The one-key grid of ``model``: per arm and value, and per arm its largest stable value, best value
    (with Welch/Holm against the best peer at its own best value) and spread. ``None`` unless the
    model's cells vary exactly one grid key.

    Stable: every planned seed of the model has a result at that value and none diverged. Best value:
    the lowest mean final error (diverged seeds at chance). Spread: max − min over values of the mean
    final error, over every value and over the stable values only.
    """
    mine = [r for r in found if r.model == model and r.grid]
    keys = {tuple(r.grid) for r in mine}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        return None
    key = next(iter(keys))[0]
    values = sorted(
        {_grid_value(r.grid[key]) for r in mine}, key=lambda v: (not _numeric(v), v if _numeric(v) else str(v))
    )
    planned = spec.seeds_for(model) if model in spec.models else sorted({r.seed for r in mine})
    arms = _order(sorted({r.arm for r in mine}), [a.name for a in spec.arms])
    steps = sorted({s for r in mine for s in r.loss_at_step}) or [100, 300]
    out: dict[str, Any] = {"key": key, "values": values, "seeds": planned, "loss_steps": steps, "arms": {}}
    for arm in arms:
        points = []
        for value in values:
            rs = sorted((r for r in mine if r.arm == arm and _grid_value(r.grid[key]) == value), key=lambda r: r.seed)
            if not rs:
                continue
            errors = [r.error for r in rs]
            mean, std = _mean_std(errors)
            first = [float(r.metrics[0].get("test_error", math.nan)) if r.metrics else r.chance for r in rs]
            times = [float(r.profile["evolution_time"]) for r in rs if not r.diverged and r.profile]
            losses = {}
            for step in steps:
                have = [r.loss_at_step[step] for r in rs if step in r.loss_at_step]
                losses[str(step)] = {"mean": statistics.fmean(have) if have else None, "n": len(have)}
            points.append(
                {
                    "value": value,
                    "seeds": [r.seed for r in rs],
                    "n": len(rs),
                    "test_errors": errors,
                    "mean": mean,
                    "std": std,
                    "failed": [r.seed for r in rs if r.diverged],
                    "diverged": [r.seed for r in rs if r.outcome == "diverged"],
                    "did_not_learn": [r.seed for r in rs if r.did_not_learn],
                    "stable": {r.seed for r in rs} >= set(planned) and not any(r.diverged for r in rs),
                    "error_epoch1": statistics.fmean(first) if all(map(math.isfinite, first)) else None,
                    "T_mean": statistics.fmean(times) if times else None,
                    "loss_at_step": losses,
                    "runs": [str(r.folder) for r in rs],
                }
            )
        stable = [p for p in points if p["stable"]]
        largest = stable[-1]["value"] if stable else None  # values ascend
        above = [p for p in points if largest is None or values.index(p["value"]) > values.index(largest)]
        best = min(points, key=lambda p: p["mean"]) if points else None
        means = [p["mean"] for p in points]
        stable_means = [p["mean"] for p in stable]
        out["arms"][arm] = {
            "steps": next(r.steps for r in mine if r.arm == arm),
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
    peers = [p for p in spec.peers if p in out["arms"] and out["arms"][p]["best"]]
    best_peer = min(peers, key=lambda p: out["arms"][p]["best"]["mean"]) if peers else None
    out["best_peer"] = best_peer
    family = []
    for arm, entry in out["arms"].items():
        entry["vs_best_peer"] = None
        if best_peer is not None and arm != best_peer and entry["best"]:
            entry["vs_best_peer"] = welch(entry["best"]["test_errors"], out["arms"][best_peer]["best"]["test_errors"])
            if entry["vs_best_peer"] is not None:
                family.append(entry)
    for entry, p in zip(family, holm([e["vs_best_peer"]["p"] for e in family])):
        entry["vs_best_peer_p_holm"] = p
    return out


def _grid_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_value(value: Any) -> str:
    return "—" if value is None else (",".join(map(str, value)) if isinstance(value, tuple) else str(value))


def _largest_stable(entry: dict, values: list) -> str:
    """``0.1``; ``< 0.01`` (diverged at every value); ``0.1 (0.3 pending)`` while seeds are missing."""
    if entry.get("below_grid"):
        return f"< {_fmt_value(values[0])}"
    pending = entry.get("pending") or []
    text = _fmt_value(entry["largest_stable"])
    return text + (f" ({', '.join(map(_fmt_value, pending))} pending)" if pending else "")


def _matrix_cell(point: dict | None, planned: int) -> str:
    """``26.17 ± 0.81``; ``✗ 2/3 (35.59)``: 2 of 3 seeds diverged, the others' errors in brackets."""
    if point is None:
        return "—"
    bad = set(point["failed"])
    if bad:
        others = [f"{e:.2f}" for seed, e in zip(point["seeds"], point["test_errors"]) if seed not in bad]
        return f"✗ {len(bad)}/{point['n']}" + (f" ({', '.join(others)})" if others else "")
    return fmt_mean_std(point) + (f" (n = {point['n']})" if point["n"] < planned else "")


def format_sweep_matrix(sweep: dict) -> str:
    """Final test error per arm (rows) and grid value (columns): the figure of :func:`plot_sweep` in numbers."""
    key, values, planned = sweep["key"], sweep["values"], len(sweep["seeds"])
    lines = [
        "| policy | " + " | ".join(f"`{key}` = {_fmt_value(v)}" for v in values) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for arm, e in sweep["arms"].items():
        at = {p["value"]: p for p in e["points"]}
        lines.append(f"| `{arm}` | " + " | ".join(_matrix_cell(at.get(v), planned) for v in values) + " |")
    return "\n".join(lines)


def format_sweep(model: str, sweep: dict, chance: float) -> str:
    """The tables of :func:`sweep_analysis`: stability, best value and sensitivity; early speed."""
    key, best_peer = sweep["key"], sweep["best_peer"]
    seeds = ", ".join(map(str, sweep["seeds"]))
    family = sum(1 for e in sweep["arms"].values() if e.get("vs_best_peer_p_holm") is not None)
    lines = [
        f"Final test error % per policy and `{key}`, mean ± std over seeds {seeds}. ✗ k/n: k of the n seeds "
        "diverged or ended at chance level, and the errors of the others are in brackets; (n = k): only k seeds "
        "so far.\n",
        format_sweep_matrix(sweep),
        "",
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
        at_best = "—" if best is None else f"{fmt_mean_std(best)} (n = {best['n']})"
        p = e.get("vs_best_peer_p_holm")
        mark = " *" if p is not None and p < 0.05 else ""
        lines.append(
            f"| `{arm}` | {_largest_stable(e, sweep['values'])} | {_fmt_value(e['best_value'])} | {at_best} | "
            f"{fmt_ci(e['vs_best_peer'])} | {'—' if p is None else fmt_p(p) + mark} | {_fmt(e['spread'])} | "
            f"{_fmt(e['spread_stable'])} |"
        )
    steps = sweep["loss_steps"]
    lines += [
        "",
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
    for arm, e in sweep["arms"].items():
        for pt in e["points"]:
            losses = []
            for s in steps:
                loss = pt["loss_at_step"][str(s)]
                text = _fmt(loss["mean"], 3)
                if loss["mean"] is not None and loss["n"] < pt["n"]:
                    text += f" ({loss['n']}/{pt['n']})"
                losses.append(text)
            diverged = f", {len(pt['failed'])}×" if pt["failed"] else ""
            final = fmt_mean_std(pt)
            lines.append(
                f"| `{arm}` | {_fmt_value(pt['value'])} | {pt['n']}{diverged} | "
                + " | ".join(losses)
                + f" | {_fmt(pt['error_epoch1'], 2)} | {final} | {_fmt(pt['T_mean'], 3)} |"
            )
    return "\n".join(lines)


def plot_sweep(model: str, sweep: dict, chance: float, path: Path) -> Path:
    """Final test error against the grid value, one line per arm (mean ± std over seeds; diverged seeds ×, at chance)."""
    from ..analysis.plots import _colors, _figure, _save

    fig, axes = _figure(1, 1, 9, 5.5)
    ax = axes[0, 0]
    numeric = all(_numeric(v) for v in sweep["values"])
    positions = {v: (v if numeric else i) for i, v in enumerate(sweep["values"])}
    arms = list(sweep["arms"])
    log_x = (
        numeric
        and min(sweep["values"]) > 0
        and (sweep["key"].rpartition(".")[2].startswith("lr") or max(sweep["values"]) / min(sweep["values"]) >= 10)
    )
    span = (max(positions.values()) - min(positions.values())) or 1.0
    for i, (arm, color) in enumerate(zip(arms, _colors(len(arms)))):
        points = sweep["arms"][arm]["points"]
        # each arm a little to the side (×1.5 % a step on a log axis), so error bars of equal means stay apart
        dodge = (i - (len(arms) - 1) / 2) * 0.015
        xs = [positions[p["value"]] * (1 + dodge) if log_x else positions[p["value"]] + dodge * span for p in points]
        dashed = not _controller(sweep["arms"][arm]["steps"])
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
        ax.set_xticks(sweep["values"], [_fmt_value(v) for v in sweep["values"]])  # the grid, not powers of 10
        ax.minorticks_off()
    if not numeric:
        ax.set_xticks(list(positions.values()), [_fmt_value(v) for v in sweep["values"]])
    ax.axhline(chance, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel=sweep["key"],
        ylabel="final test error (%)",
        title=f"{model}: final test error against {sweep['key']}\n(mean ± std over seeds; × a diverged seed, counted at chance)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
