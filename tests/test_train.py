"""The training engine and CLI on real Fashion-MNIST: a short run, eval/fold, resume, faults."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

import tscnet
from tscnet.cli import main
from tscnet.train import load_config, load_run, read_metrics
from tscnet.train.optim import lr_factor

from run_utils import assert_same_run

QUICK = ["--data", "fashion-mnist", "--model", "cifar_resnet8", "--no-progress"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "short"
    code = main(["train", *QUICK, "--steps", "tsc", "--train-subset", "2000", "--test-subset", "1000",
                 "--epochs", "2", "--batch-size", "64", "--set", "sched.name=cosine", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_short_run_learns_and_writes_the_run_folder(short_run):
    names = {p.name for p in short_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "model.safetensors", "model_card.json"} <= names
    metrics = read_metrics(short_run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(tscnet.train.run.METRIC_KEYS) <= set(metrics[-1])
    assert metrics[-1]["test_top1"] > 50.0  # chance is 10 %
    assert len(metrics[-1]["dt_mean"]) == 3
    for m in metrics:  # values, not just keys: top-5 is not top-1, T is Σ_d mean_c Δt_d, not D
        assert m["test_top5"] > m["test_top1"] and m["test_error"] == pytest.approx(100 - m["test_top1"])
        assert m["evolution_time"] == pytest.approx(sum(m["dt_mean"]), rel=1e-9)
    steps = tscnet.step_sizes(load_run(short_run).model)
    assert metrics[-1]["dt_mean"] == pytest.approx([float(s.mean()) for s in steps], rel=1e-6)
    assert abs(metrics[-1]["evolution_time"] - 3) > 1e-3  # the controller moved the steps
    card = json.loads((short_run / "model_card.json").read_text())
    assert card["final"]["test_top1"] == metrics[-1]["test_top1"]
    assert card["params_folded"] == sum(p.numel() for p in tscnet.create_model("cifar_resnet8", in_chans=1).parameters())
    config = yaml.safe_load((short_run / "config.yaml").read_text())
    assert config["model"] == {"name": "cifar_resnet8", "steps": "tsc", "num_classes": 10, "in_chans": 1, "norm": None,
                               "init": None}


@pytest.mark.slow
def test_eval_and_fold_agree_with_training_metrics(short_run, tmp_path, capsys):
    assert main(["eval", str(short_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = read_metrics(short_run)[-1]
    assert result["images"] == 1000
    assert result["test_top1"] == pytest.approx(final["test_top1"], abs=0.11)  # at most one image apart
    assert result["fold_rel_diff"] < 1e-5 and result["fold_prediction_agreement"] > 99.8
    out = tmp_path / "vanilla.safetensors"
    assert main(["fold", str(short_run), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    vanilla = tscnet.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    vanilla.load_state_dict(load_file(out), strict=True)
    run = load_run(short_run)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(vanilla.eval()(x), run.model(x), rtol=1e-4, atol=1e-5)
    # fold never overwrites
    assert main(["fold", str(short_run), "--out", str(out)]) == 2


def _train_cmd(out, epochs=3):
    return [sys.executable, "-m", "tscnet.cli", "train", *QUICK, "--steps", "tsc", "--train-subset", "768",
            "--test-subset", "256", "--epochs", str(epochs), "--set", "data.batch_size=64", "--out", str(out)]


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_metrics(killed))
    assert 1 <= done < 3, "the run was not killed between its first and its last epoch"
    resumed = subprocess.run([sys.executable, "-m", "tscnet.cli", "train", "--resume", "--out", str(killed),
                              "--no-progress"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    # The checkpoint was used: only the remaining epochs ran (a resume that retrains from epoch 0
    # ends in the same state, training being deterministic).
    ran = [int(line.split()[1].split("/")[0]) for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert ran == list(range(done + 1, 4)), resumed.stdout
    assert_same_run(straight, killed)


@pytest.mark.slow
def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "diverge"
    # lr x 1e12 after epoch 1: epoch 2 blows up.
    code = main(["train", *QUICK, "--steps", "channel", "--train-subset", "256", "--test-subset", "128",
                 "--epochs", "2", "--set", "sched.milestones=[1]", "--set", "sched.gamma=1e12", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "loss became" in err and "epoch 1" in err and len(err.strip().splitlines()) == 1
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert len(read_metrics(out)) == 1


@pytest.mark.parametrize(
    "argv, message",
    [(["--data", "fashion-mnits"], "fashion-mnist"),
     (["--model", "cifar_resnet21"], "cifar_resnet20"),
     (["--steps", "tsc:hidden=abc"], "hidden"),
     (["--data", "cifar10", "--data-dir", "/nonexistent"], "/nonexistent"),
     (["--set", "optim.lrr=0.1"], "optim.lr"),
     (["--set", "optim"], "section.key=value"),
     (["--config", "no_such_recipe"], "cifar10_resnet20"),
     (["--steps", "tsc:hidden=-1"], "hidden must be a positive size"),
     (["--steps", "fixed:-1"], "fixed step must be a positive finite number"),
     (["--steps", "fixed:0"], "fixed step must be a positive finite number"),
     (["--steps", "tsc:dt_min=0"], "0 < dt_min < dt_init < dt_max"),
     (["--steps", "tsc:feedback=both"], "unknown feedback"),
     (["--set", "train.compile=bogus_backend"], "train.compile"),
     (["--set", "train.channels_last=maybe"], "train.channels_last")],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["train", "--epochs", "1", "--train-subset", "64", "--no-progress", *argv, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()  # nothing written: the same command can be fixed and rerun


@pytest.mark.slow
def test_existing_run_is_never_overwritten(short_run, capsys):
    before = {p.name: p.read_bytes() for p in short_run.iterdir() if p.is_file()}
    code = main(["train", *QUICK, "--epochs", "1", "--train-subset", "64", "--out", str(short_run)])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in short_run.iterdir() if p.is_file()}


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(short_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    config = yaml.safe_load((short_run / "config.yaml").read_text())
    config["model"]["steps"] = "channel"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    (other / "checkpoint.pt").write_bytes((short_run / "checkpoint.pt").read_bytes())
    assert main(["eval", str(other)]) == 2
    err = capsys.readouterr().err
    assert "'tsc'" in err and "'channel'" in err


def test_unsafe_checkpoint_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": Evil()}, path)
    assert main(["eval", str(path)]) == 2
    assert not (tmp_path / "pwned").exists()
    assert "safely" in capsys.readouterr().err


def test_every_recipe_loads_and_names_a_real_model():
    recipes = sorted(Path(tscnet.train.config.CONFIG_DIR).glob("*.yaml"))
    assert len(recipes) >= 14
    for path in recipes:
        config = load_config(path)
        tscnet.create_model(config["model"]["name"], num_classes=10, steps="none") if "resnet1" not in path.stem else None


def test_lr_schedules():
    he = {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 1, "warmup_start": 0.1}
    assert lr_factor(0.0, 164, he) == pytest.approx(0.1)
    assert lr_factor(1.0, 164, he) == pytest.approx(1.0)
    assert lr_factor(82.0, 164, he) == pytest.approx(0.1)
    assert lr_factor(123.0, 164, he) == pytest.approx(0.01)
    step = {"name": "step", "step_size": 30, "gamma": 0.1, "warmup_epochs": 0, "warmup_start": 0.1}
    assert lr_factor(61.0, 90, step) == pytest.approx(0.01)
    cos = {"name": "cosine", "warmup_epochs": 0, "warmup_start": 0.1}
    assert lr_factor(5.0, 10, cos) == pytest.approx(0.5)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "tscnet.cli", "train", *QUICK, "--steps", "tsc", "--train-subset", "1024", "--test-subset", "256",
           "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--out", str(out),
           "--set", "data.download=true"]  # the data is here: rank 0 checks it alone while rank 1 waits
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_metrics(out)
    # It learns (chance is 10 %), and both ranks ended every epoch with equal weights (checked by
    # the engine's all-gather; a rank training alone would differ and stop the run).
    assert len(metrics) == 2 and metrics[-1]["test_top1"] > 40.0, metrics
    card = json.loads((out / "model_card.json").read_text())
    assert card["processes"] == 2
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_leaves_no_scratch(tmp_path, monkeypatch):
    from tscnet.train import load_config
    from tscnet.study.sweep import Job, run_sweep

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = load_config("fashion_mnist_grid", ["model.name=cifar_resnet8", "train.epochs=1",
                                                "data.train_subset=256", "data.test_subset=256"])
    config["train"]["progress"] = False
    job = Job(config, tmp_path / "runs" / "seed0")
    assert run_sweep([job], workers=1, threads=1) == [] and job.finished
    card = (job.out / "model_card.json").stat().st_mtime_ns
    assert run_sweep([job], workers=1, threads=1) == []  # finished: skipped, not retrained
    assert (job.out / "model_card.json").stat().st_mtime_ns == card
    assert list(scratch.iterdir()) == []  # the recipe's scratch folder is removed


def test_metric_sums_rank_top1_and_top5_on_known_logits():
    from tscnet.train.metrics import MetricSums

    target = torch.arange(8) % 10
    logits = torch.zeros(8, 10)
    logits[torch.arange(8), (target + 1) % 10] = 3.0   # the true class ranks second...
    logits[torch.arange(8), target] = 2.0
    logits[[0, 1], target[[0, 1]]] = -5.0               # ...except for two samples, where it ranks last
    sums = MetricSums(torch.device("cpu"))
    sums.update(logits, target, torch.nn.functional.cross_entropy(logits, target))
    m = sums.compute("test_")
    assert m["test_top1"] == 0.0 and m["test_top5"] == pytest.approx(75.0)


@pytest.mark.slow
def test_resume_accepts_the_command_that_started_the_run(tmp_path, monkeypatch, capsys):
    # People resume by pressing ↑ and adding --resume: same flags accepted (default --out too),
    # a flag that would change the run refused, naming the key with both values.
    monkeypatch.chdir(tmp_path)
    argv = ["train", *QUICK, "--steps", "channel", "--train-subset", "128", "--test-subset", "64", "--epochs", "1",
            "--batch-size", "64", "--set", "optim.lr=0.05"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "cifar_resnet8-channel-fashion-mnist-seed0"
    assert (run / "model_card.json").exists()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    code = main(argv[:-2] + ["--set", "optim.lr=0.1", "--epochs", "2", "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "optim.lr (saved 0.05, given 0.1)" in err and "train.epochs (saved 1, given 2)" in err, err
    assert read_metrics(run)[-1]["epoch"] == 1  # nothing was trained or overwritten


@pytest.mark.slow
def test_eval_and_fold_work_from_the_folded_weights_when_the_checkpoint_is_gone(short_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    (run / "checkpoint.pt").unlink()  # deleted for disk space: model.safetensors holds the folded model
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_top1"] == pytest.approx(read_metrics(short_run)[-1]["test_top1"], abs=0.11)
    assert result["fold_checked"] is False and result["fold_rel_diff"] is None
    out = tmp_path / "again.safetensors"
    assert main(["fold", str(run), "--out", str(out)]) == 0
    again, saved = load_file(out), load_file(run / "model.safetensors")
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


def test_fit_from_python_checks_the_config_like_the_cli(tmp_path):
    from tscnet.errors import UserError
    from tscnet.train import fit

    config = load_config("fashion_mnist_converged")
    config["model"]["steps"], config["train"]["epochs"] = "tsc", 0
    with pytest.raises(UserError, match="train.epochs must be a positive integer, got 0"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_that_cannot_be_folded_still_finishes(tmp_path, capsys):
    """ECA mixes channels before its gate: no model.safetensors, but steps.json and the card are written."""
    out = tmp_path / "eca"
    code = main(["train", "--data", "fashion-mnist", "--model", "ecaresnet26t", "--steps", "tsc", "--train-subset",
                 "32", "--test-subset", "32", "--batch-size", "32", "--epochs", "1", "--no-progress", "--out", str(out)])
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and warned[0].startswith("tscnet train: warning: no model.safetensors: cannot fold steps "
                                                     "exactly through the gate timm.layers.eca.EcaModule"), warned
    assert code == 0 and not (out / "model.safetensors").exists()
    card = json.loads((out / "model_card.json").read_text())
    assert card["folded_weights"] is None and card["params_folded"] is None and card["epochs"] == 1
    assert len(json.loads((out / "steps.json").read_text())["dt"]) == 8
