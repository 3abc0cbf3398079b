"""A study under the faults of a real cluster: two launches of one study, kill -9 of its cells and
of the study process itself, a damaged results folder. Each ends with a clear message, the earlier
results intact, and the next invocation finishing the study."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tscnet.jobs.run_folder import RunFolder

pytestmark = pytest.mark.slow  # real studies of tiny trainings: a minute or two each

TINY = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=32", "train.epochs=2"]


def _spec(folder: Path, seeds=(0, 1), epochs: int = 2) -> Path:
    spec = {"name": "faults", "recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "seeds": list(seeds),
            "policies": ["none", "tsc"], "set": [*TINY[:-1], f"train.epochs={epochs}"]}
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _study(spec: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--results", str(results), "--workers", "1",
            "--runs", str(results.parent / "runs"), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _collected(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("cell.json"))


def test_two_launches_of_one_study_share_the_cells_and_both_end_right(tmp_path):
    """Both processes start on the same spec and results folder: no cell is trained twice, a cell
    the other process runs is waited for and collected, and both exit 0 with all 4 cells collected."""
    spec, results = _spec(tmp_path), tmp_path / "results"
    procs = [subprocess.Popen(_study(spec, results), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(outs)
    assert len(_collected(results)) == 4
    # Both picked the first cell at once: one trained it, the other waited for it (or lost the race
    # for its lock) and collected nothing twice.
    assert sum(out.count("running elsewhere:") for out in outs) >= 1, "\n=====\n".join(outs)
    for folder in _collected(results):  # every cell trained once: each epoch recorded once
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], folder
    assert not list((tmp_path / "runs").rglob(RunFolder.LOCK))  # no lock left behind


def test_kill_9_of_the_study_process_then_the_next_call_finishes(tmp_path):
    """The study process is killed outright while a cell trains; its trainer may live on (an orphan
    holding the run's lock) or die with it. The next call waits for or takes over that run and
    finishes the study; earlier results stay as they were."""
    spec, results = _spec(tmp_path, seeds=(0,), epochs=3), tmp_path / "results"
    runner = subprocess.Popen(_study(spec, results), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    deadline = time.time() + 300
    while not _collected(results):  # the first cell lands, the second starts
        assert runner.poll() is None and time.time() < deadline
        time.sleep(0.2)
    before = {p: (p / "cell.json").read_bytes() for p in _collected(results)}
    time.sleep(1.0)
    runner.kill()  # SIGKILL to the study process only: its trainer is orphaned
    runner.wait()
    again = subprocess.run(_study(spec, results), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_collected(results)) == 2
    assert all((p / "cell.json").read_bytes() == data for p, data in before.items())
    # the orphan's run: waited for, resumed, or (it finished first) collected as trained before this call
    assert any(w in again.stdout for w in ("running elsewhere:", "resuming:", "1 of them trained before this call"))
    if _alive_group(runner.pid):
        os.killpg(runner.pid, signal.SIGKILL)


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_cell_deleted_or_truncated_by_hand_is_redone_and_the_rest_kept(tmp_path):
    spec, results = _spec(tmp_path, seeds=(0,)), tmp_path / "results"
    assert subprocess.run(_study(spec, results), env=_env(), capture_output=True, text=True, timeout=900).returncode == 0
    cells = _collected(results)
    assert len(cells) == 2
    kept = (cells[1] / "cell.json").read_bytes()
    (cells[0] / "cell.json").unlink()  # a cell deleted by hand (its other files left)
    again = subprocess.run(_study(spec, results), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (cells[0] / "cell.json").exists() and (cells[1] / "cell.json").read_bytes() == kept
    metrics = cells[1] / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:10])  # truncated by hand: no longer a complete result
    third = subprocess.run(_study(spec, results, "--report-only"), env=_env(), capture_output=True, text=True)
    assert third.returncode == 2 and len(third.stderr.strip().splitlines()) == 1, third.stderr
    assert "metrics.jsonl" in third.stderr


def test_two_results_folders_never_share_scratch_runs(tmp_path):
    """Two studies whose results folders have the same name (x/out, y/out), started from one folder:
    the second gets its own scratch runs, trains its own cells, and each results folder records where
    its scratch runs are; naming the other's scratch folder with --runs is refused in one line."""
    spec = _spec(tmp_path, seeds=(0,), epochs=1)
    first, second = tmp_path / "x" / "out", tmp_path / "y" / "out"
    argv = [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--workers", "1", "--policies", "none"]
    for results in (first, second):
        done = subprocess.run(argv + ["--results", str(results)], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "starting: cifar_resnet8 none seed0" in done.stdout  # trained here, not collected from the other
    scratch = [(results / "scratch.txt").read_text().strip() for results in (first, second)]
    assert scratch[0] == "runs/out" and scratch[1].startswith("runs/out-") and scratch[0] != scratch[1]
    refused = subprocess.run(argv + ["--results", str(second), "--runs", str(tmp_path / "runs" / "out")],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert f"belong to the results {first}" in refused.stderr
