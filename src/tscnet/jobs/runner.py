"""The one loop that runs tasks through an executor: :func:`run_tasks`, what the study scheduler
(:func:`tscnet.study.scheduler.run_study`) and the sweep (:func:`tscnet.study.sweep.run_sweep`) share.

It keeps the executor busy with the caller's next task, polls the running ones, hands each one's
exit code to the caller as it ends, and on SIGINT or SIGTERM starts nothing more, forwards the
signal to every running task (which checkpoints and exits) and waits for them. What a task is
(a study's cell, a sweep's run), what to run next and what an exit code means are the caller's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .executors.base import Executor, Task
from .signals import CatchSignals


class StopSignals(CatchSignals):
    """While active, SIGINT/SIGTERM to this process are recorded, not raised.

    :attr:`signal_name` is the first one's name (``None`` while none came); :meth:`take` returns the
    signals received since its last call, for the scheduler to forward (``kill -INT`` stops a
    ``nohup``-ed study).
    """

    def __init__(self) -> None:
        super().__init__()
        #: The first signal's name (``"SIGINT"``), ``None`` while none came.
        self.signal_name: str | None = None
        self._received: list[int] = []

    def _handle(self, signum: int, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        self._received.append(signum)

    def take(self) -> list[int]:
        """The signals (numbers) received since the last call."""
        taken, self._received = self._received, []
        return taken


@dataclass
class Running:
    """A started task: its handle and when it started (``began``, ``time.time()``)."""

    task: Task
    handle: Any
    began: float
    tag: Any = None  # the caller's (a study's cell)


def run_tasks(
    executor: Executor,
    next_task: Callable[[], tuple[Task, Any] | None],
    on_end: Callable[[Running, int | None, str | None], None],
    *,
    on_start: Callable[[Running], None] = lambda r: None,
    tick: Callable[[list[Running]], None] = lambda r: None,
    waiting: Callable[[], bool] = lambda: False,
    poll_interval: float = 1.0,
    out: Callable[[str], None] = print,
) -> str | None:
    """Keep ``executor`` busy: start ``next_task()`` (``(task, tag)``, or ``None`` when nothing can start now)
    while fewer than ``executor.capacity`` run, poll them, call ``on_end(running, exit code, stop signal)``
    as each ends (exit code ``None``: it could not start), until nothing runs and nothing starts.

    SIGINT/SIGTERM (see :class:`StopSignals`) stop the starting and are forwarded to every running
    task once each; the loop then waits for them to end. Returns the first signal's name, or ``None``.
    ``tick(running)`` is called once per poll (progress lines); while ``waiting()`` is true (tasks run
    by another process that ``tick`` watches) the loop polls on with nothing of its own running.
    """
    running: list[Running] = []
    with StopSignals() as stop:
        try:
            while True:
                for signum in stop.take():
                    if running:
                        out(
                            f"{signal.Signals(signum).name}: starting nothing more; {len(running)} running "
                            "run(s) checkpoint and stop (run the same command again to resume them)"
                        )
                    for r in running:
                        executor.stop(r.handle, signum)
                while len(running) < executor.capacity and stop.signal_name is None:
                    nxt = next_task()
                    if nxt is None:
                        break
                    task, tag = nxt
                    try:
                        handle = executor.start(task)
                    except UserError as error:
                        out(f"FAILED to start {task.name}: {error}")
                        on_end(Running(task, None, time.time(), tag), None, stop.signal_name)
                        continue
                    running.append(Running(task, handle, time.time(), tag))
                    on_start(running[-1])
                if not running and (stop.signal_name is not None or not waiting()):
                    break
                time.sleep(poll_interval)
                for r in list(running):
                    code = executor.poll(r.handle)
                    if code is not None:
                        running.remove(r)
                        on_end(r, code, stop.signal_name)
                tick(running)
        finally:
            for r in running:  # an exception in the loop: ask the children to checkpoint and stop
                executor.stop(r.handle, signal.SIGTERM)
            executor.close()
    return stop.signal_name
