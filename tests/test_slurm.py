"""The Slurm executor on a real (single-node) Slurm: a tiny study through sbatch, and a job requeued
mid-epoch (``scontrol requeue``: SIGTERM, then the job starts again) that ends exactly where an
uninterrupted run ends. Skipped where no Slurm controller answers: scripts/start_slurm.sh starts one
(.ci/run does)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tscnet.cli import main as cli
from tscnet.jobs.run_folder import RunFolder
from tscnet.train import read_metrics

from run_utils import assert_same_run
from slurm_utils import job_report, release_requeued, squeue_state

submitit = pytest.importorskip("submitit", reason="the Slurm executor needs submitit: pip install 'tscnet[slurm]'")
from tscnet.jobs.executors import Task, create_executor  # noqa: E402
from tscnet.jobs.executors import slurm  # noqa: E402
from tscnet.jobs.executors.slurm import CellJob, parse_time, slurm_running, warning_s  # noqa: E402

NO_SLURM = slurm_running()
needs_slurm = pytest.mark.skipif(NO_SLURM is not None, reason=f"{NO_SLURM}")

TINY = ["data.train_subset=512", "data.test_subset=256", "data.batch_size=32", "train.epochs=2"]


@pytest.mark.parametrize("value, minutes", [(90, 90), ("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("30:00", 30),
                                            ("0:10", 1)])
def test_time_limits_parse_like_slurm(value, minutes):
    assert parse_time(value) == minutes


def test_a_job_over_several_nodes_runs_torchrun_on_each_meeting_at_the_first(tmp_path):
    run = tmp_path / "cell"
    task = Task(name="c", config={}, command=[sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out",
                                              str(run), "--config", "r.yaml"],
                recipe=tmp_path / "r.yaml", run_dir=run, log=tmp_path / "cell.log", cwd=tmp_path)
    job = CellJob(task, procs_per_node=4, nodes=2, time_limit_s=3600, folder=tmp_path)
    argv = job.argv(node=1, master="gpu-a01", job_id="4242")
    assert argv[:2] == [sys.executable, "-m"] and argv[2:9] == [
        "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--nproc-per-node=4", "--master-addr=gpu-a01",
        f"--master-port={29500 + 4242 % 2000}", "-m"]
    assert argv[9:] == ["tscnet.cli", *task.command[3:]]
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")  # a requeued job: the run exists, so it resumes
    single = CellJob(task, procs_per_node=1, nodes=1, time_limit_s=3600, folder=tmp_path).argv(0, "x", "1")
    assert single == [*task.command, "--resume"]


def test_the_time_limit_warning_leaves_short_jobs_time_to_start():
    """SIGTERM 2 minutes before the limit, less for short limits: Slurm may send it a minute early."""
    assert [warning_s(60 * m) for m in (1, 2, 3, 4, 5, 120)] == [10, 30, 60, 90, 120, 120]
    for minutes in (2, 3, 4, 5, 60):  # the earliest signal comes no sooner than the warning before the end
        limit = 60 * minutes
        assert limit - warning_s(limit) - slurm.EARLY_S >= warning_s(limit)


def test_a_job_requeues_itself_only_for_its_time_limit_warning(tmp_path, monkeypatch):
    """The trainer stopped for a SIGTERM: the job requeues itself when Slurm says it is running within
    the warning's window of its end, not when it is being cancelled or requeued (COMPLETING), not
    when the study stopped it, and not when the trainer stopped for another reason."""
    log = tmp_path / "cell.log"
    task = Task(name="c", config={}, command=["true"], recipe=tmp_path / "r.yaml", run_dir=tmp_path / "run", log=log,
                cwd=tmp_path)
    job = CellJob(task, procs_per_node=1, nodes=1, time_limit_s=600, folder=tmp_path)
    state: list = ["RUNNING", 70]
    monkeypatch.setattr(slurm, "_job_state", lambda job_id: tuple(state))
    now = slurm.time.monotonic()
    log.write_text("tscnet train: error: stopped by SIGTERM during epoch 1; ...\n")
    assert job.time_limit_stop("7", 2, now)
    state[:] = ["RUNNING", 2 * 3600]  # far from the limit: someone's scancel --signal TERM
    assert not job.time_limit_stop("7", 2, now)
    state[:] = ["COMPLETING", 70]  # scancel, or a requeue by Slurm
    assert not job.time_limit_stop("7", 2, now)
    state[:] = [None, None]  # squeue does not answer: by this job's clock
    assert not job.time_limit_stop("7", 2, now) and job.time_limit_stop("7", 2, now - 400)
    state[:] = ["RUNNING", 70]
    assert job.time_limit_stop("7", -15, now)  # SIGTERM came before the trainer could catch it
    (tmp_path / "7.stop").write_text("SIGTERM\n")  # the study stopped it
    assert not job.time_limit_stop("7", 2, now)
    (tmp_path / "7.stop").unlink()
    log.write_text("tscnet train: error: cifar10 data directory /data does not exist\n")
    assert not job.time_limit_stop("7", 2, now)


@pytest.mark.parametrize("argv, message", [
    (["--partition", "gpu"], "--partition is a Slurm option: add --executor slurm"),
    (["--executor", "slurm", "--time", "soon"], "time must be minutes or HH:MM:SS"),
    (["--executor", "slurm", "--gpus-per-node", "-1"], "gpus_per_node must be an integer >= 0"),
    (["--nodes", "2"], "--nodes is a Slurm option: add --executor slurm"),
    (["--executor", "slurm", "--nodes", "0"], "nodes must be an integer >= 1"),
])
def test_bad_slurm_options_are_one_line(argv, message, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "recipe": "fashion_mnist_grid", "set": TINY,
                                    "models": ["cifar_resnet8"], "policies": ["none"], "seeds": [0]}))
    assert cli(["study", str(spec), "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a subprocess (imports torch)
def test_without_slurm_the_error_names_the_start_script(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "recipe": "fashion_mnist_grid", "set": TINY,
                                    "models": ["cifar_resnet8"], "policies": ["none"], "seeds": [0]}))
    done = subprocess.run([sys.executable, "-m", "tscnet.cli", "study", str(spec), "--executor", "slurm",
                           "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")],
                          env={**os.environ, "PATH": str(tmp_path / "empty")}, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no Slurm here (no sbatch/squeue on PATH)" in done.stderr and "scripts/start_slurm.sh" in done.stderr
    assert not (tmp_path / "runs").exists()


def _local_run(recipe: Path, out: Path, procs: int = 1) -> None:
    """The uninterrupted reference: the same recipe, one thread (per process), on this machine."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else []
    done = subprocess.run([sys.executable, *launch, "-m", "tscnet.cli", "train", "--no-progress", "--config", str(recipe),
                           "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@needs_slurm
def test_a_tiny_study_runs_through_sbatch(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "recipe": "fashion_mnist_grid", "set": TINY,
                                    "models": ["cifar_resnet8"], "policies": ["none", "fixed:0.5"], "seeds": [0]}))
    results, runs = tmp_path / "results", tmp_path / "runs"
    study = subprocess.run([sys.executable, "-m", "tscnet.cli", "study", str(spec), "--executor", "slurm",
                            "--time", "00:20:00", "--cpus-per-task", "1", "--results", str(results), "--runs", str(runs)],
                           capture_output=True, text=True, timeout=900)
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    assert "slurm: partition (default), 20 min" in study.stdout
    for policy in ("none", "fixed0.5"):
        run = runs / "cifar_resnet8" / policy / "seed0"
        log = (run.parent / "seed0.log").read_text()
        assert "submitted as slurm job" in log and "slurm job" in log and "restart 0" in log, log
        job = log.split("submitted as slurm job ")[1].split()[0]
        assert (run.parent / "seed0.slurm" / f"{job}.exitcode").read_text().strip() == "0"
        assert (results / "cifar_resnet8" / policy / "seed0" / "cell.json").is_file()
        # A job computes what a local run computes.
        reference = tmp_path / f"local-{policy}"
        _local_run(run.parent / "seed0.recipe.yaml", reference)
        assert_same_run(reference, run)
    assert (results / "report.md").is_file()


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _progress(run: Path):
    try:
        saved = torch.load(run / "checkpoint.pt", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, OSError):
        return None
    return saved["progress"]["batch"] if saved.get("progress") else None


