"""A Markdown report of a set of runs of one dataset: curves, learned steps, summary table.

Runs are grouped by ``(model, step policy)``; runs in a group differ by ``train.seed`` (runs whose
recipes differ in more are groups of their own, labelled with the keys that differ). Errors are
**final-epoch** test errors, mean ± sample std over seeds (never the best epoch). Figures read the
runs' own ``metrics.jsonl``; the Δt heat maps read the last checkpoint of each group's first seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats import stamped
from ..stepping import step_sizes
from ..stepping.profile import read_profile
from ..train.metrics import chance_error, last_test_error
from ..train.run import Run, load_run, read_diverged
from .plots import (
    Series,
    plot_block_series,
    plot_dt_heatmaps,
    plot_series,
    plot_stability_vs_depth,
)
from .runs import (
    group_label,
    group_runs,
    has_controller,
    learns_steps,
    load_runs,
    policy_of,
    seed_of,
)
from .stability import STABILITY_FILE, format_stability_table
from .stats import at_chance, format_mean_std, format_number, mean_or_none, mean_std

__all__ = ["RunsReport", "REPORT_FILES", "build_runs_report", "summarize", "format_summary"]


def _metric(run: Run, key: str) -> list:
    return [row.get(key) for row in run.metrics]


def _last_error(run: Run) -> float:
    """The test error of the run's last evaluated epoch: the final one of a finished run (an unfinished
    run may end on an epoch that ``train.eval_epochs`` skipped)."""
    error = last_test_error(run.metrics)
    if error is None:
        raise UserError(f"run {run.path} has no evaluated epoch yet (train.eval_epochs); report it when it has one")
    return error


def summarize(groups: dict[tuple[str, str], list[Run]]) -> list[dict]:
    """One row per group: final-epoch test error mean ± std over seeds, seeds, mean final T.

    A diverged seed (``diverged.json``) counts at chance error, 100 − 100 / classes %, and has no T;
    ``at_chance`` lists the seeds that trained with finite losses to an error at chance level."""
    rows = []
    for (model, policy), runs in groups.items():
        records = {seed_of(r): read_diverged(r.path) for r in runs}
        diverged = {seed: record for seed, record in records.items() if record is not None}
        chance = chance_error(runs[0].config["model"]["num_classes"])
        errors = [chance if seed_of(r) in diverged else _last_error(r) for r in runs]
        stuck = [seed_of(r) for r, e in zip(runs, errors) if seed_of(r) not in diverged and at_chance(e, chance)]
        times = [
            float(r.final["evolution_time"])
            for r in runs
            if seed_of(r) not in diverged and r.final.get("evolution_time") is not None
        ]
        mean, std = mean_std(errors)
        rows.append(
            {
                "model": model,
                "policy": policy,
                "controller": has_controller(policy_of(runs[0])),
                "seeds": [seed_of(r) for r in runs],
                "n_seeds": len(runs),
                "epochs": sorted({len(r.metrics) for r in runs}),
                "test_error_mean": mean,
                "test_error_std": std,
                "test_errors": errors,
                "evolution_time_mean": mean_or_none(times),
                "diverged": {
                    str(seed): {"step": rec.get("step"), "loss": rec.get("loss")} for seed, rec in diverged.items()
                },
                "at_chance": stuck,  # finite loss, but a final error at chance level: failed to train
                "runs": [r.name for r in runs],
            }
        )
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    """The summary rows as a Markdown table (epochs: the finished ones; a diverged seed counts at chance)."""
    lines = [
        "| model | policy | controller | seeds | epochs | final test error % (mean ± std) | mean T |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gone = "; ".join(f"seed {seed} at step {d['step']}" for seed, d in r.get("diverged", {}).items())
        gone = f" (diverged: {gone}; counted at chance)" if gone else ""
        if r.get("at_chance"):
            gone += f" (did not learn, at chance level: seed {', '.join(map(str, r['at_chance']))})"
        lines.append(
            f"| {r['model']} | {r['policy']} | {'yes' if r['controller'] else 'no'} | {r['n_seeds']} "
            f"({', '.join(map(str, r['seeds']))}) | {', '.join(map(str, r['epochs']))} | "
            f"{format_mean_std(r['test_error_mean'], r['test_error_std'])}{gone} | "
            f"{format_number(r['evolution_time_mean'])} |"
        )
    return "\n".join(lines)


def _series(groups: dict, key: str) -> list[Series]:
    """One series per group, over its seeds' epochs (a diverged seed's up to where it stopped)."""
    return [
        Series.from_runs(
            group_label(k),
            [[np.nan if v is None else v for v in _metric(r, key)] for r in runs],
            dashed=not has_controller(policy_of(runs[0])),
        )
        for k, runs in groups.items()
        if any(r.metrics for r in runs)
    ]


def _dt_mean_panels(groups: dict) -> list[tuple[str, np.ndarray]]:
    """Mean over seeds of ``dt_mean[epoch][block]`` for each group with steps."""
    panels = []
    for key, runs in groups.items():
        per_seed = [np.array(_metric(r, "dt_mean"), dtype=float) for r in runs if all(_metric(r, "dt_mean"))]
        if not per_seed or not learns_steps(policy_of(runs[0])):
            continue
        epochs = min(len(a) for a in per_seed)
        panels.append(
            (
                f"{group_label(key)} ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})",
                np.mean([a[:epochs] for a in per_seed], axis=0),
            )
        )
    return panels


def _find_stability(stability: Path | None, out_dir: Path) -> Path | None:
    if stability is not None:
        if not Path(stability).is_file():
            raise UserError(
                f"stability file {stability} does not exist; write one with `tscnet stability RUN... --out DIR`"
            )
        return Path(stability)
    found = out_dir / STABILITY_FILE
    return found if found.is_file() else None


def _read_stability(path: Path) -> dict:
    """A ``stability.json`` as ``tscnet stability`` writes it; anything else is a one-line error."""
    try:
        saved = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(
            f"stability file {path} is not valid JSON ({error}); write one with `tscnet stability RUN... --out DIR`"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("runs"), list):
        raise UserError(f"stability file {path} is not a tscnet stability.json (no list of runs)")
    return saved


REPORT_FILES = (
    "report.md",
    "summary.json",
    "training_curves.png",
    "evolution_time.png",
    "dt_heatmap.png",
    "dt_evolution.png",
)


@dataclass
class RunsReport:
    """What :func:`build_runs_report` wrote: ``report.md`` (``path``), the per-group summary rows
    (``summary``) and the figures (``files``)."""

    path: Path  # report.md
    summary: list[dict]
    files: dict[str, Path]  # figure name -> PNG


def _final_steps(run: Run) -> list[np.ndarray]:
    """The run's final Δt per block: its steps.json, or (older runs) its checkpoint's model."""
    try:
        return [np.asarray(d, dtype=np.float64) for d in read_profile(run.path)["dt"]]
    except ValueError:
        model = load_run(run.path).model
        assert model is not None  # load_run rebuilds the model by default
        return [s.numpy() for s in step_sizes(model)]


def _load_stability(stability: Path | None, out_dir: Path, data: str) -> tuple[Path | None, dict | None]:
    """The stability file to include (``stability``, else ``out_dir/stability.json`` if present) and its
    contents, ``(None, None)`` without one; one of another dataset is refused before anything is written."""
    found = _find_stability(stability, out_dir)
    saved = _read_stability(found) if found is not None else None
    if saved is not None and saved.get("data") != data:
        raise UserError(
            f"{found} is about {saved.get('data')}, the runs are {data}: pass a stability file of the same dataset"
        )
    return found, saved


def _figures(groups: dict, summary: list[dict], data: str, out_dir: Path) -> dict[str, Path]:
    """Test error and T per epoch; where some group learns its steps, the final Δt heatmaps (first
    finished seed) and the mean Δt per block over training. Figure name → PNG."""
    files: dict[str, Path] = {}
    note = "solid: Δt from a controller (tsc/mlp); dashed: without"
    files["training_curves"] = plot_series(
        _series(groups, "test_error"),
        out_dir / "training_curves.png",
        "test error (%)",
        f"Test error per epoch on {data} (mean ± std over seeds)",
        note=note,
    )
    files["evolution_time"] = plot_series(
        _series(groups, "evolution_time"),
        out_dir / "evolution_time.png",
        "evolution time T = Σ_d mean_c Δt_d",
        "Evolution time T per epoch (vanilla ResNet: T = number of blocks)",
        note=note,
    )
    finished = {
        k: [r for r in rs if str(seed_of(r)) not in row["diverged"]]  # summarize read diverged.json
        for (k, rs), row in zip(groups.items(), summary)
    }
    heat = [
        (f"{group_label(k)} (run {rs[0].name}, final epoch)", _final_steps(rs[0]))
        for k, rs in finished.items()
        if rs and learns_steps(policy_of(rs[0]))
    ]
    if heat:
        files["dt_heatmap"] = plot_dt_heatmaps(heat, out_dir / "dt_heatmap.png")
    panels = _dt_mean_panels(finished)
    if panels:
        files["dt_evolution"] = plot_block_series(
            panels,
            out_dir / "dt_evolution.png",
            "mean_c Δt_d",
            "Mean step size of each block over training (mean over seeds)",
        )
    return files


def _sections(
    n_runs: int, data: str, summary: list[dict], files: dict[str, Path], found: Path | None, saved: dict | None
) -> list[str]:
    """``report.md``'s sections: the summary table, then a section per figure in ``files``, the
    stability study of ``found`` (``saved``: its contents) last."""
    sections = [
        f"# tscnet report: {n_runs} runs on {data}\n",
        "Final-epoch test error (never the best epoch), mean ± sample std over seeds, grouped by model and "
        "step policy. T = Σ_d mean_c Δt_d is the evolution time at the final epoch.\n",
        format_summary(summary) + "\n",
        "## Training curves\n",
        "![test error per epoch](training_curves.png)\n",
        "## Evolution time\n",
        "![evolution time per epoch](evolution_time.png)\n",
    ]
    if "dt_heatmap" in files:
        sections += [
            "## Learned step sizes (final model, first seed of each group)\n",
            "![Δt per block and channel](dt_heatmap.png)\n",
        ]
    if "dt_evolution" in files:
        sections += ["## Step sizes over training\n", "![mean Δt per block per epoch](dt_evolution.png)\n"]
    if saved is not None:
        sections += [
            "## Stability\n",
            f"From `{found}` ({saved.get('images')} test images).\n",
            format_stability_table(saved["runs"]) + "\n",
            "![amplification against depth](stability.png)\n",
        ]
    return sections


def _summary_json(data: str, summary: list[dict], runs: list[Run]) -> dict:
    """``summary.json``: the dataset, the summary rows, and each run's folder, model, policy, seed and final values."""
    return stamped(
        {
            "data": data,
            "groups": summary,
            "runs": [
                {
                    "run": r.name,
                    "path": str(r.path),
                    "model": r.config["model"]["name"],
                    "policy": str(r.config["model"]["steps"]),
                    "seed": seed_of(r),
                    "final": r.final,
                }
                for r in runs
            ],
        }
    )


def build_runs_report(run_dirs: Iterable[Path], out_dir: Path, stability: Path | None = None) -> RunsReport:
    """Write ``report.md``, ``summary.json`` and the figures for ``run_dirs`` into ``out_dir``.

    ``stability``: a ``stability.json`` to include (default: ``out_dir/stability.json`` if present).
    """
    # Δt from steps.json: a run needs no checkpoint.pt; a diverged run may have no finished epoch
    runs = load_runs(run_dirs, with_model=False, diverged_ok=True)
    data = runs[0].config["data"]["name"]
    out_dir = Path(out_dir)
    found, saved = _load_stability(stability, out_dir, data)  # refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    summary = summarize(groups)
    files = _figures(groups, summary, data, out_dir)
    if saved is not None:
        files["stability"] = plot_stability_vs_depth(saved["runs"], out_dir / "stability.png")
    path = out_dir / "report.md"
    path.write_text("\n".join(_sections(len(runs), data, summary, files, found, saved)))
    (out_dir / "summary.json").write_text(json.dumps(_summary_json(data, summary, runs), indent=2) + "\n")
    return RunsReport(path, summary, files)
