"""The run folder's lock: one process trains in a run folder at a time; a lock whose process is
gone (kill -9, a dead node, a requeued Slurm job) is taken over with a message."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tscnet.cli import main
from tscnet.jobs import run_folder
from tscnet.jobs.run_folder import RunFolder, RunLocked

TINY = ["train", "--data", "fashion-mnist", "--model", "cifar_resnet8", "--steps", "tsc", "--no-progress",
        "--train-subset", "256", "--test-subset", "64", "--epochs", "1", "--batch-size", "64"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: RunFolder, **record) -> None:
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.lock_file.write_text(json.dumps({"host": socket.gethostname(), "since": "then", **record}))


def test_a_held_lock_refuses_another_process_naming_the_holder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert folder.lock_file.is_file() and not folder.locked  # held by us: not "another process"
        other = subprocess.run([sys.executable, "-c", "from tscnet.jobs.run_folder import RunFolder; import sys; "
                                f"RunFolder(sys.argv[1]).lock().acquire()", str(folder.path)],
                               capture_output=True, text=True)
        assert other.returncode != 0
        assert f"is being trained by PID {os.getpid()} on {socket.gethostname()}" in other.stderr
    assert not folder.lock_file.exists()  # released


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    folder = RunFolder(tmp_path / "run")
    pid = _dead_pid()
    _write_lock(folder, pid=pid)
    assert not folder.locked
    said = []
    with folder.lock(say=said.append):
        assert json.loads(folder.lock_file.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"its process {pid} on {socket.gethostname()} is gone" in said[0]


def test_another_hosts_lock_is_stale_only_when_no_longer_refreshed(tmp_path):
    folder = RunFolder(tmp_path / "run")
    _write_lock(folder, host="node-that-died", pid=1)
    assert folder.locked
    with pytest.raises(RunLocked, match="PID 1 on node-that-died"):
        folder.lock().acquire()
    old = time.time() - run_folder.STALE_S - 5
    os.utime(folder.lock_file, (old, old))
    said = []
    with folder.lock(say=said.append):
        pass
    assert "last refreshed" in said[0] and "node-that-died" in said[0]


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    _write_lock(folder, host="other-node", pid=1, slurm_job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    said = []
    with folder.lock(say=said.append):
        pass
    assert "this Slurm job (4242)" in said[0]


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "HEARTBEAT_S", 0.05)
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        old = time.time() - 1000
        os.utime(folder.lock_file, (old, old))
        time.sleep(0.3)
        assert time.time() - folder.lock_file.stat().st_mtime < 5


def test_resume_of_a_run_another_process_trains_is_one_line(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    assert not RunFolder(out).lock_file.exists()  # a finished run leaves no lock
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(RunFolder(out), pid=holder.pid)
        capsys.readouterr()
        assert main(TINY + ["--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is being trained by PID {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_after_taking_over_its_lock(tmp_path):
    """kill -9 leaves the lock behind; --resume takes it over (a warning) and finishes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tscnet.cli", *TINY, "--out", str(out), "--set", "train.checkpoint_every=1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not RunFolder(out).checkpoint_file.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunFolder(out).lock_file.exists() and not RunFolder(out).finished
    resumed = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: taking over the lock" in resumed.stderr and f"its process {proc.pid}" in resumed.stderr
    assert RunFolder(out).finished and not RunFolder(out).lock_file.exists()