@pytest.mark.slow
@needs_slurm
@pytest.mark.parametrize("procs", [1, 2])
def test_a_job_requeued_mid_epoch_resumes_exactly(procs, tmp_path):
    """procs 2: torchrun under srun (CPU processes over gloo); Slurm's SIGTERM reaches torchrun and
    both trainers, and torchrun forwards its own to them: the trainers take it as one request."""
    # 1024 images at batch 32: 32 steps an epoch, 2 epochs. A checkpoint after every step shows
    # how far the job got (periodic checkpoints leave the run unchanged: test_preemption).
    recipe = tmp_path / "cell.yaml"
    # Keys left to the data, as in the recipe a study writes for each cell: the restart's
    # `--config RECIPE --resume` must take them as the resolved values of the saved config.
    config = {"model": {"name": "cifar_resnet8", "steps": "tsc", "num_classes": None, "in_chans": None},
              "data": {"name": "fashion-mnist", "train_subset": 1024, "test_subset": 256, "batch_size": 32},
              "train": {"epochs": 2, "checkpoint_every": 1, "loss_steps": [10, 40], "device": "cpu"}}
    recipe.write_text(yaml.safe_dump(config))
    run = tmp_path / "runs" / "cell"
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(run), "--config", str(recipe)]
    task = Task(name="requeue test", config=config, command=command, recipe=recipe, run_dir=run,
                log=tmp_path / "runs" / "cell.log", cwd=tmp_path, threads=1)
    executor = create_executor("slurm", time="00:20:00", workers=1, threads=1, procs_per_node=procs)
    handle = executor.start(task)
    try:
        _wait(lambda: (_progress(run) or 0) >= 3, 600, "the job's first steps")
        subprocess.run(["scontrol", "requeue", handle.job_id], check=True, capture_output=True)
        log = task.log
        _wait(lambda: "stopped by SIGTERM during epoch" in log.read_text(), 120, "the trainer's checkpoint")
        # Slurm holds a requeued job back two minutes; release it now.
        _wait(lambda: squeue_state(handle.job_id) == "PENDING", 120, "the requeued job to be pending")
        release_requeued(handle.job_id)
        code = _wait(lambda: (lambda c: None if c is None else [c])(executor.poll(handle)), 900, "the job")[0]
    finally:
        subprocess.run(["scancel", handle.job_id], capture_output=True)
    text = log.read_text()
    assert code == 0, text[-2000:] + "\n" + job_report(handle.folder, handle.job_id)
    assert "restart 0" in text and "restart 1" in text and "--resume" in text.split("restart 1")[1].splitlines()[0]
    stopped_at = int(text.split("stopped by SIGTERM during epoch ")[1].split(";")[0])
    assert stopped_at in (1, 2) and text.count("stopped by SIGTERM") == procs  # every trainer, once
    if procs > 1:
        assert "torch.distributed.run" in text and "--nproc-per-node=2" in text
    reference = tmp_path / "reference"
    _local_run(recipe, reference, procs)
    assert_same_run(reference, run)
    assert [r["loss_at_step"] for r in read_metrics(run)] == [r["loss_at_step"] for r in read_metrics(reference)]
    assert json.loads((run / "model_card.json").read_text())["platform"][0]["hostname"]


