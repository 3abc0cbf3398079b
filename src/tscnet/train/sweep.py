"""Run many training jobs (a grid of models × policies × seeds), resumable, a few at a time.

Each job is one ``tscnet train`` process writing its own run folder; a finished run (its
``model_card.json`` exists) is skipped, an interrupted one is resumed from its checkpoint. Jobs
run ``workers`` at a time with ``threads`` intra-op threads each (on a 2-core CPU two 1-thread
jobs beat one 2-thread job for small models).

This is the study scheduler's loop (:func:`tscnet.study.scheduler.run_tasks`) on the local
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
from typing import Optional

from . import run as runfiles
from .config import dump_config


@dataclass
class Job:
    config: dict
    out: Path

    @property
    def finished(self) -> bool:
        return (self.out / runfiles.CARD_FILE).exists()

    @property
    def started(self) -> bool:
        return (self.out / runfiles.CONFIG_FILE).exists()


def job_task(job: Job, scratch: Path, threads: int, index: int = 0, cwd: Optional[Path] = None):
    """The executor task of ``job``: ``python -m tscnet.cli train --no-progress --out RUN`` with
    ``--resume`` (started before) or ``--config`` (a recipe written to ``scratch``); log ``<RUN>.log``."""
    from ..study.executors import Task

    out = Path(job.out).resolve()
    recipe = scratch / f"recipe{index}.yaml"
    recipe.write_text(dump_config(job.config))
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(out)]
    command += ["--resume"] if job.started else ["--config", str(recipe)]
    return Task(name=str(job.out), config=job.config, command=command, recipe=recipe, run_dir=out,
                log=out.parent / f"{out.name}.log", cwd=cwd or Path.cwd(), threads=threads, resume=job.started)


def run_sweep(jobs: list[Job], workers: int = 2, threads: int = 1) -> list[Job]:
    """Run the unfinished ``jobs``; returns those left unfinished (failed: their logs say why; or
    stopped by SIGINT/SIGTERM: the next call resumes them)."""
    from ..study.executors import create_executor
    from ..study.scheduler import run_tasks

    todo = [j for j in jobs if not j.finished]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)} "
          f"({workers} at a time, {threads} thread(s) each)", flush=True)
    failed: list[Job] = []
    queue = list(enumerate(todo))
    ended: list[Job] = []
    start = time.time()
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
            if code != 0 and stopping is None:
                failed.append(job)
                print(f"FAILED ({code}): {job.out} — see {running.task.log}", flush=True)
            ended.append(job)
            print(f"[{len(ended)}/{len(todo)}] {'finished' if job.finished else 'ended'}: {job.out}", flush=True)

        stopped = run_tasks(create_executor("local", workers=workers, threads=threads), next_task,
                            on_end, out=lambda s: print(s, flush=True))
    unfinished = [j for j in todo if not j.finished]
    note = f"; stopped by {stopped}, {len(unfinished) - len(failed)} left (run again to resume)" if stopped else ""
    print(f"sweep done in {(time.time() - start) / 60:.1f} min; {len(failed)} failed{note}", flush=True)
    return unfinished
