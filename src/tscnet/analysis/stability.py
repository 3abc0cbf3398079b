"""The stability study of trained runs: bound vs measured amplification, and gradient flow.

For each run folder: the bound ``Π_j (‖S_j‖ + L_j max_c Δt_j)`` (:mod:`.lipschitz`), the median over
N real test images of the random and worst-case amplification (:mod:`.perturbation`), T, depth,
policy and final-epoch test error. :func:`stability_study` writes ``stability.json``,
``stability.md``, ``stability.png`` (amplification against depth) and ``gradient_flow.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..formats import stamped
from ..stepping import is_stock
from ..train.run import Run
from .gradflow import fixed_step_study, gradient_flow
from .lipschitz import stability_bound
from .perturbation import amplification
from .plots import plot_gradient_flow, plot_stability_vs_depth
from .runs import group_runs, load_runs, policy_of, seed_of, test_batch

__all__ = [
    "StabilityStudy",
    "run_stability",
    "stability_study",
    "format_stability_table",
    "STABILITY_FILE",
    "STABILITY_FILES",
]

STABILITY_FILE = "stability.json"
# what a study leaves that nothing else writes (``tscnet report`` redraws stability.png from the JSON)
STABILITY_FILES = (STABILITY_FILE, "stability.md", "gradient_flow.png")
_COLUMNS = (  # (key, header, format)
    ("run", "run", "{}"),
    ("model", "model", "{}"),
    ("policy", "policy", "{}"),
    ("seed", "seed", "{}"),
    ("depth", "depth", "{}"),
    ("evolution_time", "T", "{:.2f}"),
    ("test_error", "test err %", "{:.2f}"),
    ("random_mean", "random amp.", "{:.3g}"),
    ("worst", "worst amp.", "{:.3g}"),
    ("bound", "bound", "{:.3g}"),
)


def run_stability(run: Run, images: torch.Tensor, directions: int = 8, method: str = "power", **options) -> dict:
    """One row of the study for ``run`` on ``images`` (the run's own test images)."""
    model = cast(nn.Module, run.model)  # runs are loaded with their models (load_runs)
    bound = stability_bound(model, tuple(images.shape[1:]), method=method)
    amp = amplification(model, images, directions=directions, **options)
    return {
        "run": run.name,
        "path": str(run.path),
        "model": run.config["model"]["name"],
        "policy": policy_of(run),
        "seed": seed_of(run),
        "data": run.config["data"]["name"],
        "depth": bound.depth,
        "blocks": len(bound.blocks),
        "evolution_time": bound.evolution_time,
        "test_error": run.final.get("test_error"),
        "epochs": run.final.get("epoch"),
        "images": len(images),
        "directions": directions,
        "eps": amp.eps,
        **amp.medians(),
        "bound": bound.bound,
        "log10_bound": bound.log10_bound,
        "norm_method": method,
        "weights": run.weights,
        "per_block": bound.rows(),
    }


def format_stability_table(rows: Sequence[dict]) -> str:
    """A Markdown table of the rows (amplifications are medians over images)."""
    lines = ["| " + " | ".join(h for _, h, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in rows:
        cells = ["—" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class StabilityStudy:
    """What :func:`stability_study` wrote: a row per run (:func:`run_stability`) and the files
    (``json``, ``md``, ``png``, ``gradient_flow``)."""

    rows: list[dict]
    files: dict[str, Path]


def stability_study(
    run_dirs: Iterable[Path],
    out_dir: Path,
    images: int = 32,
    directions: int = 8,
    method: str = "power",
    gradient_flow_plot: bool = True,
    **options,
) -> StabilityStudy:
    """Study every run, write the JSON, Markdown table and figures into ``out_dir``."""
    runs = load_runs(run_dirs, unfold_ok=True)  # a finished run whose checkpoint.pt was deleted still counts
    x, y = test_batch(runs[0].config, images)
    rows = [run_stability(run, x, directions, method, **options) for run in runs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / STABILITY_FILE, "md": out_dir / "stability.md", "png": out_dir / "stability.png"}
    files["json"].write_text(
        json.dumps(stamped({"data": rows[0]["data"], "images": len(x), "runs": rows}), indent=2) + "\n"
    )
    files["md"].write_text(
        f"# Stability on {len(x)} {rows[0]['data']} test images\n\n"
        "Amplification `‖y_D^ε − y_D‖ / ‖ε‖` from the input of the first residual block to the output of the last "
        "(median over images); *random*: mean over random directions, *worst*: power iteration on `JᵀJ`; "
        f"*bound*: `Π_j (‖S_j‖ + L_j·max Δt_j)` (conv norms: {method}).\n\n" + format_stability_table(rows) + "\n"
    )
    plot_stability_vs_depth(rows, files["png"])
    if gradient_flow_plot:
        files["gradient_flow"] = out_dir / "gradient_flow.png"
        plot_gradient_flow(gradient_panels(runs, x, y), files["gradient_flow"])
    return StabilityStudy(rows, files)


def gradient_panels(runs: Sequence[Run], images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, dict]]:
    """One panel per (model, policy) group, from its first seed: fixed Δt on the run's weights,
    and the run's own learned steps."""
    panels = []
    for (model, policy), group in group_runs(runs).items():
        run = group[0]
        net = cast(nn.Module, run.model)  # runs are loaded with their models (load_runs)
        curves = fixed_step_study(net, images, labels)
        learned = "vanilla, Δt ≡ 1" if is_stock(policy_of(run)) else f"trained policy {policy}"
        curves[learned] = gradient_flow(net, images, labels)
        panels.append((f"{run.name} ({model}, trained weights)", curves))
    return panels
