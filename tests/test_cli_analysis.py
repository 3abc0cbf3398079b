"""The analysis commands end to end: ``tscnet ode``, ``tscnet stability``, ``tscnet report``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tscnet.analysis.report import REPORT_FILES
from tscnet.analysis.stability import STABILITY_FILES
from tscnet.cli import main


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # trains runs, draws figures


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 300


def test_ode_writes_figure_and_table_and_h05_oscillates(tmp_path, capsys):
    assert main(["ode", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "h=0.5" in out and "oscillates without decay" in out
    assert_png(tmp_path / "ode.png")
    saved = json.loads((tmp_path / "ode.json").read_text())
    by_setting = {t["setting"]: t for t in saved["trajectories"]}
    y = torch.tensor(by_setting["h=0.5"]["y"])
    assert torch.equal(y.abs(), torch.ones(6)) and by_setting["h=0.5"]["sign_changes"] == 5
    assert by_setting["h=0.05"]["sign_changes"] == 0 and by_setting["h=0.4"]["sign_changes"] == 6
    rows = {r["setting"]: r for r in saved["table"]}
    assert rows["h=0.5"]["error"] == pytest.approx(1.0, abs=1e-4) and rows["tol=0.0001"]["steps"] < 50


def test_ode_options_reach_the_solvers_and_replace_an_earlier_figure_only_when_asked(tmp_path, capsys):
    assert main(["ode", "--out", str(tmp_path)]) == 0
    earlier = (tmp_path / "ode.json").read_bytes()
    options = ["ode", "--out", str(tmp_path), "--h", "0.1", "--tol", "1e-6", "--safety", "0.8", "--order", "4"]
    assert main(options) == 2
    assert "already holds ode.png, ode.json" in capsys.readouterr().err
    assert (tmp_path / "ode.json").read_bytes() == earlier
    assert main([*options, "--overwrite"]) == 0
    saved = json.loads((tmp_path / "ode.json").read_text())
    assert [t["setting"] for t in saved["trajectories"]] == ["h=0.1", "tol=1e-06"]
    assert saved["rkf45"] == {"tol": 1e-6, "safety": 0.8, "order": 4}


def test_ode_rejects_bad_steps(tmp_path, capsys):
    assert main(["ode", "--out", str(tmp_path), "--h", "-0.1"]) == 2
    err = capsys.readouterr().err
    assert "--h must be positive" in err and "-0.1" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two real runs trained by ``tscnet train``: vanilla and TSC ResNet-8 on Fashion-MNIST."""
    root = tmp_path_factory.mktemp("cli_runs")
    made = []
    for steps in ("none", "tsc"):
        out = root / f"resnet8-{steps}"
        assert main(["train", "--data", "fashion-mnist", "--train-subset", "128", "--test-subset", "128",
                     "--epochs", "1", "--model", "cifar_resnet8", "--steps", steps, "--device", "cpu",
                     "--no-progress", "--out", str(out)]) == 0
        made.append(out)
    return made


def test_stability_then_report_on_real_runs(runs, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["stability", *map(str, runs), "--out", str(out), "--images", "3", "--directions", "2",
                 "--power-iters", "5", "--norm", "fft"]) == 0
    printed = capsys.readouterr().out
    assert "| resnet8-none |" in printed and "| resnet8-tsc |" in printed
    for name in ("stability.png", "gradient_flow.png"):
        assert_png(out / name)
    rows = json.loads((out / "stability.json").read_text())["runs"]
    assert [r["policy"] for r in rows] == ["none", "tsc"]
    for r in rows:
        assert r["random_mean"] <= r["worst"] <= r["bound"] and r["images"] == 3 and r["depth"] == 8
        assert r["evolution_time"] == pytest.approx(3.0, abs=0.1) and r["test_error"] is not None
    assert "| resnet8-tsc |" in (out / "stability.md").read_text()

    assert main(["report", *map(str, runs), "--out", str(out)]) == 0  # picks up OUT/stability.json
    report = (out / "report.md").read_text()
    assert "## Stability" in report and "| cifar_resnet8 | tsc | yes | 1 (0) |" in report
    assert json.loads((out / "summary.json").read_text())["data"] == "fashion-mnist"
    for name in ("training_curves.png", "evolution_time.png", "dt_heatmap.png", "dt_evolution.png", "stability.png"):
        assert_png(out / name)
    # the names --overwrite guards are the files the two commands write (report redraws stability.png)
    assert {p.name for p in out.iterdir()} == {*REPORT_FILES, *STABILITY_FILES, "stability.png"}


def test_stability_of_runs_whose_checkpoint_was_deleted(runs, tmp_path, capsys):
    """model.safetensors + steps.json rebuild the stepped model: the same numbers as from checkpoint.pt."""
    stepped = tmp_path / "runs" / "resnet8-tsc-half"  # Δt ≈ 0.5, far from 1: dividing it out matters
    assert main(["train", "--data", "fashion-mnist", "--train-subset", "128", "--test-subset", "128", "--epochs", "1",
                 "--model", "cifar_resnet8", "--steps", "tsc:dt_init=0.5", "--no-progress", "--out", str(stepped)]) == 0
    runs = [*runs, stepped]
    copies = []
    for run in runs:
        shutil.copytree(run, tmp_path / run.name)
        (tmp_path / run.name / "checkpoint.pt").unlink()
        copies.append(tmp_path / run.name)
    options = ["--images", "3", "--directions", "2", "--power-iters", "5", "--norm", "fft", "--no-gradient-flow"]
    assert main(["stability", *map(str, runs), "--out", str(tmp_path / "a"), *options]) == 0
    assert main(["stability", *map(str, copies), "--out", str(tmp_path / "b"), *options]) == 0
    printed = capsys.readouterr().out
    assert "note: resnet8-tsc has no checkpoint.pt; its stepped model was rebuilt from model.safetensors + steps.json" \
        in printed
    a, b = (json.loads((tmp_path / d / "stability.json").read_text())["runs"] for d in "ab")
    assert [r["weights"] for r in a] == ["checkpoint.pt"] * 3
    assert [r["weights"] for r in b] == ["model.safetensors + steps.json"] * 3
    assert b[2]["evolution_time"] == pytest.approx(1.5, abs=0.1)
    for x, y in zip(a, b):
        assert (x["policy"], x["evolution_time"]) == (y["policy"], pytest.approx(y["evolution_time"], rel=1e-6))
        for key in ("random_mean", "worst", "bound"):
            assert x[key] == pytest.approx(y[key], rel=1e-3), key
        for bx, by in zip(x["per_block"], y["per_block"]):  # F itself (not only Δt ⊙ F) comes back
            assert bx.keys() == by.keys()
            for key in bx:
                if isinstance(bx[key], str):
                    assert bx[key] == by[key], key
                    continue
                assert torch.allclose(torch.tensor(bx[key], dtype=torch.float64),
                                      torch.tensor(by[key], dtype=torch.float64), rtol=1e-3), key


@pytest.mark.parametrize("command", ["report", "stability"])
def test_commands_refuse_mixed_datasets(runs, tmp_path, capsys, command):
    other = tmp_path / "cifar-run"
    shutil.copytree(runs[0], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["name"] = "cifar10"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert main([command, str(runs[1]), str(other), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different datasets" in err and "cifar10" in err


def test_report_needs_run_folders(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a tscnet run folder" in capsys.readouterr().err
