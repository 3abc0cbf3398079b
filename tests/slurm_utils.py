"""Helpers for the tests that drive the single-node Slurm of scripts/start_slurm.sh."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

CONTROLLER_LOG = Path("/var/log/slurm-tscnet/slurmctld.log")


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _nodes_settled() -> bool:
    """No node still completing a job: the previous instance of a requeued job is gone from its node."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    states = out.stdout.split()
    return out.returncode == 0 and bool(states) and not any("comp" in state for state in states)


def release_requeued(job: str, timeout: float = 120) -> None:
    """Start a requeued (pending) job now instead of after Slurm's two-minute hold on requeued jobs.

    The hold is what keeps a requeued job off its node until the node has cleaned up after the job's
    previous instance; releasing the job at once races that clean-up (a batch launch on a node still
    completing the same job id can fail), so wait for the nodes to settle first, as the hold would."""
    deadline = time.time() + timeout
    while not _nodes_settled():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for the nodes to finish job {job}'s previous instance")
        time.sleep(0.5)
    time.sleep(2.0)  # slurmd's own bookkeeping after the node reads idle
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)


def job_report(folder: Path, job: str) -> str:
    """What to read when a job ended wrong: the tails of submitit's logs in ``folder`` and the
    controller's lines on the job."""
    parts = []
    for path in sorted(folder.glob(f"{job}_*log.*")):
        parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-1500:])
    if CONTROLLER_LOG.exists():
        lines = [line for line in CONTROLLER_LOG.read_text(errors="replace").splitlines()
                 if f"JobId={job} " in line or line.endswith(f"JobId={job}") or f"job {job} " in line]
        parts.append("--- slurmctld.log\n" + "\n".join(lines[-40:]))
    return "\n".join(parts)
