"""The launch counter (tscnet.analysis.opcount) and the --ops-only mode of benchmarks/overhead.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import tscnet
from tscnet.analysis import opcount

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_top_level_ops_skip_what_an_aten_op_calls(one_thread):
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.linear(x, w)  # aten::linear calls aten::t and aten::mm/matmul inside: one op
        x.sum()
    assert opcount.top_level_aten_ops(prof.events()) == {"aten::linear": 1, "aten::sum": 1}


@pytest.mark.slow
def test_train_step_count_is_stable_and_independent_of_batch(one_thread):
    torch.manual_seed(0)
    model = tscnet.create_model("cifar_resnet20", num_classes=10)
    counts = []
    for n in (2, 2, 5):
        x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
        counts.append(opcount.count_train_step(model, x, y)["ops"])
    assert counts[0] == counts[1] == counts[2] > 0
    # forward and backward both counted: a convolution_backward per conv
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    by_name = opcount.count_train_step(model, x, y)["ops_by_name"]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert by_name["aten::conv2d"] == by_name["aten::convolution_backward"] == convs
    assert all(p.grad is None for p in model.parameters())  # gradients freed afterwards


def test_unparsable_policies_are_skipped_with_a_note():
    policies, notes = opcount.usable_policies(["fixed:0.5", "no_such_policy", "none"])
    assert policies == ["none", "fixed:0.5"]
    assert len(notes) == 1 and "no_such_policy" in notes[0]
    policies, _ = opcount.usable_policies(["tsc"])
    assert policies[0] == "none"  # the base of every ratio is always measured


@pytest.mark.slow
def test_ops_only_table(tmp_path):
    """The benchmark script as a user runs it: only the installed package on its path."""
    out = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "opcount.py"), "--models", "cifar_resnet20", "--policies",
                           "none", "fixed:0.5", "bogus:1", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["none", "fixed:0.5"]
    assert rows[0]["ops_ratio"] == 1.0 and rows[1]["ops"] > rows[0]["ops"]
    assert "| none | " in done.stdout and "skipped policy 'bogus:1'" in done.stdout


def test_device_events_sorted_into_kernels_memcpy_memset():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(name, kind, device=DeviceType.CUDA):
        return SimpleNamespace(name=name, activity_type=kind, device_type=device)

    events = [ev("void cutlass_kernel<...>", "kernel"), ev("triton_poi_fused_add_0", "kernel"),
              ev("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy"), ev("Memset (Device)", "gpu_memset"),
              ev("cudaStreamSynchronize", "cuda_sync"), ev("aten::add", "cpu_op", DeviceType.CPU),
              ev("cudaLaunchKernel", "cuda_runtime", DeviceType.CPU), ev("Memcpy DtoD", None)]
    assert opcount.device_launches(events) == {"kernel": 2, "memcpy": 2, "memset": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernel counts need a GPU")
def test_cuda_kernels_counted():
    model = tscnet.create_model("cifar_resnet20", num_classes=10).cuda()
    x, y = torch.randn(2, 3, 32, 32, device="cuda"), torch.randint(0, 10, (2,), device="cuda")
    counts = opcount.count_train_step(model, x, y)
    assert counts["kernels"] >= counts["ops_by_name"]["aten::conv2d"] > 0
