"""Run many training jobs (a grid of models × policies × seeds), resumable, a few at a time.

Each job is one ``tscnet train`` process writing its own run folder; a finished run (its
``model_card.json`` exists) is skipped, an interrupted one is resumed from its checkpoint. Jobs
run ``workers`` at a time with ``threads`` intra-op threads each (on a 2-core CPU two 1-thread
jobs beat one 2-thread job for small models).

A run that diverges is a result, as in a study: printed with the engine's message and never
retried. With ``progress``, one bar counts the finished epochs of all the runs.

This is the study scheduler's loop (:func:`tscnet.jobs.runner.run_tasks`) on the local
executor, for jobs that are plain (config, run folder) pairs; ``tscnet study`` adds results
folders, ablations, divergence records and reports on top. Stopping works the same: the first
SIGINT or SIGTERM to the sweep starts no further job and is passed on to the running trainers,
which checkpoint and exit; a second one is passed on too (the trainers then stop at once).
Trainers run in their own process group, so a signal to the sweep's whole group reaches each of
them exactly once, through the sweep.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..jobs.executors import Task, create_executor
from ..jobs.runner import run_tasks
from ..train import run as runfiles
from ..train.config import dump_config
from ..train.console import duration, is_terminal
from .results import log_error


@dataclass
class Job:
    """One run of a sweep: its recipe (``config``) and its run folder (``out``)."""

    config: dict
    out: Path

    @property
    def finished(self) -> bool:
        return (self.out / runfiles.CARD_FILE).exists()

    @property
    def started(self) -> bool:
        return (self.out / runfiles.CONFIG_FILE).exists()

    @property
    def diverged(self) -> str | None:
        """The engine's divergence message (a result, never retried), else ``None``."""
        try:
            return runfiles.diverged_message(self.out)
        except (OSError, UserError):  # damaged: not a result, the next call trains it again
            return None


class SweepProgress:
    """Finished epochs over all of a sweep's runs (their ``metrics.jsonl`` rows): a bar with rate
    and ETA on a terminal, a line per tenth of the total in a log."""

    def __init__(self, jobs: list[Job], workers: int, enabled: bool) -> None:
        self.jobs, self.enabled = jobs, enabled
        self.total = max(1, sum(int(j.config["train"]["epochs"]) for j in jobs))
        self.done = self.first = self._count()
        self.began = time.monotonic()
        self.bar = tqdm(
            total=self.total,
            initial=self.done,
            unit="epoch",
            dynamic_ncols=True,
            desc=f"{len(jobs)} runs, {workers} at a time",
            disable=not (enabled and is_terminal()),
        )

    def _count(self) -> int:
        """Rows written so far (counted, not parsed: a trainer may be writing one)."""
        count = 0
        for job in self.jobs:
            try:
                count += (job.out / runfiles.METRICS_FILE).read_bytes().count(b"\n")
            except OSError:  # not started yet
                pass
        return count

    def update(self) -> None:
        done = self._count()
        self.bar.update(done - self.done)
        if self.enabled and self.bar.disable and 10 * done // self.total > 10 * self.done // self.total:
            elapsed, new = time.monotonic() - self.began, done - self.first
            eta = f"  ETA {duration(elapsed / new * (self.total - done))}" if new > 0 else ""
            print(f"{done}/{self.total} epochs  {new / elapsed:.2f} epoch/s{eta}", flush=True)
        self.done = done

    def write(self, line: str) -> None:
        self.bar.write(line)  # above the bar, which redraws below it
        sys.stdout.flush()

    def close(self) -> None:
        self.update()
        self.bar.close()


def job_task(job: Job, scratch: Path, threads: int, index: int = 0, cwd: Path | None = None):
    """The executor task of ``job``: ``python -m tscnet.cli train --no-progress --out RUN`` with
    ``--resume`` (started before) or ``--config`` (a recipe written to ``scratch``); log ``<RUN>.log``."""
    out = Path(job.out).resolve()
    recipe = scratch / f"recipe{index}.yaml"
    recipe.write_text(dump_config(job.config))
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(out)]
    command += ["--resume"] if job.started else ["--config", str(recipe)]
    return Task(
        name=str(job.out),
        config=job.config,
        command=command,
        recipe=recipe,
        run_dir=out,
        log=out.parent / f"{out.name}.log",
        cwd=cwd or Path.cwd(),
        threads=threads,
        resume=job.started,
    )


def run_sweep(jobs: list[Job], workers: int = 2, threads: int = 1, progress: bool = False) -> list[Job]:
    """Run the ``jobs`` neither finished nor diverged; returns those left unfinished (failed: the
    line printed and their logs say why; or stopped by SIGINT/SIGTERM: the next call resumes them).
    A job whose training diverged is a result: printed with the engine's message, not returned,
    never retried. ``progress``: one count of finished epochs over all the jobs (:class:`SweepProgress`)."""
    todo = [j for j in jobs if not j.finished and not j.diverged]
    print(
        f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished (or diverged); running {len(todo)} "
        f"({workers} at a time, {threads} thread(s) each)",
        flush=True,
    )
    failed: list[Job] = []
    queue = list(enumerate(todo))
    ended: list[Job] = []
    start = time.time()
    shown = SweepProgress(todo, workers, progress)
    # Recipes are only read at start-up (each run folder keeps its own config.yaml): a scratch dir.
    with tempfile.TemporaryDirectory(prefix="tscnet-sweep-") as scratch:

        def next_task():
            if not queue:
                return None
            index, job = queue.pop(0)
            job.out.parent.mkdir(parents=True, exist_ok=True)
            return job_task(job, Path(scratch), threads, index), job

        def on_end(running, code, stopping) -> None:
            job = running.tag
            ended.append(job)
            if job.finished or job.diverged:
                what = "finished" if job.finished else f"diverged: {job.diverged}"
            elif stopping is not None:
                what = f"stopped by {stopping}"
            else:
                failed.append(job)
                why = log_error(running.task.log)
                what = f"FAILED (exit code {code}{': ' + why if why else ''}; log: {running.task.log})"
            shown.write(f"[{len(ended)}/{len(todo)}] {job.out}: {what}")

        try:
            stopped = run_tasks(
                create_executor("local", workers=workers, threads=threads),
                next_task,
                on_end,
                tick=lambda running: shown.update(),
                out=shown.write,
            )
        finally:
            shown.close()
    unfinished = [j for j in todo if not j.finished and not j.diverged]
    note = f"; stopped by {stopped}, {len(unfinished) - len(failed)} left (run again to resume)" if stopped else ""
    print(f"sweep done in {(time.time() - start) / 60:.1f} min; {len(failed)} failed{note}", flush=True)
    return unfinished
