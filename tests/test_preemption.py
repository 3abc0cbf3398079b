"""Preemption: a real SIGTERM/SIGINT stops a run with a checkpoint, and --resume ends exactly where
an uninterrupted run ends (same weights, same metrics), wherever the signal landed."""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tscnet.cli import main
from tscnet.train import read_metrics

from conftest import sample_dir
from run_utils import assert_same_run, tmpfs

pytestmark = pytest.mark.slow  # real signals to training processes: minutes

# 512 images at batch 64: 8 steps an epoch, 2 epochs; 4 evaluation batches. The loss windows of
# steps 3, 12 and 16 span a resume point and (12, 16) the epoch boundary.
ARGS = ["train", "--data", "fashion-mnist", "--model", "cifar_resnet8", "--steps", "tsc", "--no-progress",
        "--train-subset", "512", "--test-subset", "256", "--epochs", "2", "--batch-size", "64",
        "--set", "data.eval_batch_size=64", "--set", "train.loss_steps=[3,8,12,16]"]


def _state(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("point, where", [
    ("step@3", "during epoch 1"),   # mid-epoch
    ("step@12", "during epoch 2"),  # mid-epoch, after an epoch boundary
    ("step@8", "during the evaluation of epoch 1"),  # on the epoch's last step: stops in its evaluation
    ("eval@1", "during the evaluation of epoch 1"),  # as evaluation starts
    ("eval@1.2", "during the evaluation of epoch 1"),  # after 2 of its 4 batches
    ("eval@2.3", "during the evaluation of epoch 2"),  # the last epoch's
    ("save@1", "after epoch 1"),    # while the checkpoint is being written
])
def test_signal_stops_with_a_checkpoint_and_resume_is_exact(point, where, straight, tmp_path, monkeypatch, capsys,
                                                           one_thread):
    out = tmp_path / "run"
    monkeypatch.setenv("TSCNET_TEST_SIGNAL", point)  # a real SIGTERM, sent by the process to itself there
    assert main(ARGS + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"stopped by SIGTERM {where}" in err, err
    assert f"tscnet train --resume --out {out}" in err
    saved = _state(out)
    if where.startswith("during epoch"):
        assert 0 < saved["progress"]["batch"] < 8 and saved["progress"]["trained"] is None  # a mid-epoch checkpoint
    if "evaluation" in where:  # the epoch trained whole, not evaluated: resume evaluates it, trains no step again
        epoch = int(where.split()[-1])
        assert saved["epoch"] == epoch - 1 and saved["progress"]["batch"] == 8
        assert saved["scheduler"]["last_epoch"] == 8 * epoch and saved["progress"]["trained"]["train_loss"] > 0
    monkeypatch.delenv("TSCNET_TEST_SIGNAL")
    assert main(ARGS + ["--out", str(out), "--resume"]) == 0
    assert_same_run(straight, out)
    assert set(read_metrics(out)[1]["loss_at_step"]) == {"12", "16"}


@pytest.mark.parametrize("point, where", [
    ("step@3", "during epoch 1"), ("eval@1.2", "during the evaluation of epoch 1"), ("save@1", "after epoch 1")])
def test_a_study_recipe_with_keys_left_to_the_data_resumes(point, where, straight, tmp_path, monkeypatch, capsys,
                                                           one_thread):
    """A study writes each cell's recipe with every key, ``model.num_classes: null`` and
    ``model.in_chans: null`` among them (left to the data), and a requeued Slurm job restarts it as
    ``--config RECIPE --resume``: the resolved 10 and 1 in the run's config are no change."""
    from tscnet.commands.train import build_config, configure
    from tscnet.train.config import dump_config

    parser = argparse.ArgumentParser()
    configure(parser)
    config = build_config(parser.parse_args(ARGS[1:]))
    assert config["model"]["num_classes"] is None and config["model"]["in_chans"] is None
    recipe = tmp_path / "cell.recipe.yaml"
    recipe.write_text(dump_config(config))
    out = tmp_path / "run"
    command = ["train", "--config", str(recipe), "--out", str(out)]
    monkeypatch.setenv("TSCNET_TEST_SIGNAL", point)
    assert main(command) == 2
    assert f"stopped by SIGTERM {where}" in capsys.readouterr().err
    monkeypatch.delenv("TSCNET_TEST_SIGNAL")
    assert main(command + ["--resume"]) == 0, capsys.readouterr().err
    assert_same_run(straight, out)
    # A real change of a key left to the data is still refused.
    changed = tmp_path / "changed.recipe.yaml"
    changed.write_text(recipe.read_text().replace("num_classes: null", "num_classes: 7"))
    assert main(["train", "--config", str(changed), "--out", str(out), "--resume"]) == 2
    assert "model.num_classes (saved 10, given 7)" in capsys.readouterr().err


def test_an_image_folder_run_without_loader_workers_resumes_exactly(tmp_path, monkeypatch, capsys, one_thread):
    """``data.workers=0``: the crops run in the trainer, and the batches a resume re-reads to reach its
    step must not move the trainer's RNG (they did: the resumed weights differed)."""
    for split in ("train", "val"):  # the 20 real ImageNet sample photos, one class per label
        for photo in sorted(sample_dir().glob("imagenet_*.jpg")):
            folder = tmp_path / "data" / split / photo.stem.split("_")[-1]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / photo.name).symlink_to(photo)
    args = ["train", "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--model", "cifar_resnet8",
            "--steps", "tsc", "--no-progress", "--epochs", "2", "--batch-size", "4", "--set", "data.workers=0",
            "--set", "data.image_size=32", "--set", "train.device=cpu"]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    monkeypatch.setenv("TSCNET_TEST_SIGNAL", "step@2")
    assert main(args + ["--out", str(tmp_path / "run")]) == 2
    assert "stopped by SIGTERM during epoch 1" in capsys.readouterr().err
    monkeypatch.delenv("TSCNET_TEST_SIGNAL")
    assert main(args + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_external_sigterm_and_sigint_mid_epoch(straight, tmp_path):
    """Signals from outside (a scheduler), at whatever step the run has reached."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name
        # A checkpoint after every step lets the test see how far the run got.
        cmd = [sys.executable, "-m", "tscnet.cli", *ARGS, "--out", str(out), "--set", "train.checkpoint_every=1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if _state(out)["progress"]["batch"] >= 2:
                    break
            except (FileNotFoundError, RuntimeError, EOFError, TypeError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert f"stopped by {sig.name}" in err and "--resume" in err
        resumed = subprocess.run([sys.executable, "-m", "tscnet.cli", *ARGS, "--out", str(out), "--resume",
                                  "--set", "train.checkpoint_every=1"], env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(straight, out)


def test_periodic_checkpoints_leave_the_run_unchanged(straight, tmp_path, one_thread):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out), "--set", "train.checkpoint_every=3"]) == 0
    assert_same_run(straight, out)


@pytest.mark.parametrize("bad", ["-1", "abc", "0.5min", "xmin"])
def test_bad_checkpoint_interval_is_one_line(bad, tmp_path, capsys):
    code = main(ARGS + ["--out", str(tmp_path / "r"), "--set", f"train.checkpoint_every={bad}"])
    err = capsys.readouterr().err.strip()
    if bad == "0.5min":  # half a minute is a valid interval
        assert code == 0, err
        return
    assert code == 2 and len(err.splitlines()) == 1 and "train.checkpoint_every" in err, err
    assert not (tmp_path / "r").exists()


def test_torchrun_stops_every_rank_at_the_same_step(tmp_path):
    """SIGTERM reaches one rank only: both stop after the same step, and the resumed run equals an
    uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "-m",
                "tscnet.cli"]
    ddp_args = ARGS + ["--device", "cpu"]
    reference, out = tmp_path / "straight", tmp_path / "stopped"
    assert subprocess.run(torchrun + ddp_args + ["--out", str(reference)], env=env, capture_output=True).returncode == 0
    stopped = subprocess.run(torchrun + ddp_args + ["--out", str(out)], capture_output=True, text=True,
                             env={**env, "TSCNET_TEST_SIGNAL": "step@3", "TSCNET_TEST_SIGNAL_RANK": "1"})
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM during epoch 1") == 2, stopped.stderr[-2000:]  # both ranks
    assert _state(out)["progress"]["batch"] == 3
    resumed = subprocess.run(torchrun + ddp_args + ["--out", str(out), "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(reference, out)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_torchrun_and_its_workers_signalled_together_stop_once(tmp_path):
    """SIGTERM to torchrun and to every process below it, as Slurm signals a job step: torchrun
    forwards its own to its workers, which got theirs a moment before. Each worker takes the two as
    one request: both checkpoint at the same step, and the resumed run equals an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29523", "-m",
                "tscnet.cli"]
    ddp_args = ARGS + ["--device", "cpu"]
    reference, out = tmp_path / "straight", tmp_path / "stopped"
    assert subprocess.run(torchrun + ddp_args + ["--out", str(reference)], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(torchrun + ddp_args + ["--out", str(out), "--set", "train.checkpoint_every=1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if _state(out)["progress"]["batch"] >= 2:
                break
        except (FileNotFoundError, RuntimeError, EOFError, TypeError, KeyError):
            pass
        time.sleep(0.02)
    for pid in [proc.pid, *_descendants(proc.pid)]:
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert err.count("stopped by SIGTERM during epoch") == 2 and "KeyboardInterrupt" not in err, err[-3000:]
    resumed = subprocess.run(torchrun + ddp_args + ["--out", str(out), "--resume", "--set", "train.checkpoint_every=1"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(reference, out)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real, nearly full file system: a tmpfs just larger than one checkpoint (needs mount rights)."""
    probe = tmp_path / "probe"
    assert main([a if a != "2" else "1" for a in ARGS] + ["--out", str(probe)]) == 0  # 1 epoch: a checkpoint's size
    size = (probe / "checkpoint.pt").stat().st_size
    with tmpfs(tmp_path / "disk", int(size * 1.5) + 65536) as mount:
        yield mount


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tiny_disk, capsys, one_thread):
    # Epoch 1's checkpoint fits; epoch 2's cannot (the old file stays until the new one is complete).
    out = tiny_disk / "run"
    assert main(ARGS + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "checkpoint.pt" in err, err
    kept = _state(out)
    assert kept["epoch"] == 1 and [m["epoch"] for m in read_metrics(out)] == [1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written temporary file left
