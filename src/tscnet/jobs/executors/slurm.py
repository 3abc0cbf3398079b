"""The Slurm executor: each cell one batch job, submitted through ``submitit`` (``pip install 'tscnet[slurm]'``).

A job runs one ``tscnet train`` (one task on one node), or with several GPUs per node or several
nodes ``torchrun`` under ``srun`` (one task per node, ``--nproc-per-node`` = GPUs per node; the
nodes meet at the job's first node; only its first node's trainer writes the run folder). Options come from the spec's ``slurm:`` mapping and the
command line (``tscnet study SPEC --executor slurm --partition gpu --time 04:00:00
--gpus-per-node 1 --cpus-per-task 8``):

==================  ==================================================================
``partition``       the partition (default: the cluster's default)
``time``            the job's time limit: ``HH:MM:SS``, ``D-HH:MM:SS`` or minutes (default 2 h)
``gpus_per_node``   GPUs per node (0: a CPU job; > 1: torchrun, one process per GPU)
``cpus_per_task``   CPUs of the job's task (default: the study's threads per cell)
``nodes``           nodes per job (default 1)
``procs_per_node``  training processes per node (default: one per GPU, else 1; > 1 on CPUs: torchrun over gloo)
``workers``         jobs in the queue at once (submitted, pending or running)
``account``         as for ``sbatch``; so are ``qos``, ``mem``, ``constraint``
``setup``           shell lines run before the job's command (``module load ...``, ``source venv/bin/activate``)
``sbatch``          any other ``sbatch`` option, as a mapping (``{exclusive: true, reservation: r1}``)
``folder``          submitit's folder (job pickles and Slurm's own logs); default ``RUN.slurm/`` next to each run
==================  ==================================================================

The job's Python is this one (``sys.executable``): compute nodes must see the same installation
(a shared file system, as ``submitit`` assumes). The cell's output goes to its log, like a local run.

Preemption and requeues: Slurm sends SIGTERM to every process of the job (preemption,
``scontrol requeue``, ``scancel --signal TERM``); the trainer writes its mid-epoch checkpoint and
exits, and a requeued job starts again from the top: finding the run folder, it continues it with
``--resume``, exactly. A time limit is handled the same way: the job asks Slurm for SIGTERM
:func:`warning_s` seconds before it (``--signal TERM@120``; less for limits under 5 minutes, since
Slurm may send it up to :data:`EARLY_S` seconds earlier than asked), and when that was the reason
the trainer stopped — the job still running (not cancelled, not requeued by Slurm), within that
warning (plus :data:`EARLY_S`) of its end, and not stopped by the study (:meth:`SlurmExecutor.stop`
leaves ``folder/<job id>.stop`` first) — the job requeues itself and continues where it stopped.
Slurm holds a requeued job back for about two minutes before it starts it again.

A job that ends otherwise before its run finished (``scancel``, a node lost, its time limit
reached without the warning) leaves one line in the cell's log naming the job and its state, which
the study reports; its run folder is resumed by the next ``tscnet study``.

The job's state is read with ``squeue`` (no accounting database needed), the trainer's exit code
from a file the job writes (``folder/<job id>.exitcode``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from ...errors import UserError
from ..run_folder import RunFolder
from . import register_executor
from .base import Executor, Task

#: SIGTERM this long (seconds) before the time limit: checkpoint, then requeue.
WARNING_S = 120
#: Slurm may send that signal up to a minute earlier than asked (man sbatch, --signal).
EARLY_S = 60
SLACK_S = 30  # and a busy controller a little later than that: the window in which a stop is the warning's
QUEUED = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "PREEMPTED",
}
# How a job that ended before its run finished did, for the line it leaves in the cell's log.
ENDED = {
    "CANCELLED": "was cancelled by scancel",
    "TIMEOUT": "reached its time limit",
    "NODE_FAIL": "lost its node",
    "OUT_OF_MEMORY": "ran out of memory",
    "BOOT_FAIL": "lost its node at boot",
    "DEADLINE": "reached its deadline",
    "FAILED": "failed",
}
SQUEUE_EVERY_S = 5.0  # one squeue for all jobs at most this often
START_SCRIPT = "scripts/start_slurm.sh"


def parse_time(value: str | int | float | None) -> int:
    """A Slurm time limit in minutes: ``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"``, ``"30:00"`` (MM:SS)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, int(round(value)))
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if value is None or isinstance(value, bool) or not match:
        raise UserError(f"executor slurm: time must be minutes or HH:MM:SS (D-HH:MM:SS), got {value!r}")
    days, a, b, c = match.groups()
    if days is None and b is None:  # minutes
        minutes = int(a)
    elif c is None and days is None:  # MM:SS
        minutes = int(a) + (int(b) > 0)
    else:  # [D-]HH:MM[:SS]
        minutes = int(days or 0) * 1440 + int(a) * 60 + int(b or 0) + (int(c or 0) > 0)
    if minutes <= 0:
        raise UserError(f"executor slurm: time must be positive, got {value!r}")
    return minutes


