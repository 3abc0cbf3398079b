"""``tscnet eval``'s folded == unfolded check: its tolerance follows the precision the comparison runs in."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import tscnet
from tscnet.cli import main
from tscnet.commands.eval import FP32_TOLERANCE, TF32_TOLERANCE, fold_tolerance
from tscnet.train import load_config

from stepping_utils import randomize_bn, randomize_steps, rel_err

pytestmark = pytest.mark.slow  # trains a run, starts processes


def test_fold_tolerance_by_device_and_tf32_flags():
    for conv, matmul in [(True, True), (False, False)]:
        assert fold_tolerance("cpu", conv, matmul) == (FP32_TOLERANCE, "fp32 on cpu")
    assert fold_tolerance("cuda", conv_tf32=False, matmul_tf32=False) == (FP32_TOLERANCE, "fp32 on cuda (TF32 off)")
    tol, reason = fold_tolerance("cuda:1", conv_tf32=True, matmul_tf32=False)
    assert tol == TF32_TOLERANCE and "TF32 convolutions" in reason and "matmul" not in reason
    tol, reason = fold_tolerance(torch.device("cuda"), conv_tf32=False, matmul_tf32=True)
    assert tol == TF32_TOLERANCE and "TF32 matmuls" in reason
    assert FP32_TOLERANCE < TF32_TOLERANCE


_FLAGS = """
import torch
from tscnet.commands.eval import cuda_tf32_flags, fold_tolerance
b = torch.backends
out = [cuda_tf32_flags(), fold_tolerance("cuda")[0]]          # torch's defaults: cuDNN TF32 on, matmul off
b.cudnn.conv.fp32_precision = "ieee"
out += [cuda_tf32_flags(), fold_tolerance("cuda")[0]]
torch.set_float32_matmul_precision("high")                      # TF32 matmuls
out += [cuda_tf32_flags()]
print(out)
"""


def test_tf32_flags_follow_torch_settings():
    # A fresh process: these settings are global, and mixing torch's old and new TF32 APIs makes
    # later reads of the old flags raise.
    result = subprocess.run([sys.executable, "-c", _FLAGS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str([(True, False), TF32_TOLERANCE, (False, False), FP32_TOLERANCE, (False, True)])


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32 (10 explicit mantissa bits, nearest, ties away: cvt.rna.tf32.f32)."""
    i = t.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32).view_as(t)


class TF32Convolutions(TorchFunctionMode):
    """Emulates cuDNN's default TF32 convolutions on CPU: both operands rounded, fp32 accumulation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d or func is torch.conv2d:
            args = (_tf32(args[0]), _tf32(args[1]), *args[2:])
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def se_checkpoint(tmp_path_factory):
    """A timm SE-ResNet-18 with random steps and BN statistics, as a checkpoint for Fashion-MNIST."""
    torch.manual_seed(0)
    model = tscnet.create_model("seresnet18", num_classes=10, in_chans=1, steps="channel")
    randomize_bn(model)
    randomize_steps(model)
    config = load_config(None, ["model.name=seresnet18", "model.steps=channel", "model.num_classes=10",
                                "model.in_chans=1", "data.test_subset=64"])
    path = tmp_path_factory.mktemp("se") / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "config": config, "model_name": "seresnet18", "steps": "channel"}, path)
    return path, model.eval()


def test_tf32_level_fold_difference_fails_fp32_tolerance_and_passes_tf32(se_checkpoint, capsys, one_thread):
    path, model = se_checkpoint
    assert main(["eval", str(path), "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["fold_rel_diff"] < 1e-5 and exact["fold_ok"]
    assert exact["fold_tolerance"] == FP32_TOLERANCE and exact["fold_precision"] == "fp32 on cpu"

    with TF32Convolutions():  # the same command, every convolution at TF32 precision
        code = main(["eval", str(path), "--json"])
    captured = capsys.readouterr()
    tf32 = json.loads(captured.out)
    # SE gates see dt-scaled inputs in one model and not the other: they round differently.
    assert 1e-4 < tf32["fold_rel_diff"] < 1e-3
    assert code == 1 and not tf32["fold_ok"]  # a CPU fp32 tolerance rejects TF32 noise ...
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "tolerance" in err and "fp32 on cpu" in err
    tolerance, reason = fold_tolerance("cuda", conv_tf32=True, matmul_tf32=False)
    assert tf32["fold_rel_diff"] < tolerance  # ... which the tolerance eval uses under TF32 accepts
    assert tf32["test_top1"] == pytest.approx(exact["test_top1"], abs=100 / 64)  # at most one image apart

    # A fold that lost the steps is far outside the TF32 tolerance: the check still means something.
    vanilla = tscnet.create_model("seresnet18", num_classes=10, in_chans=1, steps="none")
    assert vanilla.load_state_dict(model.state_dict(), strict=False).missing_keys == []  # all but the steps
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert rel_err(vanilla.eval()(x), model(x)) > 10 * TF32_TOLERANCE


def test_eval_text_output_names_the_tolerance(se_checkpoint, capsys, one_thread):
    assert main(["eval", str(se_checkpoint[0])]) == 0
    out = capsys.readouterr().out
    assert "fold check ok" in out and "tolerance 1e-04 (fp32 on cpu)" in out
