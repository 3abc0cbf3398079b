"""Run a study's cells through an executor: skip what has results, resume what was interrupted,
collect what finished, record what diverged, stop cleanly on a signal, and say how far it is.

For each cell, in plan order (ablations once their source's results exist):

* results exist (``<results>/<cell>/cell.json``): skipped;
* its scratch run finished but was not collected (the study was stopped in between): collected;
* its scratch run diverged but was not collected: collected as diverged;
* its scratch run is unfinished: resumed (``tscnet train --resume``);
* otherwise: started.

A run that diverged is a result (``diverged`` in ``cell.json``), never retried, and its ablations
are not run. A run that fails otherwise is reported, not collected; the next invocation resumes it.

Stopping: SIGINT or SIGTERM to the study (Ctrl-C, ``kill -INT PID``, or to its process group)
starts no further cell and is forwarded to every running cell (each signal once), whose trainer
writes a mid-epoch checkpoint and exits; the next invocation resumes them. ``max_hours``: no cell
is started after that many hours, nor one that would end after them by the longest run of its
model seen so far (before one has ended, by its estimate: :class:`CostModel`).

Progress: a line whenever a cell starts or ends and every ``progress_every`` seconds:
``progress: D/N done (x diverged), R running, Q queued, F failed; ~H h left``, where the time left
is Σ (estimated seconds of queued cells) + Σ (what is left of running cells), divided by the
executor's capacity (see :class:`CostModel`).
"""

from __future__ import annotations

import copy
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jobs.executors.base import Executor, Task
from ..jobs.run_folder import HOLDS_A_RUN, LOCKED_BY, RunFolder, describe_holder
from ..jobs.runner import Running, run_tasks
from ..train.config import dump_config, validate_config
from ..train.run import atomic_write_bytes
from .cost import CostModel, format_hours
from .plan import Cell, Layout, source_cell
from .results import (
    base_config,
    cell_config,
    cell_info,
    cell_overrides,
    check_configs,
    check_recipe,
    collect,
    config_difference,
    did_not_learn,
    diverged_reason,
    final_error,
    is_collected,
    log_error,
    read_metrics_or_empty,
    read_yaml,
    run_divergence,
)
from .spec import StudySpec


@dataclass
class CellResult:
    """What :func:`run_study` hands its ``on_result`` callback for each collected cell."""

    cell: Cell
    folder: Path
    diverged: str | None
    error: float  # final test error (%), NaN when no epoch finished
    seconds: float | None = None  # wall time of this invocation's run (None: collected without running)

    def describe(self) -> str:
        if not self.diverged:
            return f"final test error {self.error:.2f} %"
        return f"{'DID NOT LEARN' if did_not_learn(self.diverged) else 'DIVERGED'} ({self.diverged})"


# ---------------------------------------------------------------------------------------------
# State


def cell_state(spec: StudySpec, cell: Cell, layout: Layout) -> str:
    """``results``, ``diverged``, ``trained, not collected``, ``resumable``, ``to run``,
    ``waiting for its source`` or ``not run: source diverged``."""
    folder = layout.result_dir(cell)
    if is_collected(folder):
        return "diverged" if diverged_reason(folder) else "results"
    run = layout.run_dir(cell)
    if RunFolder(run).finished:
        return "trained, not collected"
    if RunFolder(run).started:
        return "resumable"
    source = source_cell(spec, cell)
    if source is None:
        return "to run"
    if diverged_reason(layout.result_dir(source)):
        return "not run: source diverged"
    return "to run" if is_collected(layout.result_dir(source)) else "waiting for its source"


def make_task(cell: Cell, config: dict, layout: Layout, threads: int = 1, gpus: int = 0) -> Task:
    """The :class:`Task` of ``cell``: writes its recipe next to its run folder and builds the command
    ``python -m tscnet.cli train --no-progress --out RUN (--config RECIPE | --resume)``."""
    run, recipe = layout.run_dir(cell), layout.recipe(cell)
    recipe.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(recipe, dump_config(config).encode())  # another launch of the study may be reading it
    resume = RunFolder(run).started
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(run)]
    command += ["--resume"] if resume else ["--config", str(recipe)]
    return Task(
        name=str(cell),
        config=config,
        command=command,
        recipe=recipe,
        run_dir=run,
        log=layout.log(cell),
        cwd=layout.workdir,
        threads=threads,
        gpus=gpus,
        resume=resume,
    )


