"""Run many training jobs (a grid of models × policies × seeds), resumable, a few at a time.

Each job is one ``tscnet train`` process writing its own run folder; a finished run (its
``model_card.json`` exists) is skipped, an interrupted one is resumed from its checkpoint. Jobs
run ``workers`` at a time with ``threads`` intra-op threads each (on a 2-core CPU two 1-thread
jobs beat one 2-thread job for small models).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

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


def _command(job: Job, scratch: Path) -> list[str]:
    base = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(job.out)]
    if job.started:
        return base + ["--resume"]
    recipe = scratch / "recipe.yaml"
    recipe.write_text(dump_config(job.config))
    return base + ["--config", str(recipe)]


def run_job(job: Job, threads: int, cwd: Optional[Path] = None) -> tuple[Job, int, str]:
    """Train (or resume) ``job`` in a ``tscnet train`` subprocess with ``threads`` intra-op threads.

    Returns ``(job, exit code, log file)``; the log ``<run folder>.log`` is appended to. ``cwd``:
    the subprocess's working directory (relative paths in the recipe, e.g. ``profile:PATH``,
    resolve against it).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    job.out.parent.mkdir(parents=True, exist_ok=True)
    log = job.out.parent / f"{job.out.name}.log"
    # The recipe is only read at start-up (the run folder keeps its own config.yaml): a scratch dir.
    with open(log, "a") as f, tempfile.TemporaryDirectory(prefix="tscnet-sweep-") as scratch:
        code = subprocess.run(_command(job, Path(scratch)), env=env, stdout=f, stderr=subprocess.STDOUT,
                              cwd=cwd).returncode
    return job, code, str(log)


def run_sweep(jobs: list[Job], workers: int = 2, threads: int = 1) -> list[Job]:
    """Run the unfinished ``jobs``; returns the jobs that failed (their logs say why)."""
    todo = [j for j in jobs if not j.finished]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)} "
          f"({workers} at a time, {threads} thread(s) each)", flush=True)
    failed: list[Job] = []
    start = time.time()
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), unit="run", dynamic_ncols=True) as bar:
        futures = [pool.submit(run_job, job, threads) for job in todo]
        for future in as_completed(futures):
            job, code, log = future.result()
            if code != 0:
                failed.append(job)
                tqdm.write(f"FAILED ({code}): {job.out} — see {log}")
            bar.update(1)
    print(f"sweep done in {(time.time() - start) / 60:.1f} min; {len(failed)} failed", flush=True)
    return failed
