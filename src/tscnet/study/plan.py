"""The plan of a study: its cells (model × arm × grid point × seed), their order, folders and configs.

Layout (``<results>`` and ``<runs>`` from :class:`Layout`)::

    <results>/<model>/<arm tag>/seed<k>/              without a grid (the converged study's layout)
    <results>/<model>/<arm tag>/<grid tag>/seed<k>/   with one, e.g. .../tsc/lr0.1/seed0
    <runs>/...                                        the scratch run folders, same relative paths

An arm's tag is :func:`~tscnet.study.spec.policy_tag` of a policy string (``fixed:0.5`` →
``fixed0.5``) or a mapping arm's ``name``; a grid tag joins, for each key, its last component and
the value (``optim.lr=0.1`` → ``lr0.1``; several keys with ``_``).

Order: seed-major (seed 0 of every model, grid point and arm, then seed 1, ...), so an interrupted
study has the same seeds for every arm; within a seed, model and grid point, the sources of
ablations first, then the other ordinary arms, then the ablations.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidValue, UserError
from .spec import Arm, StudySpec


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def grid_tag(point: Sequence[tuple[str, Any]]) -> str:
    """``lr0.1`` for ``(("optim.lr", 0.1),)``; ``lr0.1_weight_decay0.0005`` for two keys; ``""`` for none."""
    parts = [f"{key.rpartition('.')[2]}{_format_value(value)}" for key, value in point]
    return "_".join(p.replace(":", "").replace("=", "").replace("/", "_").replace(" ", "") for p in parts)


@dataclass(frozen=True)
class Cell:
    """One run of the study: a model, an arm, a grid point (``(key, value)`` pairs) and a seed."""

    model: str
    arm: Arm
    seed: int
    grid: tuple[tuple[str, Any], ...] = ()

    @property
    def grid_values(self) -> dict[str, Any]:
        return {key: _thawed(value) for key, value in self.grid}

    @property
    def grid_tag(self) -> str:
        return grid_tag(self.grid)

    @property
    def rel(self) -> Path:
        """The cell's folder relative to the results (and scratch runs) folder."""
        base = Path(self.model) / self.arm.tag
        return (base / self.grid_tag if self.grid else base) / f"seed{self.seed}"

    def __str__(self) -> str:
        grid = f" {self.grid_tag}" if self.grid else ""
        return f"{self.model} {self.arm.name}{grid} seed{self.seed}"


def source_cell(spec: StudySpec, cell: Cell) -> Cell | None:
    """The cell an ablation is built from (same model, seed and grid point), else ``None``."""
    if cell.arm.source is None:
        return None
    return Cell(cell.model, spec.arm(cell.arm.source), cell.seed, cell.grid)


def grid_points(grid: dict[str, list]) -> list[tuple[tuple[str, Any], ...]]:
    """The cross product of a grid, first key slowest; ``[()]`` for no grid."""
    keys = list(grid)
    return [tuple((k, _frozen(v)) for k, v in zip(keys, values)) for values in itertools.product(*grid.values())]


def arm_order(spec: StudySpec) -> list[Arm]:
    """Sources of ablations first, then the other ordinary arms, then the ablations (spec order within each)."""
    sources = {a.source for a in spec.arms if a.ablation}
    ordinary = [a for a in spec.arms if not a.ablation]
    return (
        [a for a in ordinary if a.name in sources]
        + [a for a in ordinary if a.name not in sources]
        + [a for a in spec.arms if a.ablation]
    )


def _grid_filter(spec: StudySpec, models: list[str], only: dict[str, list] | None) -> dict[str, set] | None:
    """``only`` ({grid key: values}) checked against the grids of ``models``: every key is a grid key
    and every value a grid value of at least one of them."""
    if not only:
        return None
    grids = [spec.grid_for(m) for m in models]
    for key, values in only.items():
        have = [_frozen(v) for g in grids for v in g.get(key, [])]
        if not any(key in g for g in grids):
            keys = sorted({k for g in grids for k in g}) or ["none"]
            raise UserError(f"--grid: {key!r} is not a grid key of the study ({', '.join(keys)})")
        missing = [v for v in values if _frozen(v) not in have]
        if missing:
            raise UserError(
                f"--grid: {key}={_format_value(missing)} is not in the study's grid "
                f"({key}: {', '.join(map(_format_value, dict.fromkeys(have)))})"
            )
    return {key: {_frozen(v) for v in values} for key, values in only.items()}