def planned_configs(spec: StudySpec, cells: list[Cell], extra: tuple[str, ...] = ()) -> dict[Cell, dict]:
    """:func:`~tscnet.study.results.base_config` of every cell, the recipe read once per model, arm and
    grid point: cells that differ in their seed alone have configs that differ in ``train.seed`` alone
    (a study of 1,000 cells would otherwise parse its recipe 1,000 times)."""
    shared: dict[tuple, dict] = {}
    configs = {}
    for cell in cells:
        key = (cell.model, cell.arm, cell.grid)
        if key not in shared:
            shared[key] = base_config(spec, cell, extra)
        configs[cell] = copy.deepcopy(shared[key])
        configs[cell]["train"]["seed"] = cell.seed
    return configs


@dataclass
class StudyOptions:
    """How one invocation runs a study's cells (besides the spec, the cells, the layout and the executor).

    ``extra``: overrides after the spec's ``set`` (the command line's ``--set``); ``max_hours``: no cell
    starts after that many hours, nor one that would end after them; ``on_result`` is called with a
    :class:`CellResult` as soon as a cell's results folder is written (e.g. to commit it).
    """

    extra: tuple[str, ...] = ()
    threads: int = 1
    gpus: int = 0
    max_hours: float | None = None
    on_result: Callable[[CellResult], None] | None = None
    poll_interval: float = 1.0
    progress_every: float = 300.0
    out: Callable[[str], None] = lambda s: print(s, flush=True)


