"""A study's report from its results folder: ``report.md``, ``summary.json`` and the PNG figures.

The sections in order: the preamble (:mod:`~tscnet.study.report.preamble`); per model with a one-key
grid, its sweep (:mod:`~tscnet.study.report.grid`); the depth transfer where the spec asks for it
(:mod:`tscnet.study.transfer`); per model and grid point, the arms' table, ablations and Holm-adjusted
comparisons (:mod:`~tscnet.study.report.summary`, :mod:`~tscnet.study.report.tables`) and figures
(:mod:`~tscnet.study.report.figures`). ``summary.json`` holds every number of ``report.md``, with the
run folders relative to the results folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...formats import stamped
from ..plan import SCRATCH_RECORD
from ..spec import StudySpec
from ..transfer import format_transfer, model_depths, plot_transfer, transfer_analysis
from .arms import is_controller, ordered
from .figures import group_figures, plot_sweep
from .grid import format_sweep, sweep_analysis
from .load import Result, load_results
from .preamble import platforms_paragraph, preamble, run_recipes
from .summary import baseline_key, summarize_group
from .tables import format_ablations, format_holm, format_table


@dataclass
class StudyReport:
    """What :func:`build_study_report` wrote: ``report.md`` (``path``), the ``summary.json`` document
    (``summary``) and every file, figures included (``files``)."""

    path: Path
    summary: dict
    files: list[Path] = field(default_factory=list)  # report.md, summary.json and every figure


def _grid_sort(values: dict) -> tuple:
    return tuple((k, v if isinstance(v, (int, float)) else str(v)) for k, v in values.items())


def _groups(found: list[Result], models: list[str]) -> dict[tuple[str, str], list[Result]]:
    """The results by model (in ``models``' order) and grid point (in grid order): ``{(model, grid tag): results}``."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in sorted(found, key=lambda r: (models.index(r.model), _grid_sort(r.grid))):
        groups.setdefault((r.model, r.grid_tag), []).append(r)
    return groups


def _group_text(spec: StudySpec, heading: str, summary: dict, figures: dict[str, Path], grid: bool) -> list[str]:
    """One model's (and grid point's) sections: its table, the ablations, the Holm-adjusted comparisons
    with the baseline and its figures."""
    sections = [f"## {heading}\n", format_table(spec, summary) + "\n"]
    ablations = format_ablations(summary)
    if ablations:
        sections += [
            "Ablations against the run each was built from (same model and seed; negative = the ablation is better):\n",
            ablations + "\n",
        ]
    corrected = format_holm(spec, summary)
    if corrected:
        sections += [
            "Multiple comparisons: the table's intervals are per comparison. Corrected together "
            f"(Holm–Bonferroni over every policy's comparison with `{spec.baseline}` for this "
            f"{'model and grid point' if grid else 'model'}; * marks an adjusted p below 0.05):\n",
            corrected + "\n",
        ]
    sections += [
        f"![test error per epoch]({figures['curves'].name})\n",
        f"![test error over the last epochs]({figures['curves_end'].name})\n",
    ]
    if "profiles" in figures:
        sections.append(f"![final Δt per block]({figures['profiles'].name})\n")
    if "heatmap" in figures:
        sections.append(f"![final Δt per block and channel]({figures['heatmap'].name})\n")
    return sections


class _Page:
    """The report while it is written: the sections of ``report.md``, the files written beside it, and
    what ``summary.json`` lists per model (each group's summary, the names of its figures)."""

    def __init__(self, spec: StudySpec, results: Path) -> None:
        self.spec, self.results = spec, results
        self.sections: list[str] = []
        self.files: list[Path] = []
        self.summaries: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}

    def add_sweep(self, model: str, sweep: dict, chance: float) -> None:
        """A model's one-key grid: its figure and tables."""
        figure = plot_sweep(model, sweep, chance, self.results / f"{model}_{sweep['key'].rpartition('.')[2]}_sweep.png")
        self.files.append(figure)
        self.sections += [
            f"## {model}: final test error against `{sweep['key']}`\n",
            f"![final test error against {sweep['key']}]({figure.name})\n",
            format_sweep(sweep, chance) + "\n",
        ]

    def add_transfer(self, transfer: dict, sweeps: dict[str, dict]) -> None:
        """The depth transfer of the best grid value: its figure (controllers solid) and table."""
        controller_arms = {
            arm for sweep in sweeps.values() for arm, e in sweep["arms"].items() if is_controller(e["steps"])
        }
        figure = plot_transfer(transfer, controller_arms, self.results / "depth_transfer.png")
        self.files.append(figure)
        self.sections += [
            f"## Depth transfer: the best `{transfer['key']}` across {', '.join(transfer['models'])}\n",
            f"![best {transfer['key']} against depth]({figure.name})\n",
            format_transfer(transfer) + "\n",
        ]

    def add_group(self, model: str, tag: str, group: list[Result]) -> None:
        """One model and grid point (``tag``, ``""`` without a grid): its statistics, tables and figures."""
        summary = summarize_group(self.spec, group)
        values = group[0].grid
        name = f"{model}_{tag}" if tag else model
        heading = f"{model}, " + ", ".join(f"{k} = {v}" for k, v in values.items()) if tag else model
        made = group_figures(self.spec, name, heading, group, self.results)
        self.files += list(made.values())
        names = {k: v.name for k, v in made.items()}
        if tag:
            self.summaries.setdefault(model, {"grid": {}})["grid"][tag] = {"values": values, **summary}
            self.figures.setdefault(model, {})[tag] = names
        else:
            self.summaries[model] = summary
            self.figures[model] = names
        self.sections += _group_text(self.spec, heading, summary, made, bool(tag))


