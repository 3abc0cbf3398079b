"""The committed ImageNet study (``tscnet/configs/studies/imagenet_paper.yaml``, the seed paper's table):
each model trains its own recipe, ``--dry-run`` costs it in GPU-hours from the stated throughputs
(exact arithmetic), and the same spec runs end to end here under the single-node Slurm on a tiny image
folder of real ImageNet photos: a 2-process torchrun job, requeued mid-training, that resumes and is
collected with the result of an uninterrupted run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import sample_images
from run_utils import assert_same_run
from slurm_utils import release_requeued, squeue_state
from tscnet.cli import main as cli
from tscnet.study import load_spec, plan_cells
from tscnet.study.cost import EVAL_SPEEDUP, IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES, gpu_cost
from tscnet.study.results import base_config, definition
from tscnet.study.spec import resolve_spec_path
from tscnet.train.config import load_config
from tscnet.train.machine import read_platforms

SPEC = "imagenet_paper"


def _no_slurm():
    """Why the Slurm test cannot run here (test_slurm's check), else ``None``."""
    try:
        from tscnet.jobs.executors.slurm import slurm_running
    except ImportError:  # submitit
        return "the Slurm executor needs submitit: pip install 'tscnet[slurm]'"
    return slurm_running()


NO_SLURM = _no_slurm()
needs_slurm = pytest.mark.skipif(NO_SLURM is not None, reason=f"{NO_SLURM}")


def test_the_spec_is_the_papers_table_on_each_models_own_recipe():
    spec = load_spec(SPEC)
    assert spec.models == ["resnet50", "resnext50_32x4d", "seresnet50"]
    assert [a.name for a in spec.arms] == ["none", "tsc", "depth:0.5"] and spec.baseline == "none"
    assert len(spec.seeds) >= 3 and spec.executor["kind"] == "slurm" and spec.slurm["gpus_per_node"] == 8
    recipes = {"resnet50": "imagenet_resnet50", "resnext50_32x4d": "imagenet_resnext50",
               "seresnet50": "imagenet_seresnet50"}
    cells = plan_cells(spec)
    assert len(cells) == 3 * 3 * len(spec.seeds)
    for cell in cells:
        config = base_config(spec, cell)
        own = load_config(recipes[cell.model], validate=False)
        own["model"]["steps"], own["train"]["seed"], own["train"]["progress"] = cell.arm.steps, cell.seed, False
        assert definition(config, config) == definition(own, own), cell  # the recipe, key for key
        assert config["data"]["name"] == "imagefolder" and config["data"]["data_dir"] is None  # the user's --set


def _hours(epochs: int, speed: float) -> float:
    """GPU-hours of one cell: every epoch trains on ImageNet-1k and is evaluated on its 50,000 images."""
    return (epochs * 1_281_167 / speed + epochs * 50_000 / (3 * speed)) / 3600


def test_gpu_hours_from_a_stated_throughput():
    assert (IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES, EVAL_SPEEDUP) == (1_281_167, 50_000, 3.0)
    config = load_config("imagenet_resnet50", validate=False)
    cost = gpu_cost("resnet50", config, gpus=8, images_per_s={"resnet50": 2000.0})
    assert cost.gpu_hours == pytest.approx(_hours(90, 2000.0), rel=1e-12) and cost.wall_hours == cost.gpu_hours / 8
    # Subsets are the sizes; train.eval_epochs the evaluations (the last epoch always).
    config["data"].update(train_subset=10_000, test_subset=1_000)
    config["train"]["eval_epochs"] = [30, 60]
    cost = gpu_cost("resnet50", config, gpus=2, images_per_s={"resnet50": 500.0})
    assert cost.gpu_hours == pytest.approx((90 * 10_000 / 500 + 3 * 1_000 / 1_500) / 3600, rel=1e-12)
    assert gpu_cost("resnet50", config, gpus=0) is None  # no GPUs: the CPU estimate
    assert gpu_cost("cifar_resnet20", config, gpus=8) is None  # no stated figure for the model
    assert gpu_cost("resnet50", {"data": {"name": "cifar10"}, "train": {"epochs": 1}}, gpus=8) is None  # size unknown


def test_the_dry_run_gives_gpu_hours_per_cell_and_in_all(tmp_path, capsys):
    where = ["--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")]
    assert cli(["study", SPEC, "--dry-run", "--workers", "3", *where]) == 0
    out = capsys.readouterr().out
    r50, rx50, se50 = _hours(90, 2600.0), _hours(90, 2140.0), _hours(100, 2070.0)
    assert re.search(rf"^to run +resnet50 tsc seed0 +~{r50:.1f} GPU-h, {r50 / 8:.2f} h on 8 GPUs$", out, re.M), out
    assert re.search(rf"^to run +seresnet50 none epochs100 seed2 +~{se50:.1f} GPU-h, {se50 / 8:.2f} h on 8 GPUs$",
                     out, re.M), out
    total = 9 * (r50 + rx50 + se50)
    assert (f"GPU-hours: ~{total:.1f} GPU-h to run (resnet50 {9 * r50:.1f}, resnext50_32x4d {9 * rx50:.1f}, "
            f"seresnet50 {9 * se50:.1f}); ~{total / 8:.1f} h of 8-GPU jobs, ~{total / 8 / 3:.1f} h wall at 3 jobs "
            "at a time (from stated training images/s per GPU, resnet50 2600, resnext50_32x4d 2140, seresnet50 2070: "
            "assumptions, tscnet.study.cost.GPU_IMAGES_PER_S)") in out
    assert f"{total:.1f}" == "405.5"  # the figure the spec's comment quotes
    # A subset on 4-GPU jobs: the same GPU-hours per cell, twice the hours per job.
    assert cli(["study", SPEC, "--dry-run", "--models", "resnet50", "--seeds", "0", "--gpus-per-node", "4",
                *where]) == 0
    out = capsys.readouterr().out
    assert out.count(f"~{r50:.1f} GPU-h, {r50 / 4:.2f} h on 4 GPUs") == 3
    assert f"~{3 * r50:.1f} GPU-h to run (resnet50 {3 * r50:.1f}); ~{3 * r50 / 4:.1f} h of 4-GPU jobs" in out


