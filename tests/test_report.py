"""``build_runs_report`` on real tiny runs: figures, summary table (final epoch, mean ± std), refusals."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tscnet.analysis.report import _series, build_runs_report
from tscnet.analysis.runs import group_runs, load_runs
from tscnet.analysis.stability import stability_study
from tscnet.errors import UserError
from tscnet.train import fit, load_config


def make_run(root: Path, model: str, steps: str, seed: int, epochs: int = 2) -> Path:
    """A real run folder: ``model`` with ``steps`` trained briefly on Fashion-MNIST by the engine."""
    out = root / f"{model}-{steps.replace(':', '')}-seed{seed}"
    config = load_config(None, [f"model.name={model}", f"model.steps={steps}", f"train.seed={seed}",
                                f"train.epochs={epochs}", "data.name=fashion-mnist", "data.train_subset=192",
                                "data.test_subset=128", "data.batch_size=64", "train.device=cpu",
                                "train.progress=false"])
    fit(config, out)
    return out


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # trains runs, draws figures


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root, "cifar_resnet8", "tsc", 0), make_run(root, "cifar_resnet8", "tsc", 1),
            make_run(root, "cifar_resnet8", "none", 0)]


def test_a_diverged_run_counts_at_chance_and_is_named(runs, tmp_path):
    """A seed that diverged joins its group at chance error (a result, not a crash of the report), and
    a group whose only seed diverged before any finished epoch still gets its row."""
    diverged = []
    for steps, seed in (("tsc", 2), ("fixed:0.5", 0)):
        out = tmp_path / f"cifar_resnet8-{steps}-seed{seed}-diverged"
        config = load_config(None, ["model.name=cifar_resnet8", f"model.steps={steps}", f"train.seed={seed}",
                                    "model.norm=none", "optim.lr=1e8", "train.epochs=2", "data.train_subset=192",
                                    "data.test_subset=128", "data.batch_size=64", "train.progress=false"])
        with pytest.raises(UserError, match="training diverged"):
            fit(config, out)
        if steps == "tsc":  # a seed of the tsc group's own recipe (lr 1e8 without BN is how it diverged here)
            recipe = yaml.safe_load((runs[0] / "config.yaml").read_text())
            recipe["train"]["seed"] = seed
            (out / "config.yaml").write_text(yaml.safe_dump(recipe))
        diverged.append(out)
    report = build_runs_report([*runs, *diverged], tmp_path / "report")
    rows = {row["policy"]: row for row in report.summary}
    tsc = rows["tsc"]
    assert tsc["seeds"] == [0, 1, 2] and tsc["test_errors"][2] == 90.0 and list(tsc["diverged"]) == ["2"]
    assert tsc["test_errors"][:2] == [final_errors(r)[-1] for r in runs[:2]]
    gone = rows["fixed:0.5"]
    assert gone["test_errors"] == [90.0] and gone["evolution_time_mean"] is None and gone["epochs"] == [0]
    text = report.path.read_text()
    assert "diverged: seed 2 at step" in text and "diverged: seed 0 at step" in text
    assert_png(report.files["training_curves"])
    for row in report.summary:  # the tiny fixture runs may themselves end near chance
        assert row["at_chance"] == [seed for seed, e in zip(row["seeds"], row["test_errors"])
                                    if e >= 0.95 * 90.0 and str(seed) not in row["diverged"]]
    # finite losses but a final error at chance level (≥ 0.95 × 90 %): named as such, not as diverged
    stuck = tmp_path / "stuck"
    shutil.copytree(runs[2], stuck)
    rows = [json.loads(line) for line in (stuck / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["test_error"] = 88.0
    (stuck / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = build_runs_report([stuck], tmp_path / "report-stuck").summary[0]
    assert row["at_chance"] == [0] and row["diverged"] == {} and row["test_errors"] == [88.0]
    assert "(did not learn, at chance level: seed 0)" in (tmp_path / "report-stuck" / "report.md").read_text()


def final_errors(run: Path) -> list[float]:
    return [json.loads(line)["test_error"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 400


def test_report_writes_figures_table_and_summary(runs, tmp_path):
    study = stability_study(runs[:1], tmp_path, images=3, directions=1, method="fft", gradient_flow_plot=False,
                            power_iters=5)
    row = study.rows[0]
    assert row["worst"] <= row["bound"] and row["data"] == "fashion-mnist" and row["depth"] == 8
    report = build_runs_report(runs, tmp_path)  # finds tmp_path/stability.json by itself
    assert set(report.files) == {"training_curves", "evolution_time", "dt_heatmap", "dt_evolution", "stability"}
    text = report.path.read_text()
    for path in report.files.values():
        assert_png(path)
        assert f"]({path.name})" in text  # every figure is linked from the report
    assert "## Stability" in text and row["run"] in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"] == "fashion-mnist" and len(summary["runs"]) == 3
    tsc, none = summary["groups"]
    assert (tsc["policy"], tsc["seeds"], tsc["controller"]) == ("tsc", [0, 1], True)
    assert (none["policy"], none["n_seeds"], none["controller"], none["test_error_std"]) == ("none", 1, False, None)
    finals = [final_errors(r)[-1] for r in runs[:2]]
    assert tsc["test_error_mean"] == pytest.approx(statistics.fmean(finals))
    assert tsc["test_error_std"] == pytest.approx(statistics.stdev(finals))
    assert none["evolution_time_mean"] == pytest.approx(3.0)  # 3 blocks, Δt ≡ 1
    line = next(line for line in text.splitlines() if line.startswith("| cifar_resnet8 | tsc"))
    assert f"{statistics.fmean(finals):.2f} ± {statistics.stdev(finals):.2f}" in line and "2 (0, 1)" in line


def test_summary_uses_the_final_epoch_never_the_best(runs, tmp_path):
    run = tmp_path / "edited"
    shutil.copytree(runs[2], run)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines[0]["test_error"] = 0.5  # a far better earlier epoch must not be reported
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = build_runs_report([run], tmp_path / "out")
    assert report.summary[0]["test_error_mean"] == pytest.approx(lines[-1]["test_error"]) != 0.5
    assert "dt_heatmap" not in report.files  # a vanilla run has no learned steps to show


def test_runs_of_one_policy_with_different_recipes_are_groups_of_their_own(runs, tmp_path):
    """Seeds are averaged only over runs that differ in the seed (and in how they ran): a run of the
    same model and policy at another learning rate is its own group, both labelled with the key."""
    other = tmp_path / "other-lr"
    shutil.copytree(runs[0], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["optim"]["lr"], config["train"]["seed"], config["train"]["device"] = 0.5, 3, "cuda"  # device: how it ran
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    report = build_runs_report([*runs, other], tmp_path / "report")
    rows = {row["policy"]: row for row in report.summary}
    assert set(rows) == {"tsc (optim.lr=0.1)", "tsc (optim.lr=0.5)", "none"}
    assert rows["tsc (optim.lr=0.1)"]["seeds"] == [0, 1] and rows["tsc (optim.lr=0.5)"]["seeds"] == [3]
    assert rows["tsc (optim.lr=0.5)"]["controller"] and not rows["none"]["controller"]  # the policy's facts
    assert "| cifar_resnet8 | tsc (optim.lr=0.5) | yes | 1 (3) |" in report.path.read_text()
    # the figures draw a controller's curves solid whatever the group's label
    styles = {s.label: s.dashed for s in _series(group_runs(load_runs([*runs, other], with_model=False)), "test_error")}
    assert styles == {"cifar_resnet8 / tsc (optim.lr=0.1)": False, "cifar_resnet8 / tsc (optim.lr=0.5)": False,
                      "cifar_resnet8 / none": True}


def test_report_refuses_runs_of_different_datasets(runs, tmp_path):
    other = tmp_path / "other-data"
    shutil.copytree(runs[0], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["name"] = "cifar10"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="different datasets.*fashion-mnist.*cifar10"):
        build_runs_report([runs[0], other], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_stability_file_of_another_dataset(runs, tmp_path):
    (tmp_path / "wrong.json").write_text(json.dumps({"data": "cifar10", "images": 3, "runs": []}))
    with pytest.raises(UserError, match="cifar10"):
        build_runs_report(runs, tmp_path / "out", stability=tmp_path / "wrong.json")
    with pytest.raises(UserError, match="does not exist"):
        build_runs_report(runs, tmp_path / "out", stability=tmp_path / "missing.json")
    assert not (tmp_path / "out").exists()


def test_report_works_without_checkpoints_and_reads_the_saved_profiles(runs, tmp_path):
    copies = []
    for run in runs:
        copy = tmp_path / "runs" / run.name
        shutil.copytree(run, copy)
        (copy / "checkpoint.pt").unlink()  # deleted for disk space
        copies.append(copy)
    with_ckpt = build_runs_report(runs, tmp_path / "a")
    without = build_runs_report(copies, tmp_path / "b")
    assert [g["test_errors"] for g in with_ckpt.summary] == [g["test_errors"] for g in without.summary]
    assert "dt_heatmap" in without.files
