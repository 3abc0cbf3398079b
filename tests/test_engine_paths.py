"""Engine code paths that otherwise first run on a GPU: channels_last, bf16/fp16 autocast with a
GradScaler, torch.compile in the training loop. Tiny real Fashion-MNIST runs on CPU."""
import math

import pytest
import torch
import yaml
from torch import nn

from tscnet.cli import main
from tscnet.errors import UserError
from tscnet.train import read_metrics

pytestmark = pytest.mark.slow  # every test trains through the engine (compile, DDP, AMP): minutes
from tscnet.train.engine import _use_channels_last

QUICK = ["--data", "fashion-mnist", "--model", "cifar_resnet8", "--no-progress", "--device", "cpu",
         "--batch-size", "64"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _train(out, *argv):
    assert main(["train", *QUICK, *argv, "--out", str(out)]) == 0
    return read_metrics(out)


def _checkpoint(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_channels_last_setting():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _use_channels_last("auto", conv, cpu) and _use_channels_last("auto", conv, cuda)
    assert not _use_channels_last("auto", mlp, cpu)  # no 4-D convolution to speed up
    assert _use_channels_last(True, mlp, cpu) and not _use_channels_last(False, conv, cuda)
    with pytest.raises(UserError, match="auto, true or false"):
        _use_channels_last("maybe", conv, cpu)


def test_channels_last_auto_trains_nhwc_on_cpu_and_false_keeps_nchw(tmp_path):
    runs = {}
    for setting in ("auto", "false"):
        out = tmp_path / setting
        _train(out, "--train-subset", "128", "--test-subset", "64", "--epochs", "1",
               "--set", f"train.channels_last={setting}")
        runs[setting] = _checkpoint(out)["model"]
    name = "layer1.0.conv1.weight"  # 16 -> 16 channels (conv1 has 1 input channel: both layouts agree)
    # torch.save keeps strides: the weights the optimizer updated were NHWC under auto, NCHW under false.
    assert runs["auto"][name].is_contiguous(memory_format=torch.channels_last)
    assert not runs["auto"][name].is_contiguous()
    assert runs["false"][name].is_contiguous()
    # Same data, same initialisation, two SGD steps: the layouts differ only in summation order
    # (measured: at most 6e-4 on any entry, BN running variances; weights O(0.1)).
    for key, value in runs["false"].items():
        if value.is_floating_point():
            torch.testing.assert_close(runs["auto"][key], value, rtol=1e-2, atol=2e-3, msg=key)


def test_bf16_autocast_trains_like_fp32(tmp_path):
    common = ["--train-subset", "768", "--test-subset", "256", "--epochs", "2", "--set", "sched.name=cosine"]
    fp32 = _train(tmp_path / "fp32", *common, "--set", "train.amp=off")  # YAML reads off as false: accepted
    bf16 = _train(tmp_path / "bf16", *common, "--set", "train.amp=bf16")
    for rows in (fp32, bf16):
        assert all(math.isfinite(r[k]) for r in rows for k in ("train_loss", "test_loss"))
        assert rows[-1]["train_loss"] < rows[0]["train_loss"]
        assert rows[-1]["test_top1"] > 30.0  # chance is 10 %
    assert bf16[-1]["train_loss"] != fp32[-1]["train_loss"]  # autocast did run in bf16
    assert bf16[-1]["train_loss"] == pytest.approx(fp32[-1]["train_loss"], abs=0.1)
    assert _checkpoint(tmp_path / "bf16")["scaler"] == {}  # bf16 needs no loss scaling


def test_fp16_grad_scaler_state_resumes_exactly(tmp_path):
    # CPU autocast supports float16 in torch 2.14 (conv training runs, ~12x slower than fp32 here),
    # so the GPU's fp16 path runs for real. A constant schedule lets a 1-epoch run continue to 2.
    common = ["--train-subset", "96", "--batch-size", "32", "--test-subset", "32", "--set", "sched.name=constant",
              "--set", "train.amp=fp16"]
    straight = tmp_path / "straight"
    _train(straight, *common, "--epochs", "2")
    resumed = tmp_path / "resumed"
    _train(resumed, *common, "--epochs", "1")
    config = yaml.safe_load((resumed / "config.yaml").read_text())
    scaler_after_one = _checkpoint(resumed)["scaler"]
    assert scaler_after_one["scale"] == 65536.0 and scaler_after_one["_growth_tracker"] == 3  # 3 good steps
    config["train"]["epochs"] = 2
    (resumed / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["train", "--resume", "--out", str(resumed), "--no-progress"]) == 0
    a, b = _checkpoint(straight), _checkpoint(resumed)
    assert a["epoch"] == b["epoch"] == 2
    # The growth tracker counts steps since the last overflow: a fresh scaler on resume would say 3.
    assert a["scaler"] == b["scaler"] and a["scaler"]["_growth_tracker"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert [r["train_loss"] for r in read_metrics(straight)] == [r["train_loss"] for r in read_metrics(resumed)]


@pytest.mark.parametrize("value, message", [("no_such_backend", "aot_eager"), ("3", "true or false or a name")])
def test_bad_compile_setting_is_one_line_and_leaves_no_run(value, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *QUICK, "--train-subset", "64", "--epochs", "1", "--set", f"train.compile={value}",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()  # checked before the run folder is written: the same command can be rerun


@pytest.mark.parametrize("policy, backend", [
    ("none", "true"),  # inductor, the default backend (C++ code generation on CPU)
    ("tsc", "aot_eager"),
])
def test_compiled_training_loop_never_recompiles_after_warm_up(policy, backend, tmp_path):
    """Train and eval modes, a last batch of another size, a second epoch and a new model
    instance (as after --resume): after one warm-up epoch, none of it may recompile."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    # 288 = 4.5 batches of 64, and 160 test images = 128 + 32: both loops end on a smaller batch.
    common = ["--steps", policy, "--train-subset", "288", "--test-subset", "160", "--set", "data.eval_batch_size=128",
              "--set", f"train.compile={backend}"]
    _train(tmp_path / "warm-up", *common, "--epochs", "1")
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # at least the train-mode and the eval-mode graph
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = _train(tmp_path / "compiled", *common, "--epochs", "2")
    assert counters["stats"]["unique_graphs"] == graphs
    eager = _train(tmp_path / "eager", *common[:-2], "--epochs", "2")
    # Compiled kernels sum in another order; 10 SGD steps amplify that to ~1e-3 of the loss.
    for c, e in zip(compiled, eager):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-2)
        assert c["test_loss"] == pytest.approx(e["test_loss"], rel=1e-2)


def test_tensorboard_log_holds_scalars_and_step_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["train", *QUICK, "--steps", "tsc", "--train-subset", "1280", "--test-subset", "128", "--epochs", "2",
                 "--batch-size", "64", "--set", "train.log=tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    metrics = read_metrics(out)
    epoch_t = [e.value for e in events.Scalars("epoch/evolution_time")]
    assert epoch_t == pytest.approx([m["evolution_time"] for m in metrics], rel=1e-6)
    assert [e.value for e in events.Scalars("epoch/test_top1")] == pytest.approx([m["test_top1"] for m in metrics])
    assert len(events.Scalars("train/running_loss")) == 2 and events.Scalars("train/lr")[0].step == 20
    histograms = [t for t in events.Tags()["histograms"] if t.startswith("dt/block")]
    assert len(histograms) == 3  # one per residual block of ResNet-8
    first = events.Histograms("dt/block00")[-1].histogram_value
    assert first.num == 16 and first.min > 0  # the 16 channels' steps


def test_tensorboard_asked_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    code = main(["train", *QUICK, "--train-subset", "64", "--epochs", "1", "--set", "train.log=tensorboard",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'tscnet[tensorboard]'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
