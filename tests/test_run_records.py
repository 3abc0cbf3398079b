"""What a run records besides its metrics: the loss at fixed steps, where and how it diverged,
the platform it ran on, and progress lines fit for a log file."""
import fcntl
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
import torch

from tscnet.cli import main
from tscnet.train import read_metrics
from tscnet.train.machine import read_platforms

pytestmark = pytest.mark.slow  # every test trains a run

QUICK = ["train", "--data", "fashion-mnist", "--model", "cifar_resnet8", "--no-progress", "--test-subset", "128"]


def test_loss_at_step_is_the_mean_of_the_20_steps_ending_there(tmp_path, one_thread):
    """320 images at batch 16: 20 steps an epoch, so the window ending at step 20 (40) is epoch 1's
    (epoch 2's) every step, whose mean is the epoch's train loss; 40 wraps the window around."""
    out = tmp_path / "run"
    assert main(QUICK + ["--train-subset", "320", "--batch-size", "16", "--epochs", "3", "--out", str(out),
                         "--set", "train.loss_steps=[20,40,7]"]) == 0
    rows = read_metrics(out)
    assert [sorted(r["loss_at_step"]) for r in rows] == [["20", "7"], ["40"], []]
    assert math.isclose(rows[0]["loss_at_step"]["20"], rows[0]["train_loss"], rel_tol=1e-12)
    assert math.isclose(rows[1]["loss_at_step"]["40"], rows[1]["train_loss"], rel_tol=1e-12)
    assert rows[0]["loss_at_step"]["7"] != rows[0]["loss_at_step"]["20"]


