"""A study under the faults of a real cluster: two launches of one study, kill -9 of its cells and
of the study process itself, a damaged results folder. Each ends with a clear message, the earlier
results intact, and the next invocation finishing the study."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tscnet.jobs.run_folder import RunFolder
from tscnet.study.report import load_results

from run_utils import tmpfs

pytestmark = pytest.mark.slow  # real studies of tiny trainings: a minute or two each

TINY = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=32", "train.epochs=2"]


def _spec(folder: Path, seeds=(0, 1), epochs: int = 2) -> Path:
    spec = {"name": "faults", "recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "seeds": list(seeds),
            "policies": ["none", "tsc"], "set": [*TINY[:-1], f"train.epochs={epochs}"]}
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _study(spec: Path, results: Path, *extra: str, runs: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--results", str(results), "--workers", "1",
            "--runs", str(runs or results.parent / "runs"), *extra]


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
    # Both picked the same cells: one trained each, the other waited for it or (when it was done
    # first) collected it; which happens depends on timing, so only the outcome is checked.
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


# -- kill -9 of a cell, of the study while it copies a result, a full disk: from one earlier state --------------


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A study of two cells, cifar_resnet8 none and tsc, seed 0, with the first one's results (and its
    report); the tests copy it. Beside it, ``reference``: the same study finished uninterrupted."""
    folder = tmp_path_factory.mktemp("earlier")
    spec = _spec(folder, seeds=(0,))
    done = subprocess.run(_study(spec, folder / "results", "--policies", "none"), env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = _copy_study(folder, folder.parent / f"{folder.name}-reference")
    done = subprocess.run(_study(reference / "faults.yaml", reference / "results"), env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def _copy_study(folder: Path, to: Path, results: Path | None = None) -> Path:
    """A copy of the study in ``folder`` (spec, results, scratch runs) in ``to``, its results in ``results``."""
    results = results or to / "results"
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "faults.yaml", to / "faults.yaml")
    shutil.copytree(folder / "results", results, dirs_exist_ok=True)
    shutil.copytree(folder / "runs", to / "runs")
    (to / "runs" / ".results").write_text(f"{results}\n")  # the copied scratch runs belong to the copied results
    return to


def _cells(results: Path) -> dict[str, bytes]:
    """Every collected cell's files, by path: what must stay as it was."""
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.glob("*/*/seed*/*"))}


def _same_result(folder: Path, reference: Path) -> None:
    """A collected cell with the results of the uninterrupted reference (timings aside)."""
    assert (folder / "cell.json").is_file()
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "images_per_s")}
                          for line in path.read_text().splitlines()]
    assert strip(folder / "metrics.jsonl") == strip(reference / "metrics.jsonl")
    assert (folder / "steps.json").read_bytes() == (reference / "steps.json").read_bytes()


TSC = Path("cifar_resnet8") / "tsc" / "seed0"  # the cell the faults hit


