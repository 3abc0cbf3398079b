"""Refactors keep training bit-identical: a short run of every policy, trained by this checkout and by
a baseline commit (its ``src/`` taken from git history), ends with the same weights and the same
metrics, bit for bit. Both run here, on one machine: runs are bit-exact on one machine, not across
CPU types, so no numbers are stored. Move ``BASELINE`` forward only to a commit known to train alike."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: The code before the trainer became a class (tscnet.train.engine) and the study an object.
BASELINE = "06b14d8"
POLICIES = ["none", "fixed:0.5", "depth:0.5", "scalar:0", "channel", "layerscale", "mlp", "tsc",
            "tsc:summary=l2_sn", "tsc:feedback=explicit", "tsc:dt_init=depth:0.5"]
# 192 images at batch 32: 6 steps of one epoch, then its evaluation; AdamW for the timm-rule groups.
SCRIPT = """
import sys
from tscnet.train import fit, load_config
out, policies = sys.argv[1], sys.argv[2:]
for i, policy in enumerate(policies):
    config = load_config("fashion_mnist_nowarmup", ["model.name=cifar_resnet8", f"model.steps={policy}",
        "data.train_subset=192", "data.test_subset=64", "data.batch_size=32", "train.epochs=1",
        "train.progress=false", "train.eval_epochs=null", "train.loss_steps=[3,6]"])
    fit(config, f"{out}/{i}")
"""
TIMING = ("epoch_time", "images_per_s")


def _baseline_src(tmp: Path) -> Path:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "src"], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the baseline commit {BASELINE} is not in this checkout's history (a shallow clone?)")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "src"


def _train(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), *POLICIES], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # two processes train 11 tiny runs each: about a minute on one core
def test_every_policy_trains_bit_identically_to_the_baseline(tmp_path):
    _train(_baseline_src(tmp_path / "baseline"), tmp_path / "before")
    _train(ROOT / "src", tmp_path / "after")
    for i, policy in enumerate(POLICIES):
        before, after = (torch.load(tmp_path / side / str(i) / "checkpoint.pt", weights_only=True)
                         for side in ("before", "after"))
        assert before["model"].keys() == after["model"].keys(), policy
        for key, value in before["model"].items():
            assert torch.equal(value, after["model"][key]), f"{policy}: {key}"
        rows = [[{k: v for k, v in json.loads(line).items() if k not in TIMING}
                 for line in (tmp_path / side / str(i) / "metrics.jsonl").read_text().splitlines()]
                for side in ("before", "after")]
        assert rows[0] == rows[1], policy
