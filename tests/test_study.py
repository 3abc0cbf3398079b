"""tscnet study: specs, plans, the scheduler end to end on tiny studies, divergence, resume, statistics, report."""
from __future__ import annotations

import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import stats

from tscnet.cli import main as cli
from tscnet.commands.study import parse_grid_filter
from tscnet.errors import UserError
from tscnet.study import holm, load_spec, paired, plan_cells, welch
from tscnet.study.plan import Layout, grid_tag
from tscnet.study.results import cell_config

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A script of benchmarks/ as a module, loaded from its file (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wrapper = _script("study")  # benchmarks/study.py: tscnet study plus --commit

TINY = ["data.train_subset=512", "data.test_subset=256", "data.batch_size=32", "train.epochs=2"]


def _spec(folder: Path, name: str, **keys) -> Path:
    spec = {"name": name, "recipe": "fashion_mnist_grid", "set": TINY, "models": ["cifar_resnet8"], **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _init_repo(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")


# ---------------------------------------------------------------------------------------------
# Specs and plans (no training)


@pytest.mark.parametrize("spec, key", [
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policy": ["none"]}, "policy: unknown key"),
    ({"recipe": "no_such_recipe", "models": ["cifar_resnet8"], "policies": ["none"]}, "recipe: config 'no_such_recipe'"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet9"], "policies": ["none"]}, "models[0]: unknown model"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none", "tscc"]},
     "policies[1]: unknown step policy 'tscc'"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none", "profile-of:tsc"]},
     "policies[1]: profile-of:tsc: its source arm 'tsc' is not among the policies"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none", {"name": "a b"}]},
     "policies[1].name: must be a folder-safe label"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none", "fixed:0.5"],
      "peers": ["none", "depth:1"]}, "peers[1]: 'depth:1' is not one of the policies"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none"], "seeds": [0, 0]},
     "seeds: repeats a seed"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none"], "grid": {"lr": [0.1]}},
     "grid.lr: must be a config key section.key"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none"],
      "per_model": {"cifar_resnet20": {"seeds": [0]}}}, "per_model.cifar_resnet20: 'cifar_resnet20' is not one of"),
    ({"recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none"],
      "grid": {"optim.lrr": [0.1]}}, "unknown config key 'optim.lrr'"),
])
def test_bad_specs_fail_in_one_line_naming_the_key(tmp_path, capsys, spec, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["study", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tscnet study: error: ") and key in err, err
    assert not (tmp_path / "r").exists()


def test_converged_plan_is_seed_major_with_ablation_sources_first():
    spec = load_spec("converged")
    cells = plan_cells(spec)
    assert len(cells) == 11 * 5 + 11 * 3
    assert [str(c) for c in cells[:2]] == ["cifar_resnet20 tsc seed0", "cifar_resnet20 none seed0"]
    assert [c.arm.name for c in cells[9:11]] == ["profile-of:tsc", "fixed-of:tsc"]
    assert cells[11].model == "cifar_resnet56" and cells[11].seed == 0
    assert {c.seed for c in cells if c.model == "cifar_resnet56"} == {0, 1, 2}
    tags = {c.arm.name: str(c.rel) for c in cells if c.seed == 0 and c.model == "cifar_resnet20"}
    assert tags["fixed:0.5"] == "cifar_resnet20/fixed0.5/seed0"
    assert tags["tsc:dt_init=0.5"] == "cifar_resnet20/tscdt_init0.5/seed0"
    assert tags["profile-of:tsc"] == "cifar_resnet20/profile-of-tsc/seed0"
    # The committed results are exactly these cells.
    committed = {str(p.parent.relative_to(ROOT / "benchmarks/results/converged"))
                 for p in (ROOT / "benchmarks/results/converged").glob("*/*/seed*/cell.json")}
    assert committed == {str(c.rel) for c in cells}


def test_a_null_grid_value_sets_the_key_to_null_not_the_recipes_value(tmp_path):
    """The recipe trains on 6000 images; a grid value ``null`` means every image (the key's null)."""
    spec = load_spec(_spec(tmp_path, "n", policies=["none"], seeds=[0], grid={"data.train_subset": [512, None]}))
    layout = Layout(tmp_path / "results", tmp_path / "runs", tmp_path)
    subsets = [cell_config(spec, cell, layout)["data"]["train_subset"] for cell in plan_cells(spec)]
    assert subsets == [512, None]


def test_grid_layout_per_model_grids_and_mapping_arms(tmp_path):
    spec = load_spec(_spec(tmp_path, "g", seeds=[0, 1], grid={"optim.lr": [0.01, 0.1]},
                           per_model={"cifar_resnet20": {"seeds": [2], "grid": {"optim.lr": [0.05]}}},
                           models=["cifar_resnet8", "cifar_resnet20"],
                           policies=["none", {"name": "zero-gamma", "steps": "none", "set": ["model.init=zero_last"]},
                                     "fixed:0.5"]))
    cells = plan_cells(spec)
    assert len(cells) == 2 * 2 * 3 + 1 * 3
    assert [str(c.rel) for c in cells[:4]] == ["cifar_resnet8/none/lr0.01/seed0", "cifar_resnet8/zero-gamma/lr0.01/seed0",
                                               "cifar_resnet8/fixed0.5/lr0.01/seed0", "cifar_resnet8/none/lr0.1/seed0"]
    assert [str(c) for c in cells if c.model == "cifar_resnet20"] == [
        "cifar_resnet20 none lr0.05 seed2", "cifar_resnet20 zero-gamma lr0.05 seed2", "cifar_resnet20 fixed:0.5 lr0.05 seed2"]
    assert grid_tag((("optim.lr", 0.1), ("optim.weight_decay", 0.0005))) == "lr0.1_weight_decay0.0005"
    # --grid: only some values, still seed-major; a value or key the study lacks is one line
    only = plan_cells(spec, grid={"optim.lr": [0.1, 0.05]})
    assert [str(c) for c in only] == ["cifar_resnet8 none lr0.1 seed0", "cifar_resnet8 zero-gamma lr0.1 seed0",
                                      "cifar_resnet8 fixed:0.5 lr0.1 seed0", "cifar_resnet8 none lr0.1 seed1",
                                      "cifar_resnet8 zero-gamma lr0.1 seed1", "cifar_resnet8 fixed:0.5 lr0.1 seed1",
                                      "cifar_resnet20 none lr0.05 seed2", "cifar_resnet20 zero-gamma lr0.05 seed2",
                                      "cifar_resnet20 fixed:0.5 lr0.05 seed2"]
    with pytest.raises(UserError, match=r"--grid: optim.lr=0.3 is not in the study's grid \(optim.lr: 0.01, 0.1, 0.05\)"):
        plan_cells(spec, grid={"optim.lr": [0.3]})
    with pytest.raises(UserError, match=r"--grid: 'optim.momentum' is not a grid key of the study \(optim.lr\)"):
        plan_cells(spec, grid={"optim.momentum": [0.9]})
    assert parse_grid_filter(["optim.lr=0.1,0.3", "optim.lr=1e-2"]) == {"optim.lr": [0.1, 0.3, 0.01]}
    for bad in ("optim.lr", "=0.1", "optim.lr="):
        with pytest.raises(UserError, match="--grid must be KEY=V1,V2"):
            parse_grid_filter([bad])


def test_statistics_against_scipy_and_a_textbook_holm():
    a, b = [9.1, 9.5, 9.3, 9.8], [9.9, 10.2, 9.7, 10.4]
    test = stats.ttest_ind(a, b, equal_var=False)
    got = welch(a, b)
    assert got["diff"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert got["ci95"] == pytest.approx(list(test.confidence_interval(0.95))) and got["p"] == pytest.approx(test.pvalue)
    pair = paired(dict(enumerate(a)), dict(enumerate(b)))
    rel = stats.ttest_rel(a, b)
    assert pair["ci95"] == pytest.approx(list(rel.confidence_interval(0.95))) and pair["seeds"] == [0, 1, 2, 3]
    assert welch([1.0], b) is None and paired({0: 1.0}, {0: 2.0}) is None
    # sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04); returned in input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.slow  # ~10-15 s each: the report's figures are drawn too
@pytest.mark.parametrize("study", ["converged", "stability_bn"])
def test_committed_report_regenerates_byte_for_byte(study, tmp_path):
    """A committed report and summary.json, rebuilt from the committed per-run results: ``converged``
    (groups, paired and Holm tests, ablations) and ``stability_bn`` (an lr sweep of 8 arms against
    the best of 5 peers: a report that picked the wrong peer, best value or seed would differ)."""
    results = tmp_path / study
    shutil.copytree(ROOT / "benchmarks/results" / study, results)
    for name in ("report.md", "summary.json"):
        (results / name).unlink()
    assert cli(["study", study, "--report-only", "--results", str(results)]) == 0
    for name in ("report.md", "summary.json"):
        assert (results / name).read_bytes() == (ROOT / "benchmarks/results" / study / name).read_bytes(), name


def test_committing_unchanged_results_is_a_quiet_success(tmp_path, capsys):
    repo, folder = tmp_path, tmp_path / "results" / "cell"
    _init_repo(repo)
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert wrapper.git_commit([folder], "s: first") is True
    assert wrapper.git_commit([folder], "s: nothing new") is True  # a report rebuilt from the same runs
    assert _git(repo, "log", "--format=%s").splitlines() == ["s: first"]
    assert "WARNING" not in capsys.readouterr().out
    (folder / "metrics.jsonl").write_text('{"epoch": 2}\n')
    assert wrapper.git_commit([folder], "s: second") is True
    assert _git(repo, "log", "--format=%s").splitlines() == ["s: second", "s: first"]
    assert wrapper.git_commit([tmp_path / "results" / "missing"], "s: nothing there") is False
    assert "WARNING: git commit" in capsys.readouterr().out


def test_commit_messages_name_a_results_folder_that_is_not_the_specs():
    assert wrapper.commit_label("stability_normfree", None) == "stability_normfree"
    assert wrapper.commit_label("stability_normfree", Path("benchmarks/results/stability_normfree")) == \
        "stability_normfree"
    assert wrapper.commit_label("stability_normfree", Path("benchmarks/results/fixup_b128")) == \
        "stability_normfree (fixup_b128)"


def test_converged_alias_lists_the_committed_cells(capsys):
    converged = _script("converged")  # benchmarks/converged.py: benchmarks/study.py converged

    assert converged.main(["--dry-run", "--models", "cifar_resnet56", "--seeds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 11 + 1 and all(line.split()[0] == "results" for line in lines[1:-1])
    assert lines[-1] == "11 results"


def test_a_model_without_finished_runs_is_estimated_by_flops_from_the_nearest_one():
    """A study whose ResNet-56 runs have finished once guessed its first ResNet-110 runs at ResNet-20's
    default speed (2 min for a 17-min run): a model without runs is scaled by forward FLOPs from the
    finished model nearest in FLOPs, or from the default guess for ResNet-20."""
    from tscnet.study.cost import CostModel

    config = {"model": {"name": "cifar_resnet56", "norm": "none"}, "data": {"name": "fashion-mnist", "train_subset": 2560},
              "train": {"epochs": 10}}
    cost = CostModel(speed={"cifar_resnet8": 2000.0, "cifar_resnet56": 60.0})
    r56, source = cost.seconds("cifar_resnet56", config)
    assert source == "finished runs of the model" and r56 == pytest.approx(2560 / 60.0 * 1.35 * 10)
    r110, source = cost.seconds("cifar_resnet110", config)
    assert source == "finished runs of cifar_resnet56, scaled by FLOPs"
    assert 1.95 < r110 / r56 < 2.05  # per stage, 17.5 full-cost 3×3 convs against 35.5 (a strided one costs half)
    nothing = CostModel()
    (r20, source20), (r56, source56) = nothing.seconds("cifar_resnet20", config), nothing.seconds("cifar_resnet56", config)
    assert source20 == source56 == "default guess, 300 img/s for cifar_resnet20 on fashion-mnist, scaled by FLOPs"
    assert r20 == pytest.approx(2560 / 300.0 * 1.35 * 10)
    assert 3.0 < r56 / r20 < 3.2  # 17.5 against 5.5
    # The default guess is for a 28×28 grey image: a 3×32×32 CIFAR image costs more.
    cifar = {**config, "data": {"name": "cifar10", "train_subset": 2560}}
    assert 1.2 < nothing.seconds("cifar_resnet20", cifar)[0] / r20 < 1.4  # (32/28)² = 1.31, the stem aside


# ---------------------------------------------------------------------------------------------
# Studies end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A real study (8 tiny runs, 2 at a time) whose results land, committed one by one, in a scratch repo."""
    base = tmp_path_factory.mktemp("study")
    repo = base / "repo"
    _init_repo(repo)
    (repo / "unrelated.txt").write_text("staged by someone else\n")
    _git(repo, "add", "unrelated.txt")
    spec = _spec(base, "tiny", seeds=[0, 1], policies=["none", "tsc", "profile-of:tsc", "fixed-of:tsc"])
    results, runs = repo / "results", base / "runs"
    code = wrapper.main([str(spec), "--results", str(results), "--runs", str(runs), "--workers", "2", "--commit"])
    return {"code": code, "repo": repo, "spec": spec, "results": results, "runs": runs}


@pytest.mark.slow
def test_study_runs_collects_and_commits_each_cell(study):
    assert study["code"] == 0
    results, repo = study["results"], study["repo"]
    for tag in ("none", "tsc", "profile-of-tsc", "fixed-of-tsc"):
        for seed in (0, 1):
            folder = results / "cifar_resnet8" / tag / f"seed{seed}"
            names = {p.name for p in folder.iterdir()}
            assert {"cell.json", "config.yaml", "metrics.jsonl", "steps.json", "model_card.json"} <= names
            assert names <= {"cell.json", "config.yaml", "metrics.jsonl", "steps.json", "model_card.json",
                             "platform.json", "diverged.json"}
            assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
            info = json.loads((folder / "cell.json").read_text())
            assert info["seed"] == seed and info["model"] == "cifar_resnet8" and "diverged" not in info
    assert not list(results.rglob("*.pt")) and not list(results.rglob("*.safetensors"))
    log = _git(repo, "log", "--format=%s").splitlines()
    # The results folder is not the spec's own: the messages name both.
    runs = [m for m in log if not m.startswith("tiny (results): report")]
    assert len(runs) == 8 and all(m.startswith("tiny (results): cifar_resnet8 ") for m in runs)
    assert log[0] == "tiny (results): report (8 runs)"
    assert "unrelated.txt" not in _git(repo, "log", "--name-only", "--format=")
    assert _git(repo, "status", "--porcelain", "--", "results") == ""
    # Sources ran before their ablations.
    order = log[::-1]
    assert order.index(next(m for m in order if " tsc seed0 " in m)) < \
        order.index(next(m for m in order if "-of:tsc seed0" in m))


@pytest.mark.slow
def test_ablations_are_built_from_the_collected_source(study):
    results = study["results"] / "cifar_resnet8"
    for seed in (0, 1):
        source = results / "tsc" / f"seed{seed}"
        profile = json.loads((source / "steps.json").read_text())
        fixed = yaml.safe_load((results / "fixed-of-tsc" / f"seed{seed}" / "config.yaml").read_text())["model"]["steps"]
        assert fixed == f"fixed:{profile['evolution_time'] / len(profile['dt'])!r}"
        frozen = results / "profile-of-tsc" / f"seed{seed}"
        assert json.loads((frozen / "steps.json").read_text())["dt"] == profile["dt"]
        assert json.loads((frozen / "cell.json").read_text())["source"] == f"cifar_resnet8/tsc/seed{seed}"


@pytest.mark.slow
def test_report_rows_recompute_from_the_runs(study):
    results = study["results"]
    summary = json.loads((results / "summary.json").read_text())["models"]["cifar_resnet8"]
    rows = {r["policy"]: r for r in summary["rows"]}
    assert list(rows) == ["none", "tsc", "profile-of:tsc", "fixed-of:tsc"] and summary["best_peer"] == "none"
    for policy, row in rows.items():
        tag = policy.replace(":", "-") if "-of" in policy else policy
        finals = [json.loads((results / "cifar_resnet8" / tag / f"seed{s}" / "metrics.jsonl").read_text()
                             .splitlines()[-1])["test_error"] for s in (0, 1)]
        assert row["test_errors"] == finals and row["mean"] == pytest.approx(statistics.fmean(finals))
        assert all(not Path(r).is_absolute() for r in row["runs"])
    report = (results / "report.md").read_text()
    assert "| `profile-of:tsc` | `tsc` | 0, 1 | " in report and "Holm-adjusted over these 3" in report
    assert (results / "cifar_resnet8_test_error.png").stat().st_size > 10_000
    if list(results.rglob("platform.json")):  # runs record where they ran: the report says so per cell
        where = json.loads((results / "summary.json").read_text())["platforms"]
        assert len(where) == 8 and all(label != "unrecorded" for label in where.values())
        platforms = report.split("**Platforms.**")[1].split("\n\n")[0]
        if len(set(where.values())) == 1:  # one machine: one line, the cells are in summary.json
            assert f"All 8 runs: {next(iter(where.values()))}." in platforms
        else:
            assert "every cell not listed below" in platforms


@pytest.mark.slow
def test_second_call_trains_nothing_and_collects_a_trained_cell(study, capsys):
    args = [str(study["spec"]), "--results", str(study["results"]), "--runs", str(study["runs"])]
    assert wrapper.main(args) == 0
    out = capsys.readouterr().out
    assert "8 of 8 cells already have results" in out and "starting:" not in out
    assert "study tiny: 8 cells: 8 already had results in " in out
    # Trained but not collected (the study stopped in between): collected without training.
    copied = study["results"] / "cifar_resnet8" / "none" / "seed1"
    before = (copied / "metrics.jsonl").read_text()
    shutil.rmtree(copied)
    assert wrapper.main(args) == 0
    out = capsys.readouterr().out
    assert "starting:" not in out and "done: cifar_resnet8 none seed1" in out
    assert "study tiny: 8 cells: 7 already had results, 1 collected, 1 of them trained before this call in " in out
    assert (copied / "metrics.jsonl").read_text() == before
    assert cli(["study", *args, "--dry-run"]) == 0
    states = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert states == ["results"] * 8


@pytest.mark.slow
def test_a_run_that_cannot_be_collected_fails_its_cell_and_the_study_goes_on(study, tmp_path, capsys):
    spec = _spec(tmp_path, "tiny", seeds=[0, 1], policies=["none"])  # the study's recipe: its runs fit
    results, runs = tmp_path / "results", tmp_path / "runs"
    shutil.copytree(study["runs"] / "cifar_resnet8" / "none", runs / "cifar_resnet8" / "none")  # trained, not collected
    damaged = runs / "cifar_resnet8" / "none" / "seed0" / "metrics.jsonl"
    damaged.write_text(damaged.read_text() + '{"epoch": 3, "test_err\n')  # cut short by a full disk
    assert cli(["study", str(spec), "--results", str(results), "--runs", str(runs)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: cifar_resnet8 none seed0: its results cannot be collected: {damaged}" in out
    assert "done: cifar_resnet8 none seed1" in out
    assert "study tiny: 2 cells: 0 already had results, 1 collected, 1 of them trained before this call, 1 failed in " in out
    assert not (results / "cifar_resnet8" / "none" / "seed0").exists()  # nothing half-written: retried next time


def test_data_the_runs_cannot_read_stops_the_study_before_any_cell(tmp_path, capsys, monkeypatch):
    """One line and exit 2 for a missing folder, also for a dry run and a folder relative to where
    the runs start; before, each of a study's cells started and failed with the same error."""
    spec = _spec(tmp_path, "nodata", seeds=[0, 1], policies=["none", "tsc"])
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--dry-run"]):
        assert cli(["study", str(spec), "--results", "r", "--runs", "runs", "--set", "data.data_dir=no-such-data",
                    *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"tscnet study: error: fashion-mnist data directory {tmp_path / 'no-such-data'} does not exist: "
                       "apt-get install dataset-fashion-mnist, pass --set data.data_dir=DIR with its four IDX files, or "
                       "fetch them with --set data.download=true --set data.data_dir=DIR (a folder to download into) "
                       f"(relative to {tmp_path}, where the runs start); no cell was started"), err
        assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()
    # A subset larger than the data (a recipe for Fashion-MNIST on a smaller set of the user's).
    assert cli(["study", str(spec), "--results", "r", "--runs", "runs", "--set", "data.test_subset=10001"]) == 2
    assert capsys.readouterr().err.strip() == ("tscnet study: error: test_subset must be in [1, 10000], got 10001; "
                                               "no cell was started")
    assert not (tmp_path / "runs").exists()


def test_max_hours_starts_no_cell_estimated_to_end_after_them(tmp_path, capsys):
    """Before a run of the model has ended here, its estimate decides (it was 0: any first cell started).
    ResNet-8 is estimated at ~1000 img/s: 200 epochs of 512 images ~2 min, past a 36 s limit."""
    spec = _spec(tmp_path, "long", seeds=[0], policies=["none", "tsc"], set=["data.train_subset=512", "train.epochs=200"])
    args = ["study", str(spec), "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")]
    assert cli([*args, "--max-hours", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "starting:" not in out and "not started: 2 cells (--max-hours 0.01 reached); run again to continue" in out
    assert "study long: 2 cells: 0 already had results, 2 not run in " in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_failed_cell_is_named_with_its_trainers_error(tmp_path, capsys):
    """A device the trainer refuses (no CUDA here, or not 100 GPUs): the trainer's one line, and the log."""
    spec = _spec(tmp_path, "nodevice", seeds=[0], policies=["none"])
    assert cli(["study", str(spec), "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"),
                "--set", "train.device=cuda:99"]) == 1
    out = capsys.readouterr().out
    assert "study nodevice: 1 cell: 0 already had results, 1 failed in " in out
    failed = [line for line in out.splitlines() if line.startswith("FAILED: ")]
    log = tmp_path / "runs" / "cifar_resnet8" / "none" / "seed0.log"
    assert len(failed) == 1 and failed[0].endswith(f"; see {log}"), failed
    assert failed[0].startswith("FAILED: cifar_resnet8 none seed0: exit code 2: device 'cuda:99' asked for, but "), failed


@pytest.mark.slow
def test_other_recipes_are_refused_in_one_results_folder(study, capsys):
    args = [str(study["spec"]), "--results", str(study["results"]), "--runs", str(study["runs"])]
    assert cli(["study", *args, "--set", "train.epochs=3"]) == 2
    assert "train.epochs: 2 there, 3 in this recipe" in capsys.readouterr().err


def test_final_error_of_a_run_with_skipped_evaluations(tmp_path):
    """A run that diverged after epochs that train.eval_epochs skipped ends on rows without test_*:
    its final error is the last evaluated epoch's (it once crashed the runner here)."""
    from tscnet.study.results import final_error

    (tmp_path / "config.yaml").write_text("{}\n")  # a run folder
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in
                                                    [{"epoch": 1, "test_error": 80.5}, {"epoch": 2}, {"epoch": 3}]))
    assert final_error(tmp_path) == 80.5
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    assert math.isnan(final_error(tmp_path))


@pytest.mark.slow
def test_grid_study_records_a_diverged_cell_once_and_skips_its_ablation(tmp_path, capsys):
    """lr = 1e6 sends the loss to NaN: recorded as diverged at chance, never retried, its ablation not run."""
    spec = _spec(tmp_path, "grid", seeds=[0], grid={"optim.lr": [0.1, 1e6]}, policies=["none", "tsc", "profile-of:tsc"])
    args = ["study", str(spec), "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"),
            "--workers", "2"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert out.count("DIVERGED (") == 2 and "not run: cifar_resnet8 profile-of:tsc lr1000000.0 seed0: its source" in out
    base = tmp_path / "results" / "cifar_resnet8"
    for tag in ("none", "tsc"):
        info = json.loads((base / tag / "lr1000000.0" / "seed0" / "cell.json").read_text())
        assert "loss became" in info["diverged"] and info["grid"] == {"optim.lr": 1e6}
        assert json.loads((base / tag / "lr0.1" / "seed0" / "cell.json").read_text())["grid"] == {"optim.lr": 0.1}
    assert (base / "profile-of-tsc" / "lr0.1" / "seed0" / "cell.json").exists()
    assert not (base / "profile-of-tsc" / "lr1000000.0").exists()
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())["models"]["cifar_resnet8"]["grid"]
    row = next(r for r in summary["lr1000000.0"]["rows"] if r["policy"] == "tsc")
    assert row["test_errors"] == [90.0] and row["diverged"] == [0] and row["T_mean"] is None
    report = (tmp_path / "results" / "report.md").read_text()
    assert "90.00†" in report and "| policy | largest stable `optim.lr` | best `optim.lr` |" in report
    # The grid over one key: stability, best value and spread per arm (a diverged seed at chance).
    sweep = json.loads((tmp_path / "results" / "summary.json").read_text())["models"]["cifar_resnet8"]["sweep"]
    assert sweep["key"] == "optim.lr" and sweep["values"] == [0.1, 1e6] and sweep["best_peer"] == "none"
    for arm in ("none", "tsc"):
        entry = sweep["arms"][arm]
        at = {p["value"]: p for p in entry["points"]}
        assert at[1e6]["diverged"] == [0] and not at[1e6]["stable"] and at[0.1]["stable"]
        assert entry["largest_stable"] == 0.1 and entry["best_value"] == 0.1
        assert entry["spread"] == pytest.approx(90.0 - at[0.1]["mean"]) and entry["spread_stable"] == 0.0
    assert (tmp_path / "results" / "cifar_resnet8_lr_sweep.png").stat().st_size > 10_000
    assert cli(args) == 0  # nothing is retried
    assert "starting:" not in capsys.readouterr().out
    # Seeds still to run: the largest stable value is pending, not "none"; diverged everywhere: below the grid.
    more = _spec(tmp_path / "results", "grid", seeds=[0, 1], grid={"optim.lr": [0.1, 1e6]}, policies=["none", "tsc"])
    assert cli(["study", str(more), "--results", str(tmp_path / "results"), "--report-only"]) == 0
    entry = json.loads((tmp_path / "results" / "summary.json").read_text())["models"]["cifar_resnet8"]["sweep"]["arms"]["none"]
    assert (entry["largest_stable"], entry["pending"], entry["below_grid"]) == (None, [0.1], False)
    assert "| `none` | — (0.1 pending) |" in (tmp_path / "results" / "report.md").read_text()
    for tag in ("none", "tsc", "profile-of-tsc"):
        shutil.rmtree(base / tag / "lr0.1")
    assert cli(["study", str(more), "--results", str(tmp_path / "results"), "--report-only"]) == 0
    assert "| `none` | < 1000000.0 |" in (tmp_path / "results" / "report.md").read_text()


@pytest.mark.slow
def test_sigint_stops_a_background_study_and_the_next_call_resumes(tmp_path):
    """A study started as ``nohup ... &`` has SIGINT ignored; ``kill -INT PID`` must still stop it: no
    further cell starts, the running trainer checkpoints, the exit is non-zero, and the next call
    resumes that run where it stopped."""
    spec = _spec(tmp_path, "long", seeds=[0], policies=["none", "tsc"],
                 set=["data.train_subset=128", "data.test_subset=64", "data.batch_size=64", "train.epochs=40"])
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [sys.executable, "-m", "tscnet.cli", "study", str(spec), "--workers", "1", "--runs", str(runs),
            "--results", str(results)]
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    first = runs / "cifar_resnet8" / "none" / "seed0"  # arms run in spec order (no ablations here)
    deadline = time.time() + 300
    while not ((first / "metrics.jsonl").exists() and (first / "metrics.jsonl").read_text().count("\n") >= 2):
        assert runner.poll() is None and time.time() < deadline, runner.communicate()[0]
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=300)
    assert runner.returncode == 1, out
    assert "stopped: cifar_resnet8 none seed0 (SIGINT)" in out and "run the same command again" in out
    assert "starting: cifar_resnet8 tsc seed0" not in out and not (runs / "cifar_resnet8" / "tsc").exists()
    done = [json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= len(done) < 40 and (first / "checkpoint.pt").exists() and not (first / "model_card.json").exists()
    assert not list(results.rglob("cell.json"))

    again = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: cifar_resnet8 none seed0" in again.stdout
    epochs = [json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))
    assert (results / "cifar_resnet8" / "tsc" / "seed0" / "cell.json").exists()


def test_platforms_paragraph_lists_only_the_cells_off_the_main_platform(tmp_path):
    from tscnet.study.report import Result
    from tscnet.study.report.preamble import platforms_paragraph

    def cell(seed: int, cpu: str) -> Result:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "platform.json").write_text(json.dumps([{"cpu": cpu, "threads": 1}]))
        return Result("cifar_resnet8", "none", "none", seed, {}, folder, {}, [], {}, {}, {})

    same = [cell(s, "EPYC") for s in range(3)]
    assert "All 3 runs: EPYC" in platforms_paragraph(same) and "seed0" not in platforms_paragraph(same)
    text = platforms_paragraph(same + [cell(3, "Xeon")])
    assert "EPYC" in text and "(3): every cell not listed below" in text
    assert "Xeon" in text and "cifar_resnet8 none seed3" in text and "seed0" not in text


def test_sweep_matrix_marks_diverged_seeds_and_missing_ones():
    from tscnet.study.report import format_sweep_matrix

    def point(value, seeds, errors, diverged=()):
        mean = statistics.fmean(errors)
        return {"value": value, "seeds": seeds, "n": len(seeds), "test_errors": errors, "mean": mean,
                "std": statistics.stdev(errors) if len(errors) > 1 else None, "failed": list(diverged)}

    sweep = {"key": "optim.lr", "values": [0.1, 0.3], "seeds": [0, 1, 2], "arms": {
        "depth:0.5": {"points": [point(0.1, [0, 1, 2], [25.0, 27.0, 26.0]), point(0.3, [0, 1, 2], [90.0, 35.5, 90.0], [0, 2])]},
        "none": {"points": [point(0.1, [0, 1], [90.0, 90.0], [0, 1])]},
        "tsc": {"points": [point(0.3, [0], [30.0])]},
    }}
    rows = {line.split(" | ")[0]: line for line in format_sweep_matrix(sweep).splitlines()}
    assert rows["| `depth:0.5`"] == "| `depth:0.5` | 26.00 ± 1.00 | ✗ 2/3 (35.50) |"
    assert rows["| `none`"] == "| `none` | ✗ 2/2 | — |"
    assert rows["| `tsc`"] == "| `tsc` | — | 30.00 (n = 1) |"
    assert format_sweep_matrix(sweep).splitlines()[0] == "| policy | `optim.lr` = 0.1 | `optim.lr` = 0.3 |"


def _sweep(best_by_arm: dict[str, float], values=(1e-3, 2e-3, 4e-3, 8e-3)) -> dict:
    """A one-key sweep as sweep_analysis returns it: each arm's error is lowest at its best value."""
    arms = {}
    for arm, best in best_by_arm.items():
        points = [{"value": v, "mean": 30.0 + 5 * abs(math.log2(v / best)), "n": 3} for v in values]
        arms[arm] = {"steps": arm, "points": points, "best_value": best,
                     "best": next(p for p in points if p["value"] == best)}
    return {"key": "optim.lr", "values": list(values), "arms": arms}


def test_depth_transfer_reads_each_arms_best_lr_across_depths(tmp_path):
    from tscnet.study.transfer import format_transfer, plot_transfer, transfer_analysis

    sweeps = {"vit_d6": _sweep({"none": 2e-3, "depth:0.5": 4e-3}), "vit_d12": _sweep({"none": 1e-3, "depth:0.5": 4e-3}),
              "vit_d24": _sweep({"none": 1e-3, "depth:0.5": 4e-3})}
    transfer = transfer_analysis(sweeps, {"vit_d6": 12, "vit_d12": 24, "vit_d24": 48})
    assert transfer["depths"] == [12, 24, 48]
    none, fixed = transfer["arms"]["none"], transfer["arms"]["depth:0.5"]
    assert (none["moves"], fixed["moves"]) == (1, 0)
    assert fixed["slope"] == pytest.approx(0.0) and none["slope"] == pytest.approx(-0.5)  # halved once in 4x depth
    # tuned at D = 12 (lr 2e-3), trained at D = 24 and 48: one grid step from their best, 5 points worse
    assert [s["gap"] for s in none["at_shallow_best"]] == [pytest.approx(5.0), pytest.approx(5.0)]
    assert [s["gap"] for s in fixed["at_shallow_best"]] == [0.0, 0.0]
    table = format_transfer(transfer)
    assert "| `none` | 0.002 | 0.001 | 0.001 | 1 |" in table
    assert plot_transfer(transfer, {"none"}, tmp_path / "t.png").stat().st_size > 0
    # one depth, or depths swept over different keys: no reading
    assert transfer_analysis({"vit_d6": sweeps["vit_d6"]}, {"vit_d6": 12}) is None


def _finished_run(folder: Path, final_error: float) -> Path:
    """A finished run folder as the engine leaves it (config, metrics, model card), ending at ``final_error``."""
    from tscnet.jobs.run_folder import RunFolder

    folder.mkdir(parents=True)
    (folder / RunFolder.CONFIG).write_text(yaml.safe_dump({"model": {"name": "cifar_resnet8", "steps": "none",
                                                                     "num_classes": 10}, "data": {"name": "mnist"}}))
    (folder / RunFolder.METRICS).write_text(json.dumps({"epoch": 1, "test_error": final_error}) + "\n")
    (folder / RunFolder.CARD).write_text("{}\n")
    return folder


def test_a_run_that_finished_at_chance_did_not_learn_and_one_with_a_nan_loss_diverged(tmp_path):
    """Both count at chance error; the labels keep them apart (a run at chance did not blow up)."""
    from tscnet.jobs.run_folder import RunFolder
    from tscnet.study.results import did_not_learn, run_divergence
    from tscnet.study.scheduler import CellResult

    stuck = run_divergence(_finished_run(tmp_path / "stuck", 88.0))  # ≥ 0.95 × 90 %: chance level
    assert stuck is not None and did_not_learn(stuck)
    assert run_divergence(_finished_run(tmp_path / "learned", 40.0)) is None
    nan = _finished_run(tmp_path / "nan", 40.0)
    (nan / RunFolder.DIVERGED).write_text(json.dumps({"message": "loss became nan at step 7"}))
    reason = run_divergence(nan)
    assert reason == "loss became nan at step 7" and not did_not_learn(reason)
    assert CellResult(None, tmp_path, stuck, 90.0).describe().startswith("DID NOT LEARN (final test error 88.00 %")
    assert CellResult(None, tmp_path, reason, 90.0).describe() == "DIVERGED (loss became nan at step 7)"


def test_the_report_marks_a_run_that_did_not_learn_apart_from_one_that_diverged():
    from tscnet.study.report import Result, format_table, summarize_group

    spec = load_spec("converged")
    config = {"model": {"num_classes": 10, "steps": "none"}, "train": {"epochs": 1}}

    def result(seed, error, failure=None):
        return Result("cifar_resnet20", "none", "none", seed, {}, Path(f"s{seed}"), config,
                      [{"epoch": 1, "test_error": error}], {} if failure else {"evolution_time": 9.0}, {}, {}, failure)

    group = [result(0, 30.0), result(1, 88.0, "final test error 88.00 % is at chance level (≥ 0.95 × 90.00 %)"),
             result(2, 12.0, "loss became nan at step 3")]
    row = summarize_group(spec, group)["rows"][0]
    assert row["test_errors"] == [30.0, 90.0, 90.0]  # both count at chance
    assert (row["failed"], row["did_not_learn"], row["diverged"]) == ([1, 2], [1], [2])
    assert "30.00, 90.00‡, 90.00†" in format_table(spec, summarize_group(spec, group))