class StudyRun:
    """One invocation of a study: what is queued, running, running elsewhere, done and failed.

    ``run()`` keeps the executor busy with the cells left (in plan order, ablations once their
    source's results exist), collects each as it ends and returns the counts. A cell whose run
    folder another live process holds (a second ``tscnet study`` on the same results, a manual
    ``tscnet train --resume``) is not started: it waits *elsewhere* and is collected when it lands;
    if that process stops or dies first (its lock released or stale), the cell is queued again.
    """

    def __init__(
        self, spec: StudySpec, cells: list[Cell], layout: Layout, executor: Executor, options: StudyOptions
    ) -> None:
        self.spec, self.cells, self.layout, self.executor, self.options = spec, cells, layout, executor, options
        self.out = options.out
        self.start = time.time()
        self.deadline = None if options.max_hours is None else self.start + 3600.0 * options.max_hours
        self.pending = [c for c in cells if not is_collected(layout.result_dir(c))]
        self.counts: dict[str, Any] = {
            "skipped": len(cells) - len(self.pending),
            "trained": 0,
            "collected": 0,
            "diverged": 0,
            "failed": 0,
            "stopped": 0,
            "not_run": 0,
            "elsewhere": 0,
        }
        self.cost = CostModel.from_folders([layout.results, layout.runs, layout.results.parent])
        self.planned = planned_configs(spec, self.pending, options.extra)  # for time estimates
        self.workloads = {cell: self.cost.workload(cell.model, config) for cell, config in self.planned.items()}
        self.order: dict[Cell, int] = {}  # a cell's place in the plan (list.index is linear)
        for i, cell in enumerate(cells):
            self.order.setdefault(cell, i)
        self.epochs_before: dict[Cell, int] = {}
        self.log_start: dict[Cell, int] = {}  # the size of a cell's log when its run started here
        self.longest: dict[str, float] = {}  # model -> the longest run of it seen by this invocation (seconds)
        self.failed: set[Cell] = set()
        self.running: list[Running] = []
        self.elsewhere: set[Cell] = set()  # cells another process is training
        self.last_progress = 0.0
        self.started = 0  # runs this invocation started (or resumed)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every cell without results; returns the counts (``skipped, trained, collected, diverged,
        failed, stopped, not_run, elsewhere``, ``signal``)."""
        spec, layout, counts = self.spec, self.layout, self.counts
        check_configs(spec, self.cells, self.options.extra)
        check_recipe(spec, self.cells, layout, self.options.extra)
        self.out(
            f"study {spec.name}: {counts['skipped']} of {len(self.cells)} cells already have results in "
            f"{layout.results}; {len(self.pending)} to run ({self.executor.describe()})"
        )
        stopped = run_tasks(
            self.executor,
            self.next_task,
            self.on_end,
            on_start=self.on_start,
            tick=self.tick,
            waiting=lambda: bool(self.elsewhere),
            poll_interval=self.options.poll_interval,
            out=self.out,
        )
        if not self.started and not stopped and (counts["collected"] or counts["skipped"]):
            # Say why nothing ran (a cluster user would otherwise wonder why no job was submitted).
            self.out(
                f"started no run: {counts['skipped']} cell(s) already had results in {layout.results}, "
                f"{counts['collected']} were collected from runs that had finished in {layout.runs}"
            )
        for cell in [c for c in self.pending if not self.ready(c)]:
            source = source_cell(spec, cell)
            why = "failed" if source in self.failed else "was not run"
            self.out(f"not run: {cell}: its source {source} {why}")
        late = [c for c in self.pending if self.ready(c)] + sorted(self.elsewhere, key=self.order.__getitem__)
        if late:
            why = f"stopped by {stopped}" if stopped else f"--max-hours {self.options.max_hours} reached"
            self.out(f"not started: {len(late)} cells ({why}); run again to continue")
        if stopped:
            self.out(
                f"stopped by {stopped}: {counts['stopped']} run(s) checkpointed; run the same command again "
                "to resume them"
            )
        counts["not_run"] = len(self.pending) + len(self.elsewhere)
        counts["signal"] = stopped
        self.out(
            f"study {spec.name}: {summary_line(counts, len(self.cells))} in {format_hours(time.time() - self.start)}"
        )
        return counts

    def next_task(self) -> tuple[Task, Cell] | None:
        """The next cell to start and its task, or ``None`` when none can start now."""
        while True:
            cell = next((c for c in self.pending if self.ready(c) and self.fits(c)), None)
            if cell is None:
                return None
            self.pending.remove(cell)
            if self.taken_elsewhere(cell):
                continue
            task = self.prepare(cell)
            if task is not None:
                if not self.started:  # the first run: the scratch folder belongs to these results from now on
                    self.layout.claim()
                self.log_start[cell] = task.log.stat().st_size if task.log.is_file() else 0
                try:
                    self.epochs_before[cell] = len(read_metrics_or_empty(task.run_dir))
                except UserError:  # damaged: the trainer, resuming, says so in the cell's log
                    self.epochs_before[cell] = 0
                return task, cell

    def on_start(self, r: Running) -> None:
        self.out(
            f"{'resuming' if r.task.resume else 'starting'}: {r.tag} (steps "
            f"{r.task.config['model']['steps']}) in {r.task.run_dir}"
        )
        self.running.append(r)
        self.started += 1
        self.progress(force=True)

    def on_end(self, r: Running, code: int | None, stopping: str | None) -> None:
        cell, run = r.tag, r.task.run_dir
        if r in self.running:
            self.running.remove(r)
        if code is None:  # could not start
            self.fail(cell, "the executor could not start it")
            return
        seconds = time.time() - r.began
        self.longest[cell.model] = max(self.longest.get(cell.model, 0.0), seconds)
        finished = code == 0 and RunFolder(run).finished
        why = log_error(r.task.log, self.log_start.get(cell, 0)) or "" if code != 0 else ""
        if LOCKED_BY in why or (HOLDS_A_RUN in why and not r.task.resume):
            # Lost the race for the run folder to another launch of the study: that process trains it
            # (wait for it), or has already trained it (collect it) or stopped (resume it).
            if not self.taken_elsewhere(cell):
                self.pending.insert(0, cell)
            self.progress(force=True)
            return

        def record() -> None:
            diverged = run_divergence(run, None if finished else r.task.log)
            if finished or diverged:
                self.counts["trained"] += 1
                if finished and not r.task.resume:
                    self.cost.record(cell.model, seconds, len(read_metrics_or_empty(run)))
                self.finish(cell, r.task.config["model"]["steps"], diverged, seconds)
            elif stopping is not None:
                self.counts["stopped"] += 1
                self.out(f"stopped: {cell} ({stopping}); resumable from {run}")
            else:
                self.fail(cell, f"{exit_reason(code)}{': ' + why if why else ''}; see {r.task.log}")

        self.settle(cell, record)
        self.progress(force=True)

    def tick(self, running: list[Running]) -> None:
        """Once per poll: cells running elsewhere that landed or were given up, then the progress line."""
        for cell in sorted(self.elsewhere, key=self.order.__getitem__):
            if is_collected(self.layout.result_dir(cell)):
                self.elsewhere.discard(cell)
                self.counts["elsewhere"] += 1
                self.out(f"done elsewhere: {cell} → {self.layout.result_dir(cell)}")
            elif not RunFolder(self.layout.run_dir(cell)).locked:  # that process stopped or died: ours again
                self.elsewhere.discard(cell)
                self.pending.insert(0, cell)
                self.out(f"no longer running elsewhere: {cell}; queued again")
        self.progress()

    # -- one cell ----------------------------------------------------------------------------

    def taken_elsewhere(self, cell: Cell) -> bool:
        """Another live process trains ``cell``'s run folder: it waits elsewhere (True), or not (False)."""
        holder = RunFolder(self.layout.run_dir(cell)).lock_holder()
        if holder is None or not RunFolder(self.layout.run_dir(cell)).locked:
            return False
        self.elsewhere.add(cell)
        self.out(f"running elsewhere: {cell} ({describe_holder(holder)}); collected when it lands")
        return True

    def ready(self, cell: Cell) -> bool:
        source = source_cell(self.spec, cell)
        return source is None or is_collected(self.layout.result_dir(source))

    def fits(self, cell: Cell) -> bool:
        """Ends before the deadline: by the longest run of its model seen here, else by the estimate."""
        if self.deadline is None:
            return True
        expected = self.longest.get(cell.model) or self.cost.seconds_of(self.workloads[cell])[0]
        return time.time() + expected <= self.deadline

    def prepare(self, cell: Cell) -> Task | None:
        """The task of ``cell``, or ``None`` when it needs no run (collected now, or cannot run)."""
        spec, layout, extra = self.spec, self.layout, self.options.extra
        run = RunFolder(layout.run_dir(cell))
        try:
            # An ordinary arm's config is its planned one, validated (cell_config would parse the recipe
            # again); an ablation's steps come from its source's results.
            config = (
                cell_config(spec, cell, layout, extra)
                if cell.arm.ablation
                else validate_config(copy.deepcopy(self.planned[cell]))
            )
            if run.started:
                problem = config_difference(config, read_yaml(run.config_file))
                if problem:
                    raise UserError(
                        f"scratch run {run.path} has another recipe ({problem}); use another --runs folder or delete it"
                    )
        except UserError as error:
            source = source_cell(spec, cell)
            if source is not None and diverged_reason(layout.result_dir(source)):
                self.out(f"not run: {cell}: its source {source} diverged")
                self.counts["not_run_diverged_source"] = self.counts.get("not_run_diverged_source", 0) + 1
            else:
                self.fail(cell, str(error))
            return None
        steps = config["model"]["steps"]
        if run.finished:  # trained before, not yet collected
            self.settle(cell, lambda: self.finish(cell, steps, run_divergence(run.path), None))
            return None
        if run.started:
            diverged = run_divergence(run.path, layout.log(cell))  # reads diverged.json and the log
            if diverged:  # diverged before, not yet collected: a result, not retried
                self.settle(cell, lambda: self.finish(cell, steps, diverged, None))
                return None
        return make_task(cell, config, layout, self.options.threads, self.options.gpus)

    def finish(self, cell: Cell, steps: str, diverged: str | None, seconds: float | None) -> None:
        """Collect ``cell``'s ended run into its results folder and tell ``on_result``."""
        layout = self.layout
        error = final_error(layout.run_dir(cell))  # read before anything is written: a damaged run leaves no results
        info = cell_info(self.spec, cell, steps, cell_overrides(self.spec, cell, self.options.extra), diverged)
        folder = collect(layout.run_dir(cell), layout.result_dir(cell), info)
        self.counts["collected"] += 1
        self.counts["diverged"] += bool(diverged)
        result = CellResult(cell, folder, diverged, error, seconds)
        self.out(f"done: {cell} — {result.describe()} → {folder}")
        if self.options.on_result is not None:
            try:
                self.options.on_result(result)
            except Exception as error:  # a failing hook (e.g. git) must not lose the study
                self.out(f"WARNING: the result hook failed for {cell}: {type(error).__name__}: {error}")

    def fail(self, cell: Cell, why: str) -> None:
        self.failed.add(cell)
        self.counts["failed"] += 1
        self.out(f"FAILED: {cell}: {why}")

    def settle(self, cell: Cell, action: Callable[[], None]) -> None:
        """``action()``, which reads an ended run and collects it; if it cannot, the cell fails and the
        study goes on."""
        try:
            action()
        except Exception as problem:
            why = problem if isinstance(problem, UserError) else f"{type(problem).__name__}: {problem}"
            self.fail(cell, f"its results cannot be collected: {why}")

    def progress(self, force: bool = False) -> None:
        """``progress: D/N done (x diverged), R running, E elsewhere, Q queued, F failed; ~H h left``."""
        now = time.time()
        if not force and now - self.last_progress < self.options.progress_every:
            return
        self.last_progress = now
        # One estimate per workload, not per queued cell: this line comes at every start and end, and
        # estimating each of 1,000 queued cells each time made a study quadratic in its cells.
        estimates: dict[tuple, float] = {}
        left = 0.0
        for cell in self.pending:
            workload = self.workloads[cell]
            if workload not in estimates:
                estimates[workload] = self.cost.seconds_of(workload)[0]
            left += estimates[workload]
        for r in self.running:
            total, _ = self.cost.seconds(r.tag.model, r.task.config, self.epochs_before.get(r.tag, 0))
            left += max(0.0, total - (now - r.began))
        counts = self.counts
        done = counts["skipped"] + counts["collected"] + counts["elsewhere"]
        diverged = f" ({counts['diverged']} diverged or did not learn)" if counts["diverged"] else ""
        elsewhere = f", {len(self.elsewhere)} running elsewhere" if self.elsewhere else ""
        self.out(
            f"progress: {done}/{len(self.cells)} done{diverged}, {len(self.running)} running{elsewhere}, "
            f"{len(self.pending)} queued, {counts['failed']} failed; "
            f"~{format_hours(left / max(1, self.executor.capacity))} left"
        )


