"""Every script in examples/ runs as a user runs it (a subprocess, from another folder), on tiny data,
and prints or writes what its README paragraph says it does."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import sample_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _run(command: list[str], cwd: Path, timeout: int = 600) -> str:
    """Run ``command`` in ``cwd`` with one thread; its stdout, or the test fails showing stderr."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_example_has_a_paragraph_in_the_readme():
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.iterdir():
        if path.suffix in (".py", ".yaml"):
            assert f"`{path.name}`" in readme, path.name


@pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_timm_own_loop(tmp_path):  # not slow: ~7 s of CPU (6 steps of 32 images, 128 test images)
    out = tmp_path / "r18.safetensors"
    printed = _run([sys.executable, str(EXAMPLES / "timm_own_loop.py"), "--train-subset", "256", "--test-subset", "128",
                    "--steps", "6", "--batch-size", "32", "--log-every", "2", "--out", str(out)], tmp_path)
    logged = re.findall(r"^step +(\d+) +loss [\d.]+ +T = ([\d.]+) +mean Δt: (.*)$", printed, re.M)
    assert [int(step) for step, _, _ in logged] == [2, 4, 6]
    for _, total, steps in logged:  # ResNet-18: 8 blocks, T the sum of their mean steps
        assert len(steps.split()) == 8 and float(total) == pytest.approx(sum(map(float, steps.split())), abs=0.01)
    assert re.search(r"^test error [\d.]+ % on 128 images$", printed, re.M)
    assert "a stock timm resnet18 loads it (strict=True) and gives the stepped model's outputs" in printed
    import timm

    with safe_open(str(out), "pt") as folded:  # the vanilla keys, no step policy
        assert set(folded.keys()) == set(timm.create_model("resnet18", num_classes=10, in_chans=1).state_dict())


def test_detector_backbone(tmp_path):  # not slow: ~11 s of CPU (two Faster R-CNNs built, 2 steps at 96 px)
    sample_dir()  # skips without foolbox, whose ImageNet photos the example takes by default
    printed = _run([sys.executable, str(EXAMPLES / "detector_backbone.py"), "--steps", "2", "--size", "96"], tmp_path)
    assert "steps in backbone.body.layer1.0.bn3.step_policy; T = 16.000 over 16 blocks" in printed
    assert re.search(r"^step +2 +loss [\d.]+ +T = [\d.]+$", printed, re.M)
    assert re.search(r"loads it \(strict=True\) and gives the same \d+ and \d+ detections on the held-out photos",
                     printed)


@pytest.mark.slow  # ~20 s of CPU, 30-50 s beside other work: three processes (the study, two cells) import torch
def test_study_on_image_folder(tmp_path):
    sample_dir()  # skips without foolbox, whose 20 ImageNet photos the example takes by default
    printed = _run([sys.executable, str(EXAMPLES / "make_image_folder.py"), "--out", str(tmp_path / "photos")], tmp_path)
    assert "16 photos x 3 classes in train/, 4 x 3 in val/ (colour, grey, negative)" in printed
    for split, count in (("train", 16), ("val", 4)):
        for label in ("colour", "grey", "negative"):
            assert len(list((tmp_path / "photos" / split / label).glob("*.png"))) == count
    results = tmp_path / "results"
    _run([sys.executable, "-m", "tscnet.cli", "study", str(EXAMPLES / "study_on_image_folder.yaml"),
          "--set", f"data.data_dir={tmp_path / 'photos'}", "--set", "train.epochs=1",
          "--results", str(results), "--runs", str(tmp_path / "runs")], tmp_path)
    report = (results / "report.md").read_text()
    assert "| `none` | 1 (0) |" in report and "| `tsc` | 1 (0) |" in report
    summary = json.loads((results / "summary.json").read_text())
    assert summary["recipe"][0]["data"]["name"] == "imagefolder"
    for policy in ("none", "tsc"):
        config = (results / "cifar_resnet20" / policy / "seed0" / "config.yaml").read_text()
        assert "num_classes: 3" in config  # from the folder