def plan_cells(
    spec: StudySpec,
    models: list[str] | None = None,
    arms: list[str] | None = None,
    seeds: list[int] | None = None,
    grid: dict[str, list] | None = None,
) -> list[Cell]:
    """Every cell of ``spec`` in run order (see the module docstring); optionally only some models,
    arms (by name; an ablation's source is added when missing), seeds or grid values (``{key: values}``:
    the grid points whose ``key`` is one of ``values``)."""
    models = models or spec.models
    for model in models:
        if model not in spec.models:
            raise UserError(f"--models: {model!r} is not in the study ({', '.join(spec.models)})")
    wanted = None
    if arms:
        names = [a.name for a in spec.arms]
        for name in arms:
            if name not in names:
                raise UserError(f"--policies: {name!r} is not an arm of the study ({', '.join(names)})")
        wanted = set(arms) | {spec.arm(a).source for a in arms if spec.arm(a).source}
    ordered = [a for a in arm_order(spec) if wanted is None or a.name in wanted]
    per_model = {m: [s for s in spec.seeds_for(m) if seeds is None or s in seeds] for m in models}
    only = _grid_filter(spec, models, grid)
    cells = []
    for seed in sorted({s for ss in per_model.values() for s in ss}):
        for model in models:
            if seed in per_model[model]:
                for point in grid_points(spec.grid_for(model)):
                    if only and any(key in only and value not in only[key] for key, value in point):
                        continue
                    cells += [Cell(model, arm, seed, point) for arm in ordered]
    return cells


def checkout_root() -> Path | None:
    """The tscnet source checkout this package runs from, when the working directory is inside it."""
    root = Path(__file__).resolve().parents[3]
    if not (
        (root / "pyproject.toml").is_file() and (root / "benchmarks").is_dir() and (root / "src" / "tscnet").is_dir()
    ):
        return None
    try:
        Path.cwd().resolve().relative_to(root)
    except ValueError:
        return None
    return root


@dataclass(frozen=True)
class Layout:
    """Where a study's results, scratch runs and working directory are (absolute paths).

    ``workdir`` is where runs start: an ablation's ``profile:PATH`` is written relative to it when the
    source's results lie inside it (so a committed config reads the same on every machine).
    """

    results: Path  #: the results folder: one subfolder per cell, the report
    runs: Path  #: the scratch run folders
    workdir: Path  #: where runs start

    def result_dir(self, cell: Cell) -> Path:
        return self.results / cell.rel

    def run_dir(self, cell: Cell) -> Path:
        return self.runs / cell.rel

    def log(self, cell: Cell) -> Path:
        run = self.run_dir(cell)
        return run.parent / f"{run.name}.log"

    def recipe(self, cell: Cell) -> Path:
        run = self.run_dir(cell)
        return run.parent / f"{run.name}.recipe.yaml"

    def check_claim(self) -> None:
        """Refuse a scratch folder that belongs to another results folder (nothing is written).

        Raises:
            UserError: the scratch folder belongs to another results folder.
        """
        owner = _read_line(self.runs / OWNER_RECORD)
        if owner and Path(owner) != self.results:
            raise InvalidValue(
                f"scratch runs {self.runs} belong to the results {owner}, not {self.results}; "
                "pass another --runs (two studies must not share scratch runs)"
            )

    def claim(self) -> None:
        """Tie the scratch folder to the results folder (each records the other), before the first run.

        Raises:
            UserError: the scratch folder belongs to another results folder.
        """
        self.check_claim()
        self.runs.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        (self.runs / OWNER_RECORD).write_text(f"{self.results}\n")
        (self.results / SCRATCH_RECORD).write_text(f"{self.for_recipe(self.runs)}\n")

    def for_recipe(self, folder: Path) -> str:
        """``folder`` relative to :attr:`workdir` when inside it, else absolute."""
        folder = folder.resolve()
        try:
            return str(folder.relative_to(self.workdir))
        except ValueError:
            return str(folder)


#: In a results folder: where its scratch runs are (relative to the working directory when inside it).
SCRATCH_RECORD = "scratch.txt"
#: In a scratch folder: the results folder it belongs to (absolute).
OWNER_RECORD = ".results"


def default_layout(spec: StudySpec, results: Path | None = None, runs: Path | None = None) -> Layout:
    """``benchmarks/results/<name>`` and ``runs/<name>`` in the tscnet checkout (when the working
    directory is inside it), else ``./study-results/<name>`` and ``./runs/<name>``; runs start in the
    checkout's root or the working directory.

    Scratch runs belong to one results folder: without ``runs``, the folder its ``scratch.txt``
    records, else ``runs/<name of results>`` — unless that one belongs to another results folder
    (its ``.results`` names it), then ``runs/<name>-<hash of the results path>``. A given ``runs``
    that belongs to another results folder is refused (:meth:`Layout.claim`).
    """
    root = checkout_root()
    workdir = root or Path.cwd().resolve()
    if results is None:
        results = (root / "benchmarks" / "results" / spec.name) if root else workdir / "study-results" / spec.name
    results = Path(os.path.abspath(results))
    if runs is not None:
        return Layout(results, Path(os.path.abspath(runs)), workdir)
    recorded = _read_line(results / SCRATCH_RECORD)
    if recorded:
        return Layout(results, (workdir / recorded).resolve(), workdir)
    runs = workdir / "runs" / results.name
    owner = _read_line(runs / OWNER_RECORD)
    if owner and Path(owner) != results:
        digest = hashlib.sha1(str(results).encode()).hexdigest()[:8]
        runs = workdir / "runs" / f"{results.name}-{digest}"
    return Layout(results, runs, workdir)


def _read_line(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
