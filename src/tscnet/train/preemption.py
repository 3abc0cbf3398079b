"""Stopping a run cleanly: SIGTERM / SIGINT finish the current step, checkpoint, and exit.

Schedulers (Slurm, Kubernetes, spot instances) send SIGTERM and give seconds before SIGKILL. While
training, :class:`StopRequest` turns the first SIGTERM or SIGINT into a flag that the engine reads
between steps: it writes a mid-epoch checkpoint (atomically) and raises :class:`TrainingStopped`,
whose one-line message says how to resume. A second signal stops at once (KeyboardInterrupt),
unless it comes within :data:`REPEAT_S` of the first: that is the same request delivered twice
(Slurm signals every process of a job step, and torchrun forwards the signal it got to its workers;
a terminal's Ctrl-C reaches torchrun and its workers alike).
Under torchrun every rank agrees on the step at which to stop (the flag is all-reduced).

``train.checkpoint_every`` adds periodic mid-epoch checkpoints: ``N`` (steps) or ``"Nmin"``.

``TSCNET_TEST_SIGNAL=POINT@N`` (tests only) makes the process send itself a real SIGTERM at a
named point: ``step@N`` after global step N, ``eval@N`` as epoch N's evaluation starts,
``eval@N.K`` after K batches of epoch N's evaluation, ``save@N`` as epoch N's checkpoint is about
to be written; ``TSCNET_TEST_SIGNAL_RANK=R`` limits it to torchrun rank R. ``TSCNET_TEST_KILL=POINT@N``
(tests only) does the same with SIGKILL (kill -9: no checkpoint, no clean-up), and also names
``collect@FILE``: the study process kills itself as FILE has been copied into a cell's temporary
results folder (``collect@cell.json``: the folder complete, not yet renamed into place).

A signal during an evaluation stops it within a batch (under torchrun, within a few: the ranks
agree every few batches); the checkpoint then holds the trained epoch, and ``resume`` redoes the
evaluation only.
"""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from ..errors import UserError
from ..jobs.signals import REPEAT_S, CatchSignals


class TrainingStopped(UserError):
    """The run was stopped by a signal after writing its checkpoint; ``--resume`` continues it."""


class StopRequest(CatchSignals):
    """While active, SIGTERM/SIGINT set :attr:`signum` instead of killing."""

    def __init__(self) -> None:
        super().__init__()
        #: The first signal's number, ``None`` while none came.
        self.signum: int | None = None
        self._at = 0.0

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if time.monotonic() - self._at < REPEAT_S:  # the same request, delivered twice
                return
            self.__exit__()  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum, self._at = signum, time.monotonic()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "nothing"

    def requested(self, device: torch.device) -> bool:
        """Whether any rank got a signal (a collective under torchrun: call it on every rank)."""
        return self.poll(device)[0]

    def poll(self, device: torch.device, checkpoint_due: bool = False) -> tuple[bool, bool]:
        """``(stop, checkpoint)`` agreed by every rank (one collective under torchrun): stop if any
        rank got a signal, checkpoint if any rank's clock says so (wall clocks differ between ranks,
        and a checkpoint gathers from all of them)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum is not None, checkpoint_due
        flags = torch.tensor([0 if self.signum is None else int(self.signum), int(checkpoint_due)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, due = flags.tolist()
        if signum and self.signum is None:
            self.signum = int(signum)
        return bool(signum), bool(due)


class CheckpointClock:
    """When a periodic mid-epoch checkpoint is due: every N steps, or every N minutes."""

    def __init__(self, every: int | str | None) -> None:
        self.steps: int | None = None
        self.seconds: float | None = None
        if every in (None, 0, False):
            pass
        elif isinstance(every, int) and not isinstance(every, bool) and every > 0:
            self.steps = every
        elif isinstance(every, str) and every.endswith("min") and _positive(every[:-3]):
            self.seconds = 60.0 * float(every[:-3])
        else:
            raise UserError(
                f"train.checkpoint_every must be 0 (off), a number of steps or minutes like '10min'; got {every!r}"
            )
        self._last = time.monotonic()
        self._checked: int | None = None  # the step of the previous call

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due at ``step``: a multiple of N steps was reached since the
        previous call (calls may skip steps), or N minutes passed."""
        if self.steps is not None:
            previous, self._checked = self._checked, step
            return step % self.steps == 0 if previous is None else step // self.steps > previous // self.steps
        if self.seconds is not None and time.monotonic() - self._last >= self.seconds:
            self._last = time.monotonic()
            return True
        return False


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def inject_signal(point: str, n: int | str) -> None:
    """Send this process SIGTERM if ``TSCNET_TEST_SIGNAL`` names ``point@n``, SIGKILL if ``TSCNET_TEST_KILL``
    does (fault injection for tests)."""
    if os.environ.get("TSCNET_TEST_SIGNAL_RANK") not in (None, os.environ.get("RANK", "0")):
        return
    if os.environ.get("TSCNET_TEST_SIGNAL") == f"{point}@{n}":
        os.kill(os.getpid(), signal.SIGTERM)
    if os.environ.get("TSCNET_TEST_KILL") == f"{point}@{n}":
        os.kill(os.getpid(), signal.SIGKILL)
