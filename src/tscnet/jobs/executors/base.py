"""The executor interface: how a scheduler runs one task (a study's cell, a sweep's run) somewhere.

The scheduler (:func:`tscnet.jobs.runner.run_tasks`, and its callers :mod:`tscnet.study.scheduler`
and :mod:`tscnet.study.sweep`) owns the plan, the order, skipping, resuming, collecting results and
stopping on a signal; an executor only runs commands. For each cell it hands
:meth:`Executor.start` a :class:`Task`, then calls :meth:`Executor.poll` on the handle
``start`` returned (about once a second, from the scheduler's one thread) until it gives an exit
code. It never starts more than :attr:`Executor.capacity` tasks at once.

A task's :attr:`Task.command` is the whole cell: ``python -m tscnet.cli train --no-progress
--config <Task.recipe> --out <Task.run_dir>`` for a new run, ``... --out <run_dir> --resume`` for
an unfinished one (the run folder then holds its own ``config.yaml``; :attr:`Task.recipe` is still
written, identical to it). The recipe file stays in place until the task ends. The command writes
everything it produces into :attr:`Task.run_dir`; its stdout and stderr belong, appended, in
:attr:`Task.log` (the scheduler reads the log for the engine's divergence error). Exit code 0:
the run finished (its ``model_card.json`` exists); non-zero: it failed, diverged or was stopped
(the scheduler tells which from the run folder and the log, not from the code).

Signals: on SIGINT/SIGTERM to the study the scheduler starts no further task and calls
:meth:`Executor.stop` with the signal number on every running handle, once per signal received;
the executor delivers it to the training process (``tscnet train`` writes a mid-epoch checkpoint
and exits non-zero), and the scheduler keeps polling until every handle has an exit code. A second
signal is forwarded too (the trainer then stops at once). Executors must not install signal
handlers of their own.

An executor is registered under a name (:func:`tscnet.jobs.executors.register_executor`) and
built from keyword options: the spec's ``executor:`` mapping (minus ``kind``) with the command
line's flags on top, and for Slurm the spec's ``slurm:`` mapping.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    """One cell to run: what :meth:`Executor.start` receives.

    Attributes:
        name: the cell, for humans and job names, e.g. ``"cifar_resnet20 tsc lr0.1 seed0"``.
        config: the cell's resolved recipe (what ``recipe`` holds): ``config["train"]["device"]``
            etc. may be read, e.g. to size a job; do not modify.
        command: the argv to run, ``[sys.executable, "-m", "tscnet.cli", "train", ...]``.
        recipe: the recipe file ``command`` reads (already written).
        run_dir: the run folder (absolute); the command creates it.
        log: the log file (absolute), to append stdout and stderr to.
        cwd: the working directory for ``command`` (relative paths in the recipe, e.g. an
            ablation's ``profile:PATH``, resolve against it).
        threads: intra-op CPU threads for the run (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``).
        gpus: GPUs the run asks for; 0 = the executor's default (local: one per cell through
            ``CUDA_VISIBLE_DEVICES`` where there are GPUs, else the CPU; Slurm: its
            ``gpus_per_node`` option). More than one: a distributed run (torchrun) where the
            executor supports it.
        resume: whether ``command`` resumes an unfinished run (``--resume``).
        env: extra environment variables for the command.
    """

    name: str
    config: dict
    command: list[str]
    recipe: Path
    run_dir: Path
    log: Path
    cwd: Path
    threads: int = 1
    gpus: int = 0
    resume: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with the thread counts and :attr:`env` applied (what the command should see)."""
        return {**base, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads), **self.env}


class Executor(abc.ABC):
    """Runs :class:`Task`\\ s. Subclasses set :attr:`name` and implement start/poll/stop."""

    #: The executor's name, as registered (``local``, ``slurm``).
    name: str = "?"

    #: The most tasks this executor runs at once (the scheduler never starts more).
    capacity: int = 1

    @abc.abstractmethod
    def start(self, task: Task) -> Any:
        """Start ``task`` without waiting for it; returns an opaque handle for :meth:`poll`/:meth:`stop`.

        Raises:
            tscnet.errors.UserError: the task cannot be started (bad option, no such partition, ...);
                the scheduler records the cell as failed and goes on.
        """

    @abc.abstractmethod
    def poll(self, handle: Any) -> int | None:
        """``None`` while the task runs (or waits in a queue), else its exit code (0 = finished).
        A task that ended without a code (killed, cancelled, lost node) returns a non-zero code."""

    @abc.abstractmethod
    def stop(self, handle: Any, signum: int) -> None:
        """Deliver signal ``signum`` (SIGINT or SIGTERM) to the running task's trainer, which checkpoints
        and exits; a task not running yet (queued) is cancelled. Returns at once; :meth:`poll` reports
        the end."""

    def describe(self) -> str:
        """One line for the study's first output, e.g. ``"local: 2 workers, 1 thread each, CPU"``."""
        return f"{self.name}: {self.capacity} at a time"

    def close(self) -> None:  # noqa: B027 - an optional hook: an executor that holds nothing keeps it empty
        """Release what the executor holds (called once, after every task has ended)."""
