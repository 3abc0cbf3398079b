"""Engine code paths that otherwise first run on a GPU: channels_last, bf16/fp16 autocast with a
GradScaler, torch.compile in the training loop. Tiny real Fashion-MNIST runs on CPU."""
import pytest
import torch
from torch import nn

from tscnet.cli import main
from tscnet.errors import UserError
from tscnet.train import read_metrics
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
