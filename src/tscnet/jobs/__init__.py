"""Running commands as jobs: what ``tscnet study`` and sweeps of ``tscnet train`` runs share.

* :mod:`.executors`: a :class:`Task` (one command, its run folder and log) and the executors that run
  tasks (``local`` subprocesses, ``slurm`` jobs), looked up by name with :func:`create_executor`;
* :mod:`.runner`: :func:`run_tasks`, the one loop that keeps an executor busy, forwards SIGINT/SIGTERM
  to the running tasks and waits for them;
* :mod:`.signals`: :class:`CatchSignals`, SIGINT/SIGTERM turned into a call while active (the
  runner's :class:`StopSignals`, the trainer's ``StopRequest``);
* :mod:`.run_folder`: :class:`RunFolder`, the files a training run writes, the state they say it
  is in (started, finished, diverged) and the lock a training process holds.

The layer below ``train`` and ``study``: it imports neither (tests/test_architecture.py).
"""

from .executors import Executor, Task, create_executor, register_executor
from .run_folder import RunFolder, RunLocked
from .runner import Running, StopSignals, run_tasks
from .signals import CatchSignals

__all__ = [
    "CatchSignals",
    "Executor",
    "RunFolder",
    "RunLocked",
    "Running",
    "StopSignals",
    "Task",
    "create_executor",
    "register_executor",
    "run_tasks",
]