@pytest.mark.slow  # ~4.5 min here (267 s): a 2-minute allotment, then the rest of the run in the requeued job
@needs_slurm
def test_a_job_at_its_time_limit_checkpoints_requeues_itself_and_ends_as_an_uninterrupted_run(tmp_path):
    """A 2-minute job whose run cannot finish in it: Slurm's warning SIGTERM (30 s before the limit,
    maybe a minute earlier) stops the trainer with a checkpoint, the job requeues itself, and the
    requeued job resumes the run to its end: the weights and metrics of an uninterrupted local run.
    The requeued job is given a longer limit (and released from Slurm's hold on requeued jobs), so
    that one more allotment finishes the run."""
    # 48,000 images (1,500 steps, a checkpoint after each): minutes at the 200-500 img/s of one thread
    # here, more than the 1-1.5 minutes of training a 2-minute job gets.
    recipe = tmp_path / "cell.yaml"
    config = {"model": {"name": "cifar_resnet8", "steps": "tsc", "num_classes": None, "in_chans": None},
              "data": {"name": "fashion-mnist", "train_subset": 12000, "test_subset": 256, "batch_size": 32},
              "train": {"epochs": 4, "checkpoint_every": 1, "device": "cpu"}}
    recipe.write_text(yaml.safe_dump(config))
    run = tmp_path / "runs" / "cell"
    command = [sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--out", str(run), "--config", str(recipe)]
    task = Task(name="time limit test", config=config, command=command, recipe=recipe, run_dir=run,
                log=tmp_path / "runs" / "cell.log", cwd=tmp_path, threads=1)
    executor = create_executor("slurm", time=2, workers=1, threads=1)
    handle = executor.start(task)
    reference = tmp_path / "reference"  # trained meanwhile
    local = subprocess.Popen([sys.executable, "-m", "tscnet.cli", "train", "--no-progress", "--config", str(recipe),
                              "--out", str(reference)], env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = task.log
    try:
        _wait(lambda: "stopped by SIGTERM" in log.read_text(), 600, "the time-limit warning to stop the trainer")
        _wait(lambda: squeue_state(handle.job_id) == "PENDING", 120, "the job to requeue itself")
        assert not RunFolder(run).finished and _progress(run)
        subprocess.run(["scontrol", "update", f"jobid={handle.job_id}", "timelimit=30"], check=True)
        release_requeued(handle.job_id)
        code = _wait(lambda: (lambda c: None if c is None else [c])(executor.poll(handle)), 1200, "the job")[0]
    finally:
        subprocess.run(["scancel", handle.job_id], capture_output=True)
        _, err = local.communicate(timeout=1200)
    text = log.read_text()
    assert code == 0, text[-2000:] + "\n" + job_report(handle.folder, handle.job_id)
    assert local.returncode == 0, err[-2000:]
    assert "restart 0" in text and "restart 1" in text and "--resume" in text.split("restart 1")[1].splitlines()[0]
    assert text.count("stopped by SIGTERM") == 1 and "restart 2" not in text, text[-3000:]
    assert_same_run(reference, run)


@pytest.mark.slow  # ~2 min here (106 s): a study's job cancelled mid-run, the next call resuming it, a reference run
@needs_slurm
def test_a_cancelled_job_fails_its_cell_naming_the_job_and_the_next_call_resumes_it(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"],
                                    "policies": ["none"], "seeds": [0],
                                    "set": ["data.train_subset=1024", "data.test_subset=256", "data.batch_size=32",
                                            "train.epochs=2", "train.checkpoint_every=1"]}))
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--executor", "slurm", "--time", "00:20:00",
            "--cpus-per-task", "1", "--results", str(results), "--runs", str(runs)]
    run = runs / "cifar_resnet8" / "none" / "seed0"
    log = run.parent / "seed0.log"
    study = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = _wait(lambda: log.is_file() and "submitted as slurm job " in log.read_text() and
                    log.read_text().split("submitted as slurm job ")[1].split()[0], 120, "the job's submission")
        _wait(lambda: (_progress(run) or 0) >= 2, 600, "the job's first steps")
        subprocess.run(["scancel", job], check=True)  # no requeue: the job is gone
        out = study.communicate(timeout=600)[0]
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 1, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED:")]
    assert len(failed) == 1 and f"slurm job {job} was cancelled by scancel (state CANCELLED)" in failed[0], out
    assert failed[0].startswith("FAILED: cifar_resnet8 none seed0: ") and str(log) in failed[0]
    assert "1 failed" in out and not (results / "cifar_resnet8").exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "resuming: cifar_resnet8 none seed0" in again.stdout and "FAILED" not in again.stdout
    assert (results / "cifar_resnet8" / "none" / "seed0" / "cell.json").is_file()
    reference = tmp_path / "reference"
    _local_run(run.parent / "seed0.recipe.yaml", reference)
    assert_same_run(reference, run)


@pytest.mark.slow
@needs_slurm
def test_two_launches_of_one_study_under_slurm_both_end_right(tmp_path):
    """Two `tscnet study --executor slurm` on one spec and results folder: a cell submitted by both
    is trained by one job (the other's trainer finds the run folder locked or already holding the
    run, and its study waits for the cell or collects it); both studies exit 0 with every cell
    collected, each trained once."""
    spec = tmp_path / "twice.yaml"
    spec.write_text(yaml.safe_dump({"name": "twice", "recipe": "fashion_mnist_grid", "set": TINY,
                                    "models": ["cifar_resnet8"], "policies": ["none", "fixed:0.5"], "seeds": [0]}))
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--executor", "slurm", "--time", "00:20:00",
            "--cpus-per-task", "1", "--workers", "1", "--results", str(results), "--runs", str(runs)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(outs)
    cells = sorted(p.parent for p in results.rglob("cell.json"))
    assert len(cells) == 2
    for cell in cells:  # trained once: each epoch recorded once
        epochs = [json.loads(line)["epoch"] for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], cell