@pytest.mark.parametrize("point", ["step@12", "eval@1"])  # training in epoch 2; epoch 1's evaluation (no checkpoint yet)
def test_kill_9_of_a_cell_fails_it_and_the_next_call_resumes_it(point, earlier, tmp_path):
    """~1 min each. The trainer is killed outright (no checkpoint, its lock left behind): the study reports
    the cell failed in one line, exits 1, the earlier results stay as they were; the next call resumes the
    cell (taking over its lock) and ends with the uninterrupted run's results."""
    folder = _copy_study(earlier, tmp_path)
    results = folder / "results"
    kept = _cells(results)
    killed = subprocess.run(_study(folder / "faults.yaml", results), env={**_env(), "TSCNET_TEST_KILL": point},
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == 1, killed.stdout + killed.stderr
    failed = [line for line in killed.stdout.splitlines() if line.startswith("FAILED")]
    assert failed == [f"FAILED: cifar_resnet8 tsc seed0: killed by SIGKILL (kill -9, or out of memory); see "
                      f"{folder / 'runs' / TSC.parent / 'seed0.log'}"], killed.stdout
    assert _cells(results) == kept and not (results / TSC).exists()
    again = subprocess.run(_study(folder / "faults.yaml", results), env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: cifar_resnet8 tsc seed0" in again.stdout
    log = (folder / "runs" / TSC.parent / "seed0.log").read_text()
    assert "taking over the lock" in log  # the killed trainer's
    assert all(_cells(results)[name] == data for name, data in kept.items())
    _same_result(results / TSC, earlier.parent / f"{earlier.name}-reference" / "results" / TSC)


def test_kill_9_of_the_study_while_it_copies_a_result_then_the_next_call_collects_it(earlier, tmp_path):
    """~1 min. The study process is killed as the last file of a finished cell's results is written, before
    its folder is renamed into place: no results folder of that cell exists (a hidden temporary folder is
    left beside it, which the report ignores), the earlier results stay; the next call collects the cell
    without training it again, replacing a partial folder without cell.json that lies in its place."""
    folder = _copy_study(earlier, tmp_path)
    results = folder / "results"
    kept = _cells(results)
    killed = subprocess.run(_study(folder / "faults.yaml", results),
                            env={**_env(), "TSCNET_TEST_KILL": "collect@cell.json"}, capture_output=True, text=True,
                            timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _cells(results) == kept and not (results / TSC).exists()
    left = list((results / TSC.parent).glob(".seed0.*"))
    assert len(left) == 1 and (left[0] / "cell.json").is_file()  # complete, yet not a result
    # A partial results folder without cell.json (as an older tscnet's copy, or one removed by hand
    # halfway, leaves it) is not a result either: the next call replaces it.
    (results / TSC).mkdir()
    (results / TSC / "metrics.jsonl").write_text('{"epoch": 1')
    again = subprocess.run(_study(folder / "faults.yaml", results), env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting:" not in again.stdout and "resuming:" not in again.stdout  # collected, not trained again
    assert "1 collected, 1 of them trained before this call" in again.stdout
    assert all(_cells(results)[name] == data for name, data in kept.items())
    _same_result(results / TSC, earlier.parent / f"{earlier.name}-reference" / "results" / TSC)
    assert len(load_results(results)) == 2  # what the report reads: the two cells, not the temporary copy


def test_a_full_disk_while_a_result_is_collected_fails_the_cell_and_the_next_call_collects_it(earlier, tmp_path):
    """~1 min. The results folder on a real, small file system (a tmpfs), filled up after the earlier
    results: the finished cell cannot be collected — one line saying so, exit 1, nothing of it written,
    the earlier results as they were; with space again, the next call collects it without training it."""
    with tmpfs(tmp_path / "disk", 1 << 20) as disk:
        folder = _copy_study(earlier, tmp_path / "study", results=disk / "results")
        results = disk / "results"
        kept = _cells(results)
        with open(disk / "filler", "wb", buffering=0) as filler:  # fill the disk to its last block
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC
        runs = folder / "runs"  # on the machine's disk
        full = subprocess.run(_study(folder / "faults.yaml", results, runs=runs), env=_env(), capture_output=True,
                              text=True, timeout=900)
        assert full.returncode == 1, full.stdout + full.stderr
        failed = [line for line in full.stdout.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1 and failed[0].startswith("FAILED: cifar_resnet8 tsc seed0: its results cannot be "
                                                         f"collected: cannot copy {runs / TSC} to "
                                                         f"{results / TSC}: No space left on device"), full.stdout
        assert "the next tscnet study collects it" in failed[0] and "Traceback" not in full.stderr, full.stderr
        assert _cells(results) == kept  # nothing of the cell, no temporary folder left:
        assert not (results / TSC.parent).exists() or not list((results / TSC.parent).iterdir())
        (disk / "filler").unlink()
        again = subprocess.run(_study(folder / "faults.yaml", results, runs=runs), env=_env(), capture_output=True,
                               text=True, timeout=900)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 collected, 1 of them trained before this call" in again.stdout and "starting:" not in again.stdout
        assert all(_cells(results)[name] == data for name, data in kept.items())
        _same_result(results / TSC, earlier.parent / f"{earlier.name}-reference" / "results" / TSC)
