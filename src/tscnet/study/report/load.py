"""The collected cells of a results folder, read back for the report: one :class:`Result` per cell.

A cell counts once its folder holds ``cell.json`` and the files a finished (or a diverged) run leaves
(``RESULT_FILES``, ``DIVERGED_FILES`` of :mod:`tscnet.study.results`); a folder still being written,
or one without a single epoch, is not a result yet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...jobs.run_folder import RunFolder
from ...train.metrics import chance_error
from ...train.run import read_diverged
from ..plan import grid_tag
from ..results import (
    CELL_FILE,
    DIVERGED_FILES,
    RESULT_FILES,
    did_not_learn,
    read_cell_info,
    read_metrics_or_empty,
    read_yaml,
)
from ..spec import ablation_kind


@dataclass
class Result:
    """One collected cell, read back from its results folder.

    A record of the cell's files, one field each (12: :func:`load_results` is the one place that fills
    them all; tests build small ones by position).
    """

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
        """The cell's grid folder name (``lr0.1``), ``""`` without a grid."""
        return grid_tag(tuple(self.grid.items()))

    @property
    def chance(self) -> float:
        """Chance-level test error of the run's dataset, 100 − 100 / classes (%)."""
        return chance_error(self.config["model"]["num_classes"])

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
        return did_not_learn(self.diverged) if self.diverged else False

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
            for step, loss in row.items() if isinstance(row, dict) else ():
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


def _read_json(path: Path) -> dict:
    """A cell's JSON file, ``{}`` where it is missing or damaged (a diverged run has no profile or card)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_cell(folder: Path) -> Result | None:
    """The cell collected in ``folder``, ``None`` while it is not a result (see the module's docstring)."""
    info = read_cell_info(folder)
    if info is None:
        return None
    diverged = info.get("diverged")
    if not all((folder / name).is_file() for name in (DIVERGED_FILES if diverged else RESULT_FILES)):
        return None
    metrics = read_metrics_or_empty(folder)
    if not metrics and not diverged:
        return None
    arm = info.get("arm", info["policy"])
    steps = info["policy"] if ablation_kind(str(info["policy"])) else str(info.get("policy", arm))
    return Result(
        model=info["model"],
        arm=arm,
        steps=steps,
        seed=int(info["seed"]),
        grid=dict(info.get("grid") or {}),
        folder=folder,
        config=read_yaml(folder / RunFolder.CONFIG),
        metrics=metrics,
        profile={} if diverged else _read_json(folder / RunFolder.STEPS),
        card=_read_json(folder / RunFolder.CARD),
        info=info,
        diverged=diverged,
    )


def load_results(results: Path) -> list[Result]:
    """Every collected cell under ``results`` (``<model>/<arm>/[<grid>/]seed<k>/`` with ``cell.json``)."""
    markers = sorted([*Path(results).glob(f"*/*/seed*/{CELL_FILE}"), *Path(results).glob(f"*/*/*/seed*/{CELL_FILE}")])
    cells = (_read_cell(marker.parent) for marker in markers)
    return [cell for cell in cells if cell is not None]
