"""The run folder: the files one training run writes, what state they say it is in, and its lock.

::

    RUN/config.yaml        the resolved recipe (written first: the run has started)
    RUN/metrics.jsonl      one JSON line per finished epoch
    RUN/checkpoint.pt      the last state (atomic; loaded with ``torch.load(weights_only=True)``)
    RUN/model.safetensors  the folded, vanilla-architecture weights (at the end)
    RUN/steps.json         the final Δt of every block and channel (at the end)
    RUN/platform.json      where it ran
    RUN/diverged.json      only if the loss became NaN/inf
    RUN/model_card.json    model, policy, data, final metrics (at the end, written last: finished)
    RUN/run.lock           while a process trains in it: host, PID, Slurm job, since when

Every other module names these files through :class:`RunFolder`, never by literal.

**The lock.** A process that trains in a folder holds ``run.lock`` (created with ``O_EXCL``, so
two processes cannot both create it) and refreshes its modification time every
:data:`HEARTBEAT_S` seconds from a background thread. Another process that finds the lock is
refused with the holder's host and PID, unless the lock is stale:

* its process is gone — same host and no such PID (kill -9, a crash);
* it belongs to the same Slurm job (a requeued job restarting its own run);
* it was not refreshed for :data:`STALE_S` seconds (a node that died: its PID cannot be checked
  from here).

A stale lock is taken over with a message (renamed away atomically, so of two processes taking
it over only one wins). **On NFS**: ``O_EXCL`` creation and ``rename`` are atomic on NFSv3 and
later; liveness by PID works only for locks of the same host, and the staleness of another
host's lock is read from the file's modification time, which the NFS client may cache for up to
``actimeo`` (60 s by default) — :data:`STALE_S` (180 s) is well above it, and the clocks of the
nodes must agree to within a minute.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

#: Seconds between two refreshes of a held lock's modification time.
HEARTBEAT_S = 30.0
#: A lock not refreshed for this long is stale (its holder is gone).
STALE_S = 180.0


#: The words of a :class:`RunLocked` refusal, which a study reads in a trainer's log.
LOCKED_BY = "is being trained by"
#: The words of a refusal to start a fresh run in a folder that holds one (a study reads them too).
HOLDS_A_RUN = "already holds a run"


class RunLocked(UserError):
    """The run folder is being trained in by another live process."""


class RunFolder:
    """One training run's folder: its files by name and the state they say it is in."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    FOLDED = "model.safetensors"
    STEPS = "steps.json"  # also tscnet.stepping.profile.PROFILE_FILE, read by profile:RUN (a lower layer)
    PLATFORM = "platform.json"
    DIVERGED = "diverged.json"
    CARD = "model_card.json"
    LOCK = "run.lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint_file(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def folded_file(self) -> Path:
        return self.path / self.FOLDED

    @property
    def steps_file(self) -> Path:
        return self.path / self.STEPS

    @property
    def platform_file(self) -> Path:
        return self.path / self.PLATFORM

    @property
    def diverged_file(self) -> Path:
        return self.path / self.DIVERGED

    @property
    def card_file(self) -> Path:
        return self.path / self.CARD

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def started(self) -> bool:
        """A run was started here (its config is written before anything else)."""
        return self.config_file.is_file()

    @property
    def finished(self) -> bool:
        """The run ended and wrote its model card (the last file it writes)."""
        return self.card_file.is_file()

    @property
    def diverged(self) -> bool:
        """The run's loss became non-finite (it recorded where)."""
        return self.diverged_file.is_file()

    def lock_holder(self) -> dict | None:
        """The live holder of this folder's lock (host, pid, slurm_job, since), or ``None`` if it is free or stale."""
        record = _read_lock(self.lock_file)
        if record is None:
            return None
        return None if _stale_reason(record, self.lock_file) else record

    @property
    def locked(self) -> bool:
        """Another live process holds the lock (a stale lock does not count)."""
        holder = self.lock_holder()
        return holder is not None and not _is_us(holder)

    def lock(self, say: Callable[[str], None] = lambda s: None) -> RunLock:
        """Take the folder's lock (a context manager); raises :class:`RunLocked` naming a live holder."""
        return RunLock(self, say)


def _me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _is_us(record: dict) -> bool:
    return record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()


def _read_lock(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = {}  # half-written or damaged: judged by its age alone
    return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _stale_reason(record: dict, path: Path) -> str | None:
    """Why the lock ``record`` (read from ``path``) no longer protects anything, or ``None`` if it does."""
    mine = _me()
    if record.get("host") == mine["host"] and isinstance(record.get("pid"), int):
        if not _pid_alive(record["pid"]):
            return f"its process {record['pid']} on {record['host']} is gone"
        return None
    if record.get("slurm_job") and record.get("slurm_job") == mine["slurm_job"]:
        return f"it belongs to this Slurm job ({record['slurm_job']}), requeued"
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "it was just released"
    if age > STALE_S:
        return f"it was last refreshed {age:.0f} s ago (its holder on {record.get('host', 'an unknown host')} is gone)"
    return None


def describe_holder(record: dict) -> str:
    """Who holds a lock, from its run.lock record: PID, host, Slurm job (if any) and since when."""
    job = f", Slurm job {record['slurm_job']}" if record.get("slurm_job") else ""
    return f"PID {record.get('pid', '?')} on {record.get('host', '?')}{job}, since {record.get('since', '?')}"


class RunLock:
    """Holds a run folder's ``run.lock`` while a process trains in it (see the module docstring)."""

    def __init__(self, folder: RunFolder, say: Callable[[str], None]) -> None:
        self.folder = folder
        self.say = say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_folder = False  # the lock created the run folder: removed again if it stays empty

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        path = self.folder.lock_file
        self._made_folder = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lost race for a stale lock: look again
            if self._create(path):
                self._thread = threading.Thread(target=self._heartbeat, name="tscnet-run-lock", daemon=True)
                self._thread.start()
                return
            record = _read_lock(path)
            if record is None:
                continue  # released in between
            if _is_us(record):
                raise RunLocked(f"{self.folder.path} is already locked by this process")
            why = _stale_reason(record, path)
            if why is None:
                raise RunLocked(
                    f"{self.folder.path} {LOCKED_BY} {describe_holder(record)} (lock {path}); "
                    "wait for it to finish, or remove the lock if that process is gone"
                )
            aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
            try:
                os.rename(path, aside)  # atomic: of two processes taking it over, one wins
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            self.say(f"taking over the lock of {self.folder.path} from {describe_holder(record)}: {why}")
        raise RunLocked(f"could not lock {self.folder.path}: other processes keep taking its lock {path}")

    @staticmethod
    def _create(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.folder.lock_file)
            except OSError:
                return

    def release(self) -> None:
        """Stop refreshing and remove the lock, if it is still ours."""
        self._stop.set()
        record = _read_lock(self.folder.lock_file)
        if record is not None and _is_us(record):
            self.folder.lock_file.unlink(missing_ok=True)
        if self._made_folder:  # a run refused before writing anything leaves no folder behind
            try:
                self.folder.path.rmdir()
            except OSError:  # not empty: the run wrote its files
                pass