def warning_s(limit_s: int) -> int:
    """Seconds before a time limit of ``limit_s`` seconds at which a job asks for SIGTERM:
    :data:`WARNING_S` (120), or for limits under 5 minutes (limit − :data:`EARLY_S`) / 2, at least 10,
    so that the signal, which Slurm may send up to :data:`EARLY_S` seconds early, comes after the run
    has started (2 minutes: 30 s before the end, at the earliest 30 s after the start)."""
    return max(10, min(WARNING_S, (int(limit_s) - EARLY_S) // 2))


def _seconds(text: str) -> int | None:
    """Seconds of a Slurm duration (``squeue %L``): ``MM:SS``, ``H:MM:SS``, ``D-HH:MM:SS``; ``None``
    for ``INVALID``, ``UNLIMITED``, ``NOT_SET``."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _job_state(job_id: str) -> tuple[str | None, int | None]:
    """A job's state (``RUNNING``; ``COMPLETING`` while it is being cancelled or requeued) and the
    seconds left to its time limit, from ``squeue``; ``(None, None)`` if it does not answer."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %L"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 2:
        return None, None
    return fields[0], _seconds(fields[1])


def slurm_running() -> str | None:
    """``None`` if a Slurm controller answers here, else why not (one line, naming the start script)."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return f"no Slurm here (no sbatch/squeue on PATH); start a single-node one with {START_SCRIPT}"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as error:
        return f"scontrol ping failed ({error}); start a single-node Slurm with {START_SCRIPT}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return (
            f"no Slurm controller answers (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()}); "
            f"start a single-node one with {START_SCRIPT}"
        )
    return None


class CellJob:
    """What a Slurm job runs: the cell's ``tscnet train`` (or ``torchrun``), resumed if its run folder exists.

    Pickled by submitit at submission and unpickled on the compute node, on every (re)start.
    """

    def __init__(self, task: Task, procs_per_node: int, nodes: int, time_limit_s: int, folder: Path) -> None:
        self.command, self.run_dir, self.log, self.cwd = list(task.command), task.run_dir, task.log, task.cwd
        self.env = task.environment({})
        self.procs_per_node, self.nodes, self.time_limit_s, self.folder = procs_per_node, nodes, time_limit_s, folder

    def argv(self, node: int, master: str, job_id: str) -> list[str]:
        command = list(self.command)
        if RunFolder(self.run_dir).started and "--resume" not in command:
            command.append("--resume")  # a requeued job, or one resubmitted by a new `tscnet study`
        if self.procs_per_node > 1 or self.nodes > 1:
            module = command.index("tscnet.cli")  # [python, -m, tscnet.cli, train, ...]
            launch = [
                "-m",
                "torch.distributed.run",
                f"--nnodes={self.nodes}",
                f"--node-rank={node}",
                f"--nproc-per-node={self.procs_per_node}",
            ]
            if self.nodes > 1:
                launch += [
                    f"--master-addr={master}",
                    f"--master-port={29500 + int(re.sub(r'[^0-9]', '', job_id) or 0) % 2000}",
                ]
            else:
                launch += ["--standalone"]
            command = command[: module - 1] + launch + command[module - 1 :]
        return command

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        started = time.monotonic()
        # submitit's handlers: SIGTERM/SIGCONT bypassed here (the trainer gets Slurm's signals itself, being
        # a process of the job step); SIGUSR2 (its own time-limit signal) is not asked for.
        command = self.argv(env.node, env.hostnames[0] if env.hostnames else "localhost", env.job_id)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            log.write(
                f"slurm job {env.job_id} on {env.hostname} (node {env.node + 1}/{env.num_nodes}, restart "
                f"{os.environ.get('SLURM_RESTART_COUNT', '0')}): {' '.join(command)}\n"
            )
            log.flush()
            code = subprocess.call(
                command,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if env.node != 0:
            return code
        if code != 0 and not RunFolder(self.run_dir).finished and self.time_limit_stop(env.job_id, code, started):
            # The time-limit warning stopped it: continue in a requeued job (same id, same folder).
            subprocess.call(["scontrol", "requeue", env.job_id])
            return code
        tmp = self.folder / f".{env.job_id}.exitcode"
        tmp.write_text(f"{code}\n")
        os.replace(tmp, self.folder / f"{env.job_id}.exitcode")
        return code

    def time_limit_stop(self, job_id: str, code: int, started: float) -> bool:
        """Whether the time-limit warning stopped the trainer: it stopped for a signal (its log says so,
        or SIGTERM killed it before it could), the study did not stop it (``<job id>.stop``), and the
        job is still running (a ``scancel`` or a requeue by Slurm shows ``COMPLETING``) within the
        warning's window of its end (by ``squeue``; by this job's clock when that does not answer)."""
        if not (code == -signal.SIGTERM or _stopped_by_signal(self.log)):
            return False
        if (self.folder / f"{job_id}.stop").exists():
            return False
        window = warning_s(self.time_limit_s) + EARLY_S + SLACK_S
        state, left = _job_state(job_id)
        if state is None:
            return time.monotonic() - started >= self.time_limit_s - window
        return state == "RUNNING" and left is not None and left <= window


def _stopped_by_signal(log: Path) -> bool:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return False
    return "stopped by SIG" in tail


@dataclass
class SlurmHandle:
    """A submitted task: its Slurm job id, the task's name and submitit's folder."""

    job_id: str
    name: str
    folder: Path  # submitit's: the job writes <job id>.exitcode there
    log: Path | None = None  # the cell's log: a job that ended early says why there

    @property
    def code_file(self) -> Path:
        return self.folder / f"{self.job_id}.exitcode"


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Each cell one Slurm job (see the module's doc for the options)."""

    name = "slurm"

    def __init__(
        self,
        workers: int = 2,
        threads: int = 1,
        partition: str | None = None,
        time: str | int = "02:00:00",
        gpus_per_node: int = 0,
        cpus_per_task: int | None = None,
        nodes: int = 1,
        account: str | None = None,
        qos: str | None = None,
        mem: str | None = None,
        constraint: str | None = None,
        setup: list | None = None,
        sbatch: dict | None = None,
        folder: str | None = None,
        procs_per_node: int | None = None,
    ) -> None:
        for key, value, least in (
            ("workers", workers, 1),
            ("threads", threads, 1),
            ("gpus_per_node", gpus_per_node, 0),
            ("nodes", nodes, 1),
            ("cpus_per_task", 1 if cpus_per_task is None else cpus_per_task, 1),
            ("procs_per_node", 1 if procs_per_node is None else procs_per_node, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"executor slurm: {key} must be an integer >= {least}, got {value!r}")
        if setup is not None and not (isinstance(setup, list) and all(isinstance(s, str) for s in setup)):
            raise UserError(f"executor slurm: setup must be a list of shell lines, got {setup!r}")
        if sbatch is not None and not isinstance(sbatch, dict):
            raise UserError(f"executor slurm: sbatch must be a mapping of sbatch options, got {sbatch!r}")
        self.minutes = parse_time(time)
        why = slurm_running()  # after the options: a bad option is named wherever it is given
        if why is not None:
            raise UserError(f"executor slurm: {why}")
        self.capacity, self.threads = workers, threads
        self.gpus_per_node = gpus_per_node
        self.procs_per_node = procs_per_node or max(1, gpus_per_node)
        self.nodes, self.cpus_per_task, self.partition = nodes, cpus_per_task, partition
        self.sbatch = {
            k: v
            for k, v in (("account", account), ("qos", qos), ("mem", mem), ("constraint", constraint))
            if v is not None
        }
        self.sbatch.update({str(k).replace("_", "-"): v for k, v in (sbatch or {}).items()})
        self.setup = list(setup or [])
        self.folder = None if folder is None else Path(folder).resolve()
        self._states: dict[str, str] = {}
        self._queried = 0.0
        self._jobs: set[str] = set()

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU(s)" if self.gpus_per_node else "no GPU"
        cpus = self.cpus_per_task or self.threads * self.procs_per_node
        procs = f", torchrun with {self.procs_per_node} process(es) per node" if self.procs_per_node > 1 else ""
        return (
            f"slurm: partition {self.partition or '(default)'}, {self.minutes} min, {self.nodes} node(s) with "
            f"{gpus} and {cpus} CPU(s) per job{procs}, up to {self.capacity} jobs queued at once"
        )

    def _executor(self, task: Task) -> tuple[submitit.SlurmExecutor, Path]:
        folder = self.folder or task.run_dir.parent / f"{task.run_dir.name}.slurm"  # next to RUN.log
        folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=0, python=sys.executable)
        cpus = self.cpus_per_task or task.threads * self.procs_per_node
        params: dict[str, Any] = dict(
            job_name=f"tscnet {task.name}"[:120],
            time=self.minutes,
            nodes=self.nodes,
            ntasks_per_node=1,
            cpus_per_task=cpus,
            stderr_to_stdout=True,
            additional_parameters={"signal": f"TERM@{warning_s(self.minutes * 60)}", "requeue": True, **self.sbatch},
        )
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.setup:
            params["setup"] = self.setup
        executor.update_parameters(**params)
        return executor, folder

    def start(self, task: Task) -> SlurmHandle:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        executor, folder = self._executor(task)
        job_fn = CellJob(task, self.procs_per_node, self.nodes, self.minutes * 60, folder)
        try:
            job = executor.submit(job_fn)
        except Exception as error:  # sbatch refused it (no such partition, account, ...)
            detail = str(error).strip().splitlines()
            raise UserError(f"cannot submit {task.name}: {detail[-1] if detail else type(error).__name__}") from None
        self._jobs.add(job.job_id)
        self._queried = 0.0  # see the new job at the next poll
        with open(task.log, "a") as log:
            log.write(f"submitted as slurm job {job.job_id} ({folder})\n")
        return SlurmHandle(job.job_id, task.name, folder, task.log)

    def _state(self, job_id: str) -> str | None:
        """The job's state from one ``squeue`` of all this executor's jobs (refreshed every few seconds)."""
        if job_id not in self._jobs:
            return None
        if time.monotonic() - self._queried >= SQUEUE_EVERY_S:
            jobs = ",".join(sorted(self._jobs))
            try:
                out = subprocess.run(
                    ["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", jobs], capture_output=True, text=True, timeout=60
                )
            except (OSError, subprocess.SubprocessError):
                return "UNREACHABLE"
            if out.returncode != 0 and "Invalid job id" not in out.stderr:
                return "UNREACHABLE"  # the controller is busy or restarting: ask again later
            self._states = dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)
            self._queried = time.monotonic()
        return self._states.get(job_id)

    def poll(self, handle: SlurmHandle) -> int | None:
        state = self._state(handle.job_id)
        if state == "UNREACHABLE" or (state is not None and state.rstrip("+") in QUEUED):
            return None
        try:
            code: int | None = int(handle.code_file.read_text().strip())
        except (OSError, ValueError):
            code = None  # it never ran to the end: cancelled while queued, node lost, killed
        self._jobs.discard(handle.job_id)
        if state == "COMPLETED":
            return 1 if code is None else code
        self._say_why(handle, state)
        return code if code else 1  # FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ..., or gone from squeue

    @staticmethod
    def _say_why(handle: SlurmHandle, state: str | None) -> None:
        """One line in the cell's log on how its job ended, which the study reports as the cell's failure."""
        state = (state or "").rstrip("+")
        why = f"{ENDED.get(state, 'ended')} (state {state})" if state else "is no longer in the queue"
        if handle.log is not None:
            try:
                with open(handle.log, "a") as log:
                    log.write(
                        f"tscnet study: error: slurm job {handle.job_id} {why}; the next tscnet study resumes its run\n"
                    )
            except OSError:
                pass

    def stop(self, handle: SlurmHandle, signum: int) -> None:
        """Send ``signum`` to the job's processes (``scancel --signal``), marking the stop as the study's."""
        try:  # before the signal: the job must not take it for its time-limit warning and requeue itself
            (handle.folder / f"{handle.job_id}.stop").write_text(f"{signal.Signals(signum).name}\n")
        except OSError:
            pass
        state = self._state(handle.job_id) or ""
        if state.startswith("PENDING"):
            subprocess.run(["scancel", handle.job_id], capture_output=True, timeout=60)
        else:  # to every process of the job's steps: the trainer checkpoints and exits
            name = signal.Signals(signum).name.removeprefix("SIG")
            subprocess.run(["scancel", f"--signal={name}", handle.job_id], capture_output=True, timeout=60)
