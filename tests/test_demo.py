"""The main job, end to end on real Fashion-MNIST (tiny settings), and the command line itself."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tscnet.cli import main
from tscnet.commands.demo import CONTRASTS, CONVERGED_FINDINGS as STUDY_FINDINGS

pytestmark = pytest.mark.slow  # the demo trains three runs; the entry point starts processes


def test_demo_trains_its_policies_and_writes_table_and_curves(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "1", "--train-subset", "512",
                 "--test-subset", "500", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "none" in printed and "tsc" in printed and "depth:0.5" in printed
    for run in ("cifar_resnet8-none", "cifar_resnet8-tsc", "cifar_resnet8-depth0.5"):
        assert (out / run / "model_card.json").exists()
    config = yaml.safe_load((out / "cifar_resnet8-none" / "config.yaml").read_text())
    assert (config["model"]["norm"], config["optim"]["lr"], config["sched"]["warmup_epochs"]) == ("none", 0.1, 0)
    assert CONTRASTS["stability"].findings in printed
    assert (out / "report.md").exists() and (out / "training_curves.png").stat().st_size > 10_000
    # the converged study's contrast, trained in this process; a second demo never writes over the first
    assert main(["demo", "--contrast", "converged", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "1",
                 "--train-subset", "256", "--test-subset", "256", "--no-progress", "--policies", "none", "--jobs", "1"]) == 0
    assert (tmp_path / "demo-2" / "cifar_resnet8-none" / "metrics.jsonl").exists()
    assert STUDY_FINDINGS in capsys.readouterr().out


def test_demo_counts_a_diverged_policy_as_a_result(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "2", "--train-subset", "256",
                 "--test-subset", "256", "--no-progress", "--policies", "none", "depth:0.5",
                 "--set", "optim.lr=1e8"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("training diverged: loss became") == 2
    assert "90.00 (diverged: seed 0 at step" in printed and (out / "report.md").exists()


def test_demo_names_a_policy_whose_training_process_fails_with_its_error_and_log(tmp_path, capsys):
    out = tmp_path / "demo"
    # A device each trainer refuses (no CUDA here, or not 100 GPUs); the demo itself only reads the data.
    assert main(["demo", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "1", "--no-progress",
                 "--policies", "none", "tsc", "--device", "cuda:99", "--jobs", "2"]) != 0
    captured = capsys.readouterr()
    failed = [line for line in captured.out.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("exit code 2: device 'cuda:99' asked for, but " in line for line in failed), failed
    assert any(str(out / "cifar_resnet8-tsc.log") in line for line in failed)
    assert captured.err.strip() == ("tscnet demo: error: training did not finish for cifar_resnet8-none, "
                                    "cifar_resnet8-tsc (see above)")


def test_the_demo_quotes_the_committed_converged_study():
    """Every number the demo prints about the full study is the committed report's, to 2 decimals."""
    summary = json.loads((Path(__file__).parents[1] / "benchmarks/results/converged/summary.json").read_text())
    text = STUDY_FINDINGS.replace("\n", " ")
    checked = 0
    for model, rest in re.findall(r"(cifar_resnet\d+), (.*?)(?=cifar_resnet\d+, |$)", text):
        rows = {row["policy"]: row for row in summary["models"][model]["rows"]}
        seeds = re.match(r"(\d+) seeds|seed (\d+) only", rest)
        if seeds.group(1):  # "<policy> mean ± std" over all of the model's seeds
            for policy, mean, std in re.findall(r"([\w:.=-]+) (\d+\.\d\d) ± (\d+\.\d\d)", rest):
                assert rows[policy]["n"] == int(seeds.group(1)), (model, policy)
                assert (mean, std) == (f"{rows[policy]['mean']:.2f}", f"{rows[policy]['std']:.2f}"), (model, policy)
                checked += 1
            for policy, diff, low, high in re.findall(r"([\w:.=-]+) - none: ([+-]\d+\.\d\d) pp "
                                                      r"\[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\]", rest):
                test = rows[policy]["vs_none"]
                assert [diff, low, high] == [f"{v:+.2f}" for v in (test["diff"], *test["ci95"])], (model, policy)
                checked += 1
            for policy, p in re.findall(r"([\w:.=-]+) Holm p = (\d\.\d\d)", rest):
                assert f"{rows[policy]['vs_none_p_holm']:.2f}" == p, (model, policy)
                checked += 1
            low, high = re.search(r"Every other policy ends within (\d+\.\d\d)-(\d+\.\d\d) %", rest).groups()
            others = [row["mean"] for policy, row in rows.items() if policy != "depth:1"]
            assert (low, high) == (f"{min(others):.2f}", f"{max(others):.2f}")
            for policy, t in re.findall(r"([\w:.=-]+) (?:has )?T = (\d+)", rest):
                assert f"{rows[policy]['T_mean']:.0f}" == t, (model, policy)
                checked += 1
        else:  # "<policy> error" of one seed
            seed = int(seeds.group(2))
            for policy, error in re.findall(r"([\w:.=-]+) (\d+\.\d\d)", rest):
                row = rows[policy]
                assert error == f"{row['test_errors'][row['seeds'].index(seed)]:.2f}", (model, policy)
                checked += 1
    assert checked >= 5