def run_study(spec: StudySpec, cells: list[Cell], layout: Layout, executor: Executor, **options: Any) -> dict:
    """Run every cell of ``cells`` without results through ``executor``; returns the counts.

    ``options`` are :class:`StudyOptions`' fields (``extra``, ``threads``, ``gpus``, ``max_hours``,
    ``on_result``, ``poll_interval``, ``progress_every``, ``out``); see :class:`StudyRun`.
    """
    return StudyRun(spec, cells, layout, executor, StudyOptions(**options)).run()


def exit_reason(code: int) -> str:
    """``exit code 2``, or for a run killed by a signal ``killed by SIGKILL (kill -9, or out of memory)``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by {name}" + (" (kill -9, or out of memory)" if name == "SIGKILL" else "")


def summary_line(counts: dict[str, Any], cells: int) -> str:
    """``120 cells: 14 already had results, 3 collected (1 diverged), 1 failed, 102 not run``."""
    parts = [f"{counts['skipped']} already had results"]
    if counts["collected"]:
        diverged = f" ({counts['diverged']} diverged or did not learn)" if counts["diverged"] else ""
        untrained = counts["collected"] - counts["trained"]
        parts.append(
            f"{counts['collected']} collected{diverged}"
            + (f", {untrained} of them trained before this call" if untrained > 0 else "")
        )
    if counts.get("elsewhere"):
        parts.append(f"{counts['elsewhere']} collected by another process")
    parts += [
        f"{counts[key]} {label}"
        for key, label in (
            ("failed", "failed"),
            ("stopped", "stopped with a checkpoint"),
            ("not_run", "not run"),
            ("not_run_diverged_source", "not run: source diverged"),
        )
        if counts.get(key)
    ]
    return f"{cells} cell{'s' if cells != 1 else ''}: " + ", ".join(parts)