# ---------------------------------------------------------------------------------------------
# End to end under the single-node Slurm


def _image_folder(root: Path) -> Path:
    """Two classes of foolbox's 20 real ImageNet photos (48 px JPEGs): 8 each in train/, 2 each in val/."""
    images, _ = sample_images("imagenet", 48)
    for index, image in enumerate(images):
        split = "train" if index < 16 else "val"
        folder = root / split / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"photo{index}.jpg", quality=95)
    return root


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the study exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# 1 min on 2 idle CPU cores, 3-4 min beside other work (load 7): the study, a 2-process torchrun job of timm's resnet50
# at 32 px (8 steps of 4 images, a checkpoint after each), requeued once, and the reference run.
@pytest.mark.slow
@needs_slurm
def test_the_spec_runs_through_slurm_with_two_processes_and_a_requeue(tmp_path):
    folder = _image_folder(tmp_path / "imagenet")
    # The committed spec with its Slurm section fitted to this machine (no GPUs, 2 CPUs): two CPU
    # processes per job (torchrun over gloo) where a cluster runs one per GPU. Nothing else changes.
    raw = yaml.safe_load(resolve_spec_path(SPEC).read_text())
    raw["slurm"] = {**raw["slurm"], "gpus_per_node": 0, "procs_per_node": 2, "cpus_per_task": 2, "time": "00:30:00"}
    spec = tmp_path / f"{SPEC}.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    # One loader worker per process, as on a cluster (the recipes have 8): its augmentation is seeded
    # from (seed, epoch), so a resumed epoch crops as the unbroken one did (data.workers=0 too:
    # tests/test_data_formats.py).
    tiny = [f"data.data_dir={folder}", "data.image_size=32", "data.batch_size=4", "data.eval_batch_size=4",
            "data.workers=1", "train.epochs=2", "train.checkpoint_every=1", "train.device=cpu"]
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--models", "resnet50", "--policies", "tsc",
            "--seeds", "0", "--results", str(results), "--runs", str(runs)]
    argv += [arg for item in tiny for arg in ("--set", item)]
    printed = tmp_path / "study.out"
    run, log = runs / "resnet50" / "tsc" / "seed0", runs / "resnet50" / "tsc" / "seed0.log"
    text = lambda: log.read_text() if log.is_file() else ""
    with open(printed, "w") as out:
        study = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    job = None
    try:
        job = _wait(lambda: (re.findall(r"submitted as slurm job (\d+)", text()) or [None])[0], 120, "sbatch", study)
        _wait(lambda: (run / "checkpoint.pt").is_file(), 600, "the job's first checkpoint (after step 1 of 8)", study)
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
        _wait(lambda: squeue_state(job) == "PENDING", 180, "the requeued job to be pending", study)
        assert not (run / "model_card.json").exists()  # requeued mid-training
        release_requeued(job)  # Slurm holds it 2 min
        study.wait(timeout=900)
    finally:
        if study.poll() is None:
            study.kill()
        if job is not None:
            subprocess.run(["scancel", job], capture_output=True)
    output, logged = printed.read_text(), text()
    assert study.returncode == 0, output[-3000:] + logged[-3000:]
    assert "slurm: partition (default), 30 min, 1 node(s) with no GPU and 2 CPU(s) per job, torchrun with 2" in output
    assert "done: resnet50 tsc seed0" in output and (results / "report.md").is_file()
    assert "restart 0" in logged and "restart 1" in logged and "--nproc-per-node=2" in logged
    assert "--resume" in logged.split("restart 1")[1].splitlines()[0]
    # The uninterrupted reference: the cell's recipe, 2 processes, here.
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tscnet.cli", "train", "--no-progress", "--config", str(run.parent / "seed0.recipe.yaml"),
                           "--out", str(reference)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, run)
    cell = results / "resnet50" / "tsc" / "seed0"
    info = json.loads((cell / "cell.json").read_text())
    assert (info["model"], info["arm"], info["seed"]) == ("resnet50", "tsc", 0)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "images_per_s")}
                          for line in path.read_text().splitlines()]
    assert strip(cell / "metrics.jsonl") == strip(reference / "metrics.jsonl")  # collected: the reference's result
    assert json.loads((cell / "steps.json").read_text())["dt"] == json.loads((reference / "steps.json").read_text())["dt"]
    platforms = read_platforms(cell)  # where it ran: this machine (both starts), two processes
    assert platforms and all(p["world_size"] == 2 and p["device_type"] == "cpu" for p in platforms)
    # The requeue's SIGTERM reaches every process of the job, the loader workers too; they ignore it
    # (tscnet.data.folder.ignore_stop_signals), so both trainers write their checkpoint and stop.
    assert logged.count("stopped by SIGTERM") == 2, logged[-3000:]
    assert "is killed by signal" not in logged
