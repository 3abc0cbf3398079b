"""SIGINT and SIGTERM turned into a method call while a context manager is active.

The base of the job runner's :class:`~tscnet.jobs.runner.StopSignals` (a study or sweep that
forwards the signal to its tasks) and of the trainer's :class:`~tscnet.train.preemption.StopRequest`
(a run that checkpoints and exits).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_S = 1.0  #: a second signal sooner than this after the first is the same request


class CatchSignals:
    """Context manager: while active, SIGTERM/SIGINT call ``self._handle`` instead of their handlers
    (restored on exit). Installed even where the shell ignored SIGINT (background jobs of a
    non-interactive shell), so ``kill -INT`` reaches a ``nohup``-ed job; outside the main thread,
    where Python cannot set handlers, nothing is installed."""

    def __init__(self) -> None:
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}  # signal.signal's

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        raise NotImplementedError