def _relative(summary: dict, results: Path) -> dict:
    """A group's summary with its run folders relative to ``results``."""
    return {
        **summary,
        "rows": [{**row, "runs": [os.path.relpath(f, results) for f in row["runs"]]} for row in summary["rows"]],
    }


def _models_json(summaries: dict[str, Any], sweeps: dict[str, dict], results: Path) -> dict[str, Any]:
    """``summary.json``'s ``models``: per model its summary (per grid point, with a grid) and its sweep,
    run folders relative to ``results``."""
    models = {
        model: (
            {"grid": {t: _relative(s, results) for t, s in summary["grid"].items()}}
            if "grid" in summary
            else _relative(summary, results)
        )
        for model, summary in summaries.items()
    }
    for model, sweep in sweeps.items():
        models[model]["sweep"] = json.loads(json.dumps(sweep, default=list))
        for entry in models[model]["sweep"]["arms"].values():
            for point in entry["points"] + ([entry["best"]] if entry["best"] else []):
                point["runs"] = [os.path.relpath(f, results) for f in point["runs"]]
    return models


def _method_json(spec: StudySpec, grid: bool) -> dict[str, Any]:
    """``summary.json``'s ``method``: what each statistic is, in one line each."""
    key = baseline_key(spec)
    return {
        "error": "final-epoch test error %, mean ± sample std over seeds",
        "ci": "Welch t-test 95 % CI of mean(policy) - mean(reference), scipy.stats.ttest_ind(equal_var=False)",
        "p_holm": f"{key}_p_holm: Welch p-value vs {spec.baseline}, Holm-Bonferroni adjusted over every "
        f"policy's comparison with {spec.baseline} for the model" + (" and grid point" if grid else ""),
        "convergence": "mean over seeds of |err_E - err_{E-3}|",
        "peers": spec.peers,
        "vs_source": "ablation - its source run: paired t-test over common seeds (scipy.stats.ttest_rel) and Welch",
    }


def build_study_report(spec: StudySpec, results: Path) -> StudyReport:
    """Write ``report.md``, ``summary.json`` and the figures into ``results`` from its collected cells."""
    results = Path(results)
    found = load_results(results)
    if not found:
        raise UserError(f"no collected results under {results}")
    models = ordered(sorted({r.model for r in found}), spec.models)
    recipes, platforms = run_recipes(found), platforms_paragraph(found)
    page = _Page(spec, results)
    page.sections += preamble(spec, found, recipes, platforms)
    sweeps = {model: sweep for model in models if (sweep := sweep_analysis(spec, model, found)) is not None}
    for model, sweep in sweeps.items():
        page.add_sweep(model, sweep, next(r.chance for r in found if r.model == model))
    transfer = transfer_analysis(sweeps, model_depths(found)) if spec.report.get("transfer") else None
    if transfer is not None:
        page.add_transfer(transfer, sweeps)
    for (model, tag), group in _groups(found, models).items():
        page.add_group(model, tag, group)
    path = results / "report.md"
    path.write_text("\n".join(page.sections))
    document = {
        "method": _method_json(spec, any(r.grid for r in found)),
        "recipe": [json.loads(text) for text in recipes],
        "recipe_cells": list(recipes.values()),
        "models": _models_json(page.summaries, sweeps, results),
        "figures": page.figures,
    }
    if transfer is not None:
        document["transfer"] = transfer
    if platforms:
        document["platforms"] = {str(r): r.platform or "unrecorded" for r in found}
    (results / "summary.json").write_text(json.dumps(stamped(document), indent=2) + "\n")
    record = results / SCRATCH_RECORD  # where the scratch runs are: kept (and committed) with the report
    return StudyReport(
        path, document, [path, results / "summary.json", *page.files, *([record] if record.is_file() else [])]
    )
