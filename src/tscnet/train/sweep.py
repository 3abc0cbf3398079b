"""Run many training jobs (a grid of models × policies × seeds), resumable, a few at a time.

Each job is one ``tscnet train`` process writing its own run folder; a finished run (its
``model_card.json`` exists) is skipped, an interrupted one is resumed from its checkpoint. Jobs
run ``workers`` at a time with ``threads`` intra-op threads each (on a 2-core CPU two 1-thread
jobs beat one 2-thread job for small models).

A sweep runs for hours, often in the background (``nohup ... &``), so it stops on a signal the
same way a run does: the first SIGINT or SIGTERM to the sweep process (:class:`SweepStop`) starts
no further job and passes the signal on to the running trainers, which checkpoint and exit; a
second one is passed on too (the trainers then stop at once). Trainers run in their own process
group, so a signal to the sweep's whole group reaches each of them exactly once, through the sweep.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
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


class SweepStop:
    """Context manager: while active, SIGINT/SIGTERM to this process stop the sweep gracefully.

    :attr:`signal` holds the first signal's name (``None`` while nothing was asked); every signal
    is forwarded to the trainer processes :func:`run_job` registered. Handlers are installed even
    where the shell ignored SIGINT (background jobs of a non-interactive shell), so
    ``kill -INT`` stops a ``nohup``-ed sweep.
    """

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.RLock()  # re-entrant: the handler may interrupt start() in the main thread
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SweepStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.signal is None
        self.signal = self.signal or signal.Signals(signum).name
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.send_signal(signum)
        if first:
            print(f"{self.signal}: starting no further run; {len(procs)} running run(s) checkpoint and stop "
                  "(run the same command again to resume them)", file=sys.stderr, flush=True)

    def start(self, command: list[str], **kwargs) -> Optional[subprocess.Popen]:
        """Start ``command`` in its own process group and register it; ``None`` once stopping."""
        with self._lock:
            if self.signal is not None:
                return None
            proc = subprocess.Popen(command, start_new_session=True, **kwargs)
            self._procs.add(proc)
            return proc

    def wait(self, proc: subprocess.Popen) -> int:
        code = proc.wait()
        with self._lock:
            self._procs.discard(proc)
        return code


def run_job(job: Job, threads: int, cwd: Optional[Path] = None,
            stop: Optional[SweepStop] = None) -> tuple[Job, Optional[int], str]:
    """Train (or resume) ``job`` in a ``tscnet train`` subprocess with ``threads`` intra-op threads.

    Returns ``(job, exit code, log file)``; the log ``<run folder>.log`` is appended to. ``cwd``:
    the subprocess's working directory (relative paths in the recipe, e.g. ``profile:PATH``,
    resolve against it). ``stop``: the sweep's :class:`SweepStop`; the exit code is ``None`` when
    it had been asked to stop before the job started.
    """
    stop = stop or SweepStop()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    job.out.parent.mkdir(parents=True, exist_ok=True)
    log = job.out.parent / f"{job.out.name}.log"
    # The recipe is only read at start-up (the run folder keeps its own config.yaml): a scratch dir.
    with open(log, "a") as f, tempfile.TemporaryDirectory(prefix="tscnet-sweep-") as scratch:
        proc = stop.start(_command(job, Path(scratch)), env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
        code = None if proc is None else stop.wait(proc)
    return job, code, str(log)


def run_sweep(jobs: list[Job], workers: int = 2, threads: int = 1) -> list[Job]:
    """Run the unfinished ``jobs``; returns those left unfinished (failed: their logs say why; or
    stopped by SIGINT/SIGTERM, see :class:`SweepStop`: the next call resumes them)."""
    todo = [j for j in jobs if not j.finished]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)} "
          f"({workers} at a time, {threads} thread(s) each)", flush=True)
    failed: list[Job] = []
    start = time.time()
    with SweepStop() as stop, ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(todo), unit="run", dynamic_ncols=True) as bar:
        futures = [pool.submit(run_job, job, threads, None, stop) for job in todo]
        for future in as_completed(futures):
            job, code, log = future.result()
            if code != 0 and stop.signal is None:
                failed.append(job)
                tqdm.write(f"FAILED ({code}): {job.out} — see {log}")
            bar.update(1)
    unfinished = [j for j in todo if not j.finished]
    stopped = f"; stopped by {stop.signal}, {len(unfinished) - len(failed)} left (run again to resume)" \
        if stop.signal else ""
    print(f"sweep done in {(time.time() - start) / 60:.1f} min; {len(failed)} failed{stopped}", flush=True)
    return unfinished