def test_the_stability_demo_quotes_the_committed_stability_study():
    """Every "lr V, N seeds: policy mean [± std]" the default demo prints is the committed report's
    (its norm-free study's; lines that start with "BN", the BN regime's)."""
    contrast = CONTRASTS["stability"]
    results = Path(__file__).parents[1] / "benchmarks/results"
    summaries = {study: json.loads((results / study / "summary.json").read_text())
                 for study in (contrast.study, "stability_bn")}
    checked = 0
    text = contrast.findings.replace("\n    ", " ")  # a line's continuation belongs to it
    for bn, model, value, n, rest in re.findall(r"(BN )?(cifar_resnet\d+ )?lr ([\d.]+), (\d+) seeds?: (.*)", text):
        summary = summaries["stability_bn" if bn else contrast.study]
        sweep = summary["models"][model.strip() or "cifar_resnet20"]["sweep"]  # unnamed: the demo's model
        for policy, mean, std in re.findall(r"([\w:.=-]+) (\d+\.\d\d)(?: ± (\d+\.\d\d))?", rest):
            point = next(p for p in sweep["arms"][policy]["points"] if p["value"] == float(value))
            assert point["n"] == int(n), (model, value, policy)
            quoted = None if point["std"] is None else f"{point['std']:.2f}"
            assert (mean, std or None) == (f"{point['mean']:.2f}", quoted), (model, value, policy)
            checked += 1
    assert checked >= 5
    sweep = summaries[contrast.study]["models"]["cifar_resnet20"]["sweep"]
    assert "optim.lr=0.1" in contrast.overrides and set(contrast.policies) <= set(sweep["arms"])


def test_demo_refuses_a_bad_policy_before_training(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--policies", "none", "tcs"]) == 2
    assert "tsc" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_console_entry_point_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "tscnet.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "train", "eval", "fold", "ode", "stability", "report"):
        assert command in result.stdout


def test_the_vit_demo_trains_a_deep_vit_with_the_study_recipe(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--contrast", "vit", "--out", str(out), "--epochs", "1", "--train-subset", "128",
                 "--test-subset", "256", "--no-progress", "--policies", "none", "layerscale:1e-6", "--jobs", "1"]) == 0
    config = yaml.safe_load((out / "mini_vit_d24-layerscale1e-6" / "config.yaml").read_text())
    assert (config["model"]["name"], config["optim"]["name"], config["optim"]["lr"]) == ("mini_vit_d24", "adamw", 0.004)
    assert config["sched"]["warmup_epochs"] == 0 and config["model"]["steps"] == "layerscale:1e-6"
    assert CONTRASTS["vit"].findings in capsys.readouterr().out


def test_the_vit_demo_quotes_the_committed_vit_study():
    """Every number the ViT demo prints about the full study is the committed report's, to 2 decimals:
    errors at one lr, each arm's best lr and its error, and the best lr at the shallowest and deepest model."""
    contrast = CONTRASTS["vit"]
    summary = json.loads((Path(__file__).parents[1] / "benchmarks/results" / contrast.study / "summary.json").read_text())
    text = contrast.findings.replace("\n    ", " ")
    quoted = r"([\w:.=-]+) (\d+\.\d\d)(?: ± (\d+\.\d\d))?"

    def same(point, mean, std):
        return (mean, std or None) == (f"{point['mean']:.2f}", None if point["std"] is None else f"{point['std']:.2f}")

    checked = 0
    for model, value, n, rest in re.findall(r"(mini_vit_d\d+) lr ([\d.]+), (\d+) seeds?: (.*)", text):
        arms = summary["models"][model]["sweep"]["arms"]
        for policy, mean, std in re.findall(quoted, rest):
            point = next(p for p in arms[policy]["points"] if p["value"] == float(value))
            assert point["n"] == int(n) and same(point, mean, std), (model, value, policy)
            checked += 1
    for model, rest in re.findall(r"(mini_vit_d\d+), each arm at its own best lr: (.*)", text):
        arms = summary["models"][model]["sweep"]["arms"]
        for policy, mean, std, value in re.findall(quoted + r" at (\d+\.\d+)", rest):
            assert arms[policy]["best_value"] == float(value) and same(arms[policy]["best"], mean, std), policy
            checked += 1
    transfer = summary["transfer"]["arms"]
    for policy, shallow, deep in re.findall(r"([\w:.=-]+) (\d+\.\d+) -> (\d+\.\d+)", text):
        assert transfer[policy]["best_values"][0] == float(shallow) and transfer[policy]["best_values"][-1] == float(deep)
        checked += 1
    assert checked >= 12
    assert contrast.model in summary["models"] and "optim.lr=0.004" in contrast.overrides