@pytest.mark.parametrize("bad", ["[0]", "[-5]", "100", "[1.5]", "[a]"])
def test_bad_loss_steps_is_one_line(bad, tmp_path, capsys):
    assert main(QUICK + ["--train-subset", "64", "--out", str(tmp_path / "r"), "--set", f"train.loss_steps={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.loss_steps must be a list of positive step numbers" in err, err
    assert not (tmp_path / "r").exists()


def test_eval_epochs_skips_evaluations_and_nothing_else(tmp_path, one_thread):
    """Evaluating only some epochs (negative: from the end; the last always) changes no trained weight:
    the skipped epochs' rows lack test_*, the evaluated ones match a run that evaluates every epoch."""
    args = QUICK + ["--train-subset", "128", "--batch-size", "32", "--epochs", "4", "--steps", "tsc"]
    every, some = tmp_path / "every", tmp_path / "some"
    assert main(args + ["--out", str(every)]) == 0
    assert main(args + ["--out", str(some), "--set", "train.eval_epochs=[1,-3]"]) == 0
    full, sparse = read_metrics(every), read_metrics(some)
    assert [("test_error" in r) for r in sparse] == [True, True, False, True]  # 1, 4 - 3 + 1 = 2, and the last
    for a, b in zip(full, sparse):
        assert a["train_loss"] == b["train_loss"] and a["dt_mean"] == b["dt_mean"]
        if "test_error" in b:
            assert a["test_error"] == b["test_error"] and a["test_loss"] == b["test_loss"]
    card = json.loads((some / "model_card.json").read_text())
    assert card["final"]["test_error"] == full[-1]["test_error"]


@pytest.mark.parametrize("bad, says", [("[0]", "non-zero epoch numbers"), ("3", "non-zero epoch numbers"),
                                       ("[1,5]", "[5] lie outside the run's 2 epochs"),
                                       ("[-3]", "[-3] lie outside the run's 2 epochs")])
def test_bad_eval_epochs_is_one_line(bad, says, tmp_path, capsys):
    assert main(QUICK + ["--train-subset", "64", "--epochs", "2", "--out", str(tmp_path / "r"),
                         "--set", f"train.eval_epochs={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.eval_epochs" in err and says in err, err
    assert not (tmp_path / "r").exists()


# lr x 30 after epoch 1 (16 steps of 8 images): the loss becomes NaN a few steps into epoch 2.
DIVERGE = QUICK + ["--steps", "channel", "--train-subset", "128", "--batch-size", "8", "--epochs", "2",
                   "--set", "sched.milestones=[1]", "--set", "sched.gamma=30", "--set", "train.loss_steps=[10,19]"]


def test_divergence_names_its_first_step_and_writes_diverged_json(tmp_path, capsys, one_thread):
    # Checked at the 20-step sync points from the losses kept on the device ...
    out = tmp_path / "sync"
    assert main(DIVERGE + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    record = json.loads((out / "diverged.json").read_text())
    # ... and, with a checkpoint after every step, at every step (a checkpoint is written finite only).
    each = tmp_path / "each"
    assert main(DIVERGE + ["--out", str(each), "--set", "train.checkpoint_every=1"]) == 2
    err_each = capsys.readouterr().err.strip()
    assert json.loads((each / "diverged.json").read_text())["step"] == record["step"]

    step = record["step"]
    assert 16 < step < 32 and record["epoch"] == 2 and record["batch"] == step - 16, record
    assert record["loss"] in ("nan", "inf")
    assert len(err.splitlines()) == 1 and err == f"tscnet train: error: {record['message']}"
    assert (f"training diverged: loss became {record['loss']} at step {step} (epoch 2/2, batch {step - 16}); "
            f"the last good checkpoint (epoch 1) is kept in {out / 'checkpoint.pt'}") in err, err
    assert set(record["loss_at_step"]) == ({"10", "19"} if step > 19 else {"10"})
    assert record["loss_at_step"]["10"] == read_metrics(out)[0]["loss_at_step"]["10"]
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["progress"] is None and len(read_metrics(out)) == 1
    # Checkpointed every step, the run keeps the last step whose weights were finite (a step can blow
    # up the weights with a finite loss: the next loss is the first NaN).
    last = torch.load(each / "checkpoint.pt", weights_only=True)
    batch = last["progress"]["batch"]
    assert last["epoch"] == 1 and step - 20 < batch + 16 < step
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert f"the last good checkpoint (epoch 2, batch {batch}) is kept" in err_each
    # The first loss was near chance (ln 10): the usual advice stands.
    assert err.endswith("; lower optim.lr or add sched.warmup_epochs") and "first_loss" not in record


def test_a_run_exploding_at_initialisation_is_told_so(tmp_path, capsys, one_thread):
    """Norm-free ResNet-20 with Δt ≡ 3: the logits at initialisation are huge, so the loss at step 1
    is far above chance and step 2's is NaN. A lower lr or a warm-up cannot help there; the error says
    what can, and diverged.json keeps that first loss."""
    out = tmp_path / "r"
    assert main(QUICK + ["--model", "cifar_resnet20", "--set", "model.norm=none", "--steps", "fixed:3",
                         "--train-subset", "64", "--batch-size", "16", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    record = json.loads((out / "diverged.json").read_text())
    assert record["step"] == 2 and isinstance(record["first_loss"], float) and record["first_loss"] > 10 * math.log(10)
    assert len(err.splitlines()) == 1 and err == f"tscnet train: error: {record['message']}"
    assert (f"the loss at step 1 was already {record['first_loss']:.4g} (chance: ln 10 = 2.30)" in err
            and "model.steps=depth:0.5" in err and "add sched.warmup_epochs" not in err), err


def test_platform_is_recorded_and_a_move_appends(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    args = QUICK + ["--train-subset", "64", "--batch-size", "16", "--epochs", "2", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("TSCNET_TEST_SIGNAL", "step@6")  # stopped at batch 2 of epoch 2
        assert main(args) == 2
        first = read_platforms(out)
        assert len(first) == 1 and first[0]["threads"] == 1 and first[0]["from_step"] == 0
        assert first[0]["torch"] == torch.__version__ and first[0]["device_type"] == "cpu" and first[0]["device"]
        monkeypatch.delenv("TSCNET_TEST_SIGNAL")
        # Continued with another thread count: another platform (the numerics may differ).
        torch.set_num_threads(2)
        assert main(args + ["--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    both = read_platforms(out)
    assert [(p["threads"], p["from_step"], p["from_epoch"]) for p in both] == [(1, 0, 0), (2, 6, 1)]
    assert json.loads((out / "model_card.json").read_text())["platform"] == both


def _train_cli(out, stderr):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 40 steps an epoch: a sync point at half the epoch.
    cmd = [sys.executable, "-m", "tscnet.cli", *[a for a in QUICK if a != "--no-progress"], "--train-subset", "160",
           "--batch-size", "4", "--epochs", "1", "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr)


def test_a_log_file_gets_plain_lines_and_a_terminal_the_bar(tmp_path):
    logged = _train_cli(tmp_path / "log", subprocess.PIPE)
    out, err = (s.decode() for s in logged.communicate(timeout=300))
    assert logged.returncode == 0, err
    assert "\r" not in out + err and "batch/s" not in out + err and "s/batch" not in out + err
    lines = [line for line in out.splitlines() if "ETA" in line]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1   50%  ") and " img/s  loss " in lines[0], out
    # stderr a terminal: the progress bar, and no plain lines.
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    shown = _train_cli(tmp_path / "tty", slave)
    os.close(slave)
    drawn = b""
    while True:  # read as it comes (a full terminal buffer would block the run)
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the run closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert shown.wait(timeout=300) == 0
    assert b"batch/s" in drawn or b"s/batch" in drawn, drawn[-500:]
    assert "ETA" not in shown.stdout.read().decode()


def test_the_run_folders_steps_file_is_the_one_profile_policies_read():
    """Two layers name steps.json: the run folder (jobs) writes it, ``profile:RUN`` (stepping, below
    jobs and free of it) reads it; they must name the same file."""
    from tscnet.jobs.run_folder import RunFolder
    from tscnet.stepping.profile import PROFILE_FILE

    assert RunFolder.STEPS == PROFILE_FILE
