"""The local executor: each cell a ``tscnet train`` subprocess on this machine, ``workers`` at a time.

On a CPU each run gets ``threads`` intra-op threads (on a 2-core machine two 1-thread runs beat one
2-thread run for CIFAR-size models). Where there are GPUs, each run gets one of them through
``CUDA_VISIBLE_DEVICES`` (the least busy; with more workers than GPUs some share). Each child runs
in its own process group (``start_new_session``): a signal to the study's process group reaches a
child once, forwarded by the scheduler, not twice.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import IO

from ...errors import UserError
from . import register_executor
from .base import Executor, Task


@dataclass
class LocalHandle:
    """A started task: its process, its open log and the GPU it holds (``None``: none)."""

    proc: subprocess.Popen
    log: IO
    gpu: int | None


def _visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` entries, else 0..n−1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA build, no driver: a CPU machine
        return []


@register_executor("local")
class LocalExecutor(Executor):
    """``workers`` subprocesses at a time, ``threads`` threads each, one GPU each where there are GPUs.

    Args:
        workers: cells run at once (≥ 1).
        threads: intra-op threads per cell (≥ 1), used where a task does not say otherwise.
        gpus: how many of the visible GPUs to use (``None``: all; 0: none, CPU only).
    """

    name = "local"

    def __init__(self, workers: int = 2, threads: int = 1, gpus: int | None = None) -> None:
        for key, value in (("workers", workers), ("threads", threads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"executor local: {key} must be a positive integer, got {value!r}")
        self.capacity, self.threads = workers, threads
        devices = _visible_gpus()
        self.devices = devices if gpus is None else devices[: max(0, int(gpus))]
        self._busy: dict[int, int] = {i: 0 for i in range(len(self.devices))}

    def describe(self) -> str:
        where = f"one of {len(self.devices)} GPU(s) each" if self.devices else "CPU"
        return f"local: {self.capacity} at a time, {self.threads} thread(s) each, {where}"

    def _gpu_for(self, task: Task) -> int | None:
        if not self.devices or str(task.config.get("train", {}).get("device", "auto")) == "cpu":
            return None
        gpu = min(self._busy, key=lambda i: (self._busy[i], i))
        self._busy[gpu] += 1
        return gpu

    def start(self, task: Task) -> LocalHandle:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        gpu = self._gpu_for(task)
        env = task.environment(dict(os.environ))
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.devices[gpu]
        log = open(task.log, "a")  # noqa: SIM115 - the log outlives this call: the handle closes it when the task ends
        try:
            proc = subprocess.Popen(
                task.command,
                cwd=task.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            log.close()
            if gpu is not None:
                self._busy[gpu] -= 1
            raise UserError(f"cannot start {task.name}: {error}") from None
        return LocalHandle(proc, log, gpu)

    def poll(self, handle: LocalHandle) -> int | None:
        code = handle.proc.poll()
        if code is not None and not handle.log.closed:
            handle.log.close()
            if handle.gpu is not None:
                self._busy[handle.gpu] -= 1
        return code

    def stop(self, handle: LocalHandle, signum: int) -> None:
        if handle.proc.poll() is None:
            handle.proc.send_signal(signum)
