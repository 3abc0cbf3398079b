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

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UserError
from ..jobs.executors.base import Executor, Task
from ..jobs.run_folder import RunFolder
from ..jobs.runner import Running, run_tasks
from ..train.config import dump_config
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
    diverged_reason,
    final_error,
    is_collected,
    log_error,
    read_metrics,
    read_yaml,
    run_divergence,
)
from .spec import StudySpec


@dataclass
class CellResult:
    """What :func:`run_study` hands its ``on_result`` callback for each collected cell."""

    cell: Cell
    folder: Path
    diverged: Optional[str]
    error: float  # final test error (%), NaN when no epoch finished
    seconds: Optional[float] = None  # wall time of this invocation's run (None: collected without running)

    def describe(self) -> str:
        return f"DIVERGED ({self.diverged})" if self.diverged else f"final test error {self.error:.2f} %"


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
    recipe.write_text(dump_config(config))
    resume = RunFolder(run).started
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(run)]
    command += ["--resume"] if resume else ["--config", str(recipe)]
    return Task(name=str(cell), config=config, command=command, recipe=recipe, run_dir=run, log=layout.log(cell),
                cwd=layout.workdir, threads=threads, gpus=gpus, resume=resume)


def run_study(spec: StudySpec, cells: list[Cell], layout: Layout, executor: Executor, *,
              extra: tuple[str, ...] = (), threads: int = 1, gpus: int = 0, max_hours: Optional[float] = None,
              on_result: Optional[Callable[[CellResult], None]] = None, poll_interval: float = 1.0,
              progress_every: float = 300.0, out: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict:
    """Run every cell of ``cells`` without results through ``executor``; returns counts
    (``skipped, trained, collected, diverged, failed, stopped, not_run``, ``signal``).

    ``extra``: overrides after the spec's ``set`` (the command line's ``--set``). ``on_result`` is
    called with a :class:`CellResult` as soon as a cell's results folder is written (e.g. to commit
    it); an exception there stops nothing (it is printed).
    """
    start = time.time()
    deadline = None if max_hours is None else start + 3600.0 * max_hours
    check_configs(spec, cells, extra)
    check_recipe(spec, cells, layout, extra)
    pending = [c for c in cells if not is_collected(layout.result_dir(c))]
    counts: dict[str, Any] = {"skipped": len(cells) - len(pending), "trained": 0, "collected": 0, "diverged": 0,
                              "failed": 0, "stopped": 0, "not_run": 0}
    out(f"study {spec.name}: {counts['skipped']} of {len(cells)} cells already have results in {layout.results}; "
        f"{len(pending)} to run ({executor.describe()})")
    cost = CostModel.from_folders([layout.results, layout.runs, layout.results.parent])
    planned = {cell: base_config(spec, cell, extra) for cell in pending}  # for the time estimates
    epochs_before: dict[Cell, int] = {}
    longest: dict[str, float] = {}
    failed: set[Cell] = set()
    last_progress = [0.0]
    now_running: list[Running] = []

    def finish(cell: Cell, steps: str, diverged: Optional[str], seconds: Optional[float]) -> None:
        error = final_error(layout.run_dir(cell))  # read before anything is written: a damaged run leaves no results
        info = cell_info(spec, cell, steps, cell_overrides(spec, cell, extra), diverged)
        folder = collect(layout.run_dir(cell), layout.result_dir(cell), info)
        counts["collected"] += 1
        counts["diverged"] += bool(diverged)
        result = CellResult(cell, folder, diverged, error, seconds)
        out(f"done: {cell} — {result.describe()} → {folder}")
        if on_result is not None:
            try:
                on_result(result)
            except Exception as error:  # a failing hook (e.g. git) must not lose the study
                out(f"WARNING: the result hook failed for {cell}: {type(error).__name__}: {error}")

    def fail(cell: Cell, why: str) -> None:
        failed.add(cell)
        counts["failed"] += 1
        out(f"FAILED: {cell}: {why}")

    def settle(cell: Cell, action: Callable[[], None]) -> None:
        """``action()``, which reads an ended run and collects it; if it cannot, the cell fails and the
        study goes on."""
        try:
            action()
        except Exception as problem:
            why = problem if isinstance(problem, UserError) else f"{type(problem).__name__}: {problem}"
            fail(cell, f"its results cannot be collected: {why}")

    def ready(cell: Cell) -> bool:
        source = source_cell(spec, cell)
        return source is None or is_collected(layout.result_dir(source))

    def fits(cell: Cell) -> bool:
        """Ends before the deadline: by the longest run of its model seen here, else by the estimate."""
        expected = longest.get(cell.model) or cost.seconds(cell.model, planned[cell])[0]
        return deadline is None or time.time() + expected <= deadline

    def progress(running: list[Running], force: bool = False) -> None:
        now = time.time()
        if not force and now - last_progress[0] < progress_every:
            return
        last_progress[0] = now
        left = sum(cost.seconds(cell.model, planned[cell])[0] for cell in pending)
        for r in running:
            total, _ = cost.seconds(r.tag.model, r.task.config, epochs_before.get(r.tag, 0))
            left += max(0.0, total - (now - r.began))
        done = counts["skipped"] + counts["collected"]
        diverged = f" ({counts['diverged']} diverged)" if counts["diverged"] else ""
        out(f"progress: {done}/{len(cells)} done{diverged}, {len(running)} running, {len(pending)} queued, "
            f"{counts['failed']} failed; ~{format_hours(left / max(1, executor.capacity))} left")

    def prepare(cell: Cell) -> Optional[Task]:
        """The task of ``cell``, or ``None`` when it needs no run (collected now, or cannot run)."""
        try:
            config = cell_config(spec, cell, layout, extra)
            run = layout.run_dir(cell)
            if RunFolder(run).started:
                problem = config_difference(config, read_yaml(RunFolder(run).config_file))
                if problem:
                    raise UserError(f"scratch run {run} has another recipe ({problem}); "
                                    "use another --runs folder or delete it")
        except UserError as error:
            source = source_cell(spec, cell)
            if source is not None and diverged_reason(layout.result_dir(source)):
                out(f"not run: {cell}: its source {source} diverged")
                counts["not_run_diverged_source"] = counts.get("not_run_diverged_source", 0) + 1
            else:
                fail(cell, str(error))
            return None
        steps = config["model"]["steps"]
        run, log = layout.run_dir(cell), layout.log(cell)
        if RunFolder(run).finished:  # trained before, not yet collected
            settle(cell, lambda: finish(cell, steps, run_divergence(run), None))
            return None
        if RunFolder(run).started:
            diverged = run_divergence(run, log)  # unfinished: reads diverged.json and the log, not the metrics
            if diverged:  # diverged before, not yet collected: a result, not retried
                settle(cell, lambda: finish(cell, steps, diverged, None))
                return None
        return make_task(cell, config, layout, threads, gpus)

    def next_task() -> Optional[tuple[Task, Cell]]:
        while True:
            cell = next((c for c in pending if ready(c) and fits(c)), None)
            if cell is None:
                return None
            pending.remove(cell)
            task = prepare(cell)
            if task is not None:
                try:
                    epochs_before[cell] = len(read_metrics(task.run_dir))
                except UserError:  # damaged: the trainer, resuming, says so in the cell's log
                    epochs_before[cell] = 0
                return task, cell

    def on_start(r: Running) -> None:
        out(f"{'resuming' if r.task.resume else 'starting'}: {r.tag} (steps {r.task.config['model']['steps']}) "
            f"in {r.task.run_dir}")
        now_running.append(r)
        progress(now_running, force=True)

    def on_end(r: Running, code: Optional[int], stopping: Optional[str]) -> None:
        cell, run = r.tag, r.task.run_dir
        if r in now_running:
            now_running.remove(r)
        if code is None:  # could not start
            fail(cell, "the executor could not start it")
            return
        seconds = time.time() - r.began
        longest[cell.model] = max(longest.get(cell.model, 0.0), seconds)
        finished = code == 0 and RunFolder(run).finished

        def record() -> None:
            diverged = run_divergence(run, None if finished else r.task.log)
            if finished or diverged:
                counts["trained"] += 1
                if finished and not r.task.resume:
                    cost.record(cell.model, seconds, len(read_metrics(run)))
                finish(cell, r.task.config["model"]["steps"], diverged, seconds)
            elif stopping is not None:
                counts["stopped"] += 1
                out(f"stopped: {cell} ({stopping}); resumable from {run}")
            else:
                why = log_error(r.task.log)
                fail(cell, f"exit code {code}{': ' + why if why else ''}; see {r.task.log}")

        settle(cell, record)
        progress(now_running, force=True)

    stopped = run_tasks(executor, next_task, on_end, on_start=on_start, tick=progress,
                        poll_interval=poll_interval, out=out)
    for cell in [c for c in pending if not ready(c)]:
        source = source_cell(spec, cell)
        why = "failed" if source in failed else "was not run"
        out(f"not run: {cell}: its source {source} {why}")
    late = [c for c in pending if ready(c)]
    if late:
        why = f"stopped by {stopped}" if stopped else f"--max-hours {max_hours} reached"
        out(f"not started: {len(late)} cells ({why}); run again to continue")
    if stopped:
        out(f"stopped by {stopped}: {counts['stopped']} run(s) checkpointed; run the same command again "
            "to resume them")
    counts["not_run"] = len(pending)
    counts["signal"] = stopped
    out(f"study {spec.name}: {summary_line(counts, len(cells))} in {format_hours(time.time() - start)}")
    return counts


def summary_line(counts: dict[str, Any], cells: int) -> str:
    """``120 cells: 14 already had results, 3 collected (1 diverged), 1 failed, 102 not run``."""
    parts = [f"{counts['skipped']} already had results"]
    if counts["collected"]:
        diverged = f" ({counts['diverged']} diverged)" if counts["diverged"] else ""
        untrained = counts["collected"] - counts["trained"]
        parts.append(f"{counts['collected']} collected{diverged}"
                     + (f", {untrained} of them trained before this call" if untrained > 0 else ""))
    parts += [f"{counts[key]} {label}" for key, label in (("failed", "failed"), ("stopped", "stopped with a checkpoint"),
                                                          ("not_run", "not run"),
                                                          ("not_run_diverged_source", "not run: source diverged"))
              if counts.get(key)]
    return f"{cells} cell{'s' if cells != 1 else ''}: " + ", ".join(parts)
