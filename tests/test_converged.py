"""benchmarks/converged.py end to end on a tiny recipe: runs, copies, commits, skips, ablations, report."""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import converged  # noqa: E402

TINY = ["--models", "cifar_resnet8", "--policies", "none", "tsc", "profile-of:tsc", "fixed-of:tsc", "--seeds", "0", "1",
        "--set", "data.train_subset=128", "--set", "data.test_subset=64", "--set", "data.batch_size=64",
        "--set", "train.epochs=4"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _init_repo(repo: Path) -> None:
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One real study (8 tiny runs, 2 at a time) whose results land, committed, in a scratch git repo."""
    base = tmp_path_factory.mktemp("converged")
    repo = base / "repo"
    repo.mkdir()
    _init_repo(repo)
    (repo / "unrelated.txt").write_text("staged by someone else\n")
    _git(repo, "add", "unrelated.txt")
    runs, results = base / "runs", repo / "results"
    code = converged.main([*TINY, "--runs", str(runs), "--results", str(results), "--commit"])
    return {"code": code, "repo": repo, "runs": runs, "results": results}


def _cell(results: Path, policy_tag: str, seed: int) -> Path:
    return results / "cifar_resnet8" / policy_tag / f"seed{seed}"


def test_plan_orders_sources_first_and_seed_major():
    cells = converged.plan(["cifar_resnet20", "cifar_resnet56"], converged.POLICIES, None)
    assert len(cells) == 11 * 5 + 11 * 3
    assert [str(c) for c in cells[:2]] == ["cifar_resnet20 tsc seed0", "cifar_resnet20 none seed0"]
    assert [c.policy for c in cells[9:11]] == ["profile-of:tsc", "fixed-of:tsc"]
    assert cells[11].model == "cifar_resnet56" and cells[11].seed == 0
    assert {c.seed for c in cells if c.model == "cifar_resnet56"} == {0, 1, 2}
    assert [converged.policy_tag(p) for p in ("fixed:0.5", "tsc:dt_init=0.5", "profile-of:tsc")] == \
        ["fixed0.5", "tscdt_init0.5", "profile-of-tsc"]
    with pytest.raises(converged.UserError, match="no_such"):
        converged.plan(["cifar_resnet20"], ["no_such"], [0])
    with pytest.raises(converged.UserError, match="profile-of:tsc"):
        converged.plan(["cifar_resnet20"], ["profile-of"], [0])


def test_study_runs_copies_and_commits_each_cell(study):
    assert study["code"] == 0
    results, repo = study["results"], study["repo"]
    for tag in ("none", "tsc", "profile-of-tsc", "fixed-of-tsc"):
        for seed in (0, 1):
            folder = _cell(results, tag, seed)
            assert sorted(p.name for p in folder.iterdir()) == sorted([*converged.RESULT_FILES, "cell.json"])
            assert len((folder / "metrics.jsonl").read_text().splitlines()) == 4
            assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["seed"] == seed
    assert not list(results.rglob("*.pt")) and not list(results.rglob("*.safetensors"))
    log = _git(repo, "log", "--format=%s").splitlines()
    runs = [m for m in log if not m.startswith("converged: report")]
    assert len(runs) == 8 and all(m.startswith("converged: cifar_resnet8 ") for m in runs)
    assert any(m.startswith("converged: cifar_resnet8 fixed-of:tsc seed1 (error ") for m in runs)
    assert log[0].startswith("converged: report (8 runs)")
    # Each commit holds one run's folder (or the report), never what someone else had staged.
    assert "unrelated.txt" not in _git(repo, "log", "--name-only", "--format=")
    assert _git(repo, "status", "--porcelain", "--", "results") == ""
    # The sources ran before their ablations: a tsc run's results exist when its ablations start.
    first_tsc = log[::-1].index(next(m for m in log[::-1] if " tsc seed0 " in m))
    first_ablation = log[::-1].index(next(m for m in log[::-1] if "-of:tsc seed0" in m))
    assert first_tsc < first_ablation


def test_committing_unchanged_results_is_a_quiet_success(tmp_path, capsys):
    repo, folder = tmp_path, tmp_path / "results" / "cell"
    _init_repo(repo)
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert converged.git_commit([folder], "converged: first") is True
    assert converged.git_commit([folder], "converged: nothing new") is True  # a report rebuilt from the same runs
    assert _git(repo, "log", "--format=%s").splitlines() == ["converged: first"]
    assert "WARNING" not in capsys.readouterr().out
    (folder / "metrics.jsonl").write_text('{"epoch": 2}\n')
    assert converged.git_commit([folder], "converged: second") is True
    assert _git(repo, "log", "--format=%s").splitlines() == ["converged: second", "converged: first"]
    assert converged.git_commit([tmp_path / "results" / "missing"], "converged: nothing there") is False
    assert "WARNING: git commit" in capsys.readouterr().out


def test_ablations_are_built_from_the_committed_tsc_results(study):
    results = study["results"]
    for seed in (0, 1):
        source = _cell(results, "tsc", seed)
        profile = json.loads((source / "steps.json").read_text())
        fixed = yaml.safe_load((_cell(results, "fixed-of-tsc", seed) / "config.yaml").read_text())["model"]["steps"]
        assert fixed == f"fixed:{profile['evolution_time'] / len(profile['dt'])!r}"
        frozen = _cell(results, "profile-of-tsc", seed)
        steps = yaml.safe_load((frozen / "config.yaml").read_text())["model"]["steps"]
        assert Path(steps.partition(":")[2]).resolve() == source.resolve()
        assert json.loads((frozen / "steps.json").read_text())["dt"] == profile["dt"]  # frozen from the first step
        assert json.loads((frozen / "cell.json").read_text())["source"] == "cifar_resnet8/tsc/seed%d" % seed


def test_report_tables_and_welch_intervals_recompute_from_the_runs(study):
    results = study["results"]
    report = (results / "report.md").read_text()
    assert "Welch" in report and "## cifar_resnet8" in report
    for name in ("cifar_resnet8_test_error.png", "cifar_resnet8_test_error_end.png", "cifar_resnet8_dt_profile.png",
                 "cifar_resnet8_dt_heatmap.png"):
        assert (results / name).stat().st_size > 10_000
    summary = json.loads((results / "summary.json").read_text())["models"]["cifar_resnet8"]
    rows = {r["policy"]: r for r in summary["rows"]}
    assert list(rows) == ["none", "tsc", "profile-of:tsc", "fixed-of:tsc"]
    assert summary["best_peer"] == "none"

    def finals(tag):
        return [json.loads((_cell(results, tag, s) / "metrics.jsonl").read_text().splitlines()[-1])["test_error"]
                for s in (0, 1)]

    errors = {p: finals(converged.policy_tag(p)) for p in rows}
    for policy, row in rows.items():
        assert row["test_errors"] == errors[policy] and row["seeds"] == [0, 1]
        assert row["mean"] == pytest.approx(statistics.fmean(errors[policy]))
        folders = [_cell(results, converged.policy_tag(policy), s) for s in (0, 1)]
        curves = [[json.loads(line)["test_error"] for line in (f / "metrics.jsonl").read_text().splitlines()]
                  for f in folders]
        assert row["last3_change"] == pytest.approx(statistics.fmean(abs(c[-1] - c[-4]) for c in curves))
        if policy == "none":
            assert row["vs_none"] is None and row["vs_best_peer"] is None
            continue
        test = stats.ttest_ind(errors[policy], errors["none"], equal_var=False)
        ci = test.confidence_interval(0.95) if statistics.stdev(errors[policy]) or statistics.stdev(errors["none"]) \
            else None
        if ci is not None:
            assert row["vs_none"]["ci95"] == pytest.approx([ci.low, ci.high])
        diff = statistics.fmean(errors[policy]) - statistics.fmean(errors["none"])
        assert row["vs_none"]["diff"] == pytest.approx(diff)
        assert row["vs_best_peer"] == row["vs_none"]
        assert f"`{policy}`" in report
        if policy.endswith("-of:tsc"):  # the ablation against its own source run, seed by seed
            assert row["vs_source"]["source"] == "tsc" and row["vs_source"]["paired"]["seeds"] == [0, 1]
            diffs = [a - b for a, b in zip(errors[policy], errors["tsc"])]
            assert row["vs_source"]["paired"]["diff"] == pytest.approx(statistics.fmean(diffs))
            if statistics.stdev(diffs):
                ci = stats.ttest_rel(errors[policy], errors["tsc"]).confidence_interval(0.95)
                assert row["vs_source"]["paired"]["ci95"] == pytest.approx([ci.low, ci.high])
            assert f"| `{policy}` | `tsc` | 0, 1 | " in report
        else:
            assert row["vs_source"] is None
    family = [r for r in rows.values() if r["vs_none"] is not None]  # Holm: the smallest p times m, others ≥ p
    smallest = min(family, key=lambda r: r["vs_none"]["p"])
    assert smallest["vs_none_p_holm"] == pytest.approx(min(1.0, len(family) * smallest["vs_none"]["p"]))
    assert all(1.0 >= r["vs_none_p_holm"] >= r["vs_none"]["p"] for r in family)
    assert f"Holm-adjusted over these {len(family)}" in report


def test_holm_adjusts_a_textbook_family():
    # sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04); returned in input order
    assert converged.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert converged.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_report_flags_runs_of_different_recipes(study, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(study["results"] / "cifar_resnet8", results / "cifar_resnet8")
    config = results / "cifar_resnet8" / "none" / "seed0" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.1\n", "lr: 0.05\n"))
    report = converged.build_report(results).read_text()
    assert "WARNING: the runs do not share one recipe" in report and "cifar_resnet8 none seed0" in report
    assert "WARNING" not in (study["results"] / "report.md").read_text()


def test_second_call_trains_nothing_and_resumes_unfinished_scratch_runs(study, monkeypatch, capsys):
    started = []

    def fake_run_job(job, threads, cwd=None, stop=None):
        started.append(job)
        return job, 1, "log"

    monkeypatch.setattr(converged, "run_job", fake_run_job)
    args = [*TINY, "--runs", str(study["runs"]), "--results", str(study["results"])]
    assert converged.main(args) == 0
    assert started == []
    assert "8 of 8 cells already have results" in capsys.readouterr().out
    # A run trained but not copied (the runner stopped in between) is collected without training.
    copied = _cell(study["results"], "none", 1)
    before = (copied / "metrics.jsonl").read_text()
    for f in copied.iterdir():
        f.unlink()
    copied.rmdir()
    assert converged.main(args) == 0
    assert started == [] and (copied / "metrics.jsonl").read_text() == before
    # An unfinished scratch run is resumed, not restarted.
    scratch = study["runs"] / "cifar_resnet8" / "none" / "seed1"
    (scratch / "model_card.json").unlink()
    for f in copied.iterdir():
        f.unlink()
    assert converged.main(args) == 1  # the fake run "fails"
    assert [j.out for j in started] == [scratch] and started[0].started


def test_max_hours_zero_starts_nothing_and_other_recipes_are_refused(study, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(converged, "run_job", lambda *a, **k: pytest.fail("nothing may start"))
    assert converged.main([*TINY, "--runs", str(tmp_path / "r"), "--results", str(tmp_path / "res"),
                           "--max-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "not started: 4 cells" in out  # none and tsc of both seeds
    assert "not run: cifar_resnet8 fixed-of:tsc seed1: its source cifar_resnet8 tsc seed1 was not run" in out
    assert converged.main([*TINY, "--runs", str(study["runs"]), "--results", str(study["results"]), "--dry-run"]) == 0
    states = capsys.readouterr().out.splitlines()
    assert len(states) == 8 and states[0].split() == ["results", "cifar_resnet8", "tsc", "seed0"]
    other = [a if a != "train.epochs=4" else "train.epochs=5" for a in TINY]
    assert converged.main([*other, "--runs", str(study["runs"]), "--results", str(study["results"])]) == 2
    assert "train.epochs: 4 there, 5 in this recipe" in capsys.readouterr().err
    # a dry run on other data says so too, instead of listing the other recipe's results as done
    mnist = [*TINY, "--set", "data.name=mnist"]
    assert converged.main([*mnist, "--results", str(study["results"]), "--dry-run"]) == 2
    assert "data.name: 'fashion-mnist' there, 'mnist' in this recipe" in capsys.readouterr().err


def test_a_diverged_run_is_a_result_at_chance_and_is_not_retried(tmp_path, capsys):
    """lr = 1e6 sends the loss to NaN: the run is committed as diverged, its ablations are not run."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--models", "cifar_resnet8", "--policies", "none", "tsc", "profile-of:tsc", "--seeds", "0",
            "--set", "data.train_subset=128", "--set", "data.test_subset=64", "--set", "data.batch_size=64",
            "--set", "train.epochs=2", "--set", "optim.lr=1e6", "--set", "sched.warmup_epochs=0",
            "--runs", str(runs), "--results", str(results)]
    assert converged.main(argv) == 0
    printed = capsys.readouterr().out
    assert "DIVERGED (" in printed and "not run: cifar_resnet8 profile-of:tsc seed0: its source" in printed
    for tag in ("none", "tsc"):
        info = json.loads((_cell(results, tag, 0) / "cell.json").read_text())
        assert "loss became" in info["diverged"]
    assert not _cell(results, "profile-of-tsc", 0).exists()
    summary = json.loads((results / "summary.json").read_text())["models"]["cifar_resnet8"]
    row = next(r for r in summary["rows"] if r["policy"] == "tsc")
    assert row["test_errors"] == [90.0] and row["diverged"] == [0] and row["T_mean"] is None
    assert "90.00†" in (results / "report.md").read_text()
    assert converged.main(argv) == 0  # nothing is retried
    assert "starting:" not in capsys.readouterr().out


def test_sigint_to_a_background_runner_stops_it_and_the_next_call_resumes(tmp_path):
    """A runner started as ``nohup ... &`` starts with SIGINT ignored; ``kill -INT PID`` must still stop
    it: no further run starts, the running trainer checkpoints mid-run, the exit is non-zero, and the
    next call resumes that run where it stopped instead of starting it again."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--models", "cifar_resnet8", "--policies", "none", "tsc", "--seeds", "0", "--workers", "1",
            "--set", "data.train_subset=128", "--set", "data.test_subset=64", "--set", "data.batch_size=64",
            "--set", "train.epochs=40", "--runs", str(runs), "--results", str(results)]
    runner = subprocess.Popen([sys.executable, converged.__file__, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    first = runs / "cifar_resnet8" / "none" / "seed0"
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
    assert not results.exists() or not list(results.rglob("cell.json"))

    again = subprocess.run([sys.executable, converged.__file__, *argv], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: cifar_resnet8 none seed0" in again.stdout
    epochs = [json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))  # the finished epochs were kept, not trained again
    assert (_cell(results, "tsc", 0) / "cell.json").exists() and (_cell(results, "none", 0) / "cell.json").exists()
