"""benchmarks/study_scale.py at 100 cells (so it cannot rot), and the shortcuts that make a study of
1,000 cells plan, schedule and report in seconds: they give what the long way gives."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tscnet.jobs.executors import Executor
from tscnet.study import load_spec, plan_cells
from tscnet.study.cost import CostModel, format_hours
from tscnet.study.plan import Layout
from tscnet.study.results import base_config, cell_config
from tscnet.study.scheduler import StudyOptions, StudyRun, planned_configs

ROOT = Path(__file__).resolve().parents[1]


class _Idle(Executor):
    """Three at a time, never started here."""

    capacity = 3

    def start(self, task):
        raise AssertionError("not started in these tests")

    def poll(self, handle):
        return 0

    def stop(self, handle, signum):
        pass


def _benchmark():
    """benchmarks/study_scale.py as a module (it registers its fake executor once)."""
    if "study_scale" not in sys.modules:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            import study_scale  # noqa: F401
        finally:
            sys.path.remove(str(ROOT / "benchmarks"))
    return sys.modules["study_scale"]


def _spec():
    return load_spec(_benchmark().study_spec(models=2, seeds=2, lrs=2))


def test_planned_configs_are_each_cells_own(tmp_path):
    spec = _spec()
    cells = plan_cells(spec)
    extra = ("train.epochs=3",)
    planned = planned_configs(spec, cells, extra)
    assert list(planned) == cells
    layout = Layout(tmp_path / "results", tmp_path / "runs", tmp_path)
    for cell in cells:
        assert planned[cell] == base_config(spec, cell, extra), cell
        if not cell.arm.ablation:  # what the scheduler starts an ordinary arm with
            assert planned[cell] == cell_config(spec, cell, layout, extra), cell
    one, other = (c for c in cells if c.arm.name == "tsc" and c.grid == cells[0].grid and c.model == cells[0].model)
    assert planned[one] is not planned[other] and planned[one]["train"] is not planned[other]["train"]


def test_estimates_per_workload_are_the_estimates_per_cell(tmp_path):
    spec = _spec()
    cells = plan_cells(spec)
    by_workload: dict[tuple, set] = {}
    for cell in cells:
        config = base_config(spec, cell)
        fresh = CostModel(speed={"cifar_resnet20": 500.0})  # nothing remembered
        by_workload.setdefault(fresh.workload(cell.model, config), set()).add(fresh.seconds(cell.model, config, 1))
    assert len(by_workload) == 2 and all(len(seconds) == 1 for seconds in by_workload.values())  # one per model
    cost = CostModel(speed={"cifar_resnet20": 500.0})
    config = base_config(spec, cells[0])
    before = cost.seconds("cifar_resnet32", config)
    cost.speed["cifar_resnet32"] = 50.0  # a remembered estimate follows the speeds it was made from
    assert cost.seconds("cifar_resnet32", config) == (6000 / 50.0 * 1.35 * 2, "finished runs of the model") != before
    # The progress line's time left: the sum over the queued cells of each one's estimate.
    lines: list[str] = []
    layout = Layout(tmp_path / "results", tmp_path / "runs", tmp_path)
    study = StudyRun(spec, cells, layout, _Idle(), StudyOptions(out=lines.append))
    study.progress(force=True)
    naive = sum(CostModel().seconds(c.model, base_config(spec, c))[0] for c in cells)
    assert lines == [f"progress: 0/{len(cells)} done, 0 running, {len(cells)} queued, 0 failed; "
                     f"~{format_hours(naive / 3)} left"]


def test_the_benchmark_at_100_cells(tmp_path, monkeypatch, capsys):  # not slow: 10-20 s on 2 busy cores
    """The script's main() in this process (a subprocess would spend as long again importing torch)."""
    study_scale = _benchmark()
    out = tmp_path / "scale.json"
    monkeypatch.setattr(sys, "argv", ["study_scale.py", "--models", "1", "--lrs", "2", "--seeds", "5", "--out", str(out)])
    study_scale.main()
    printed = capsys.readouterr().out
    assert "100 cells (10 arms x 2 lrs x 1 models x 5 seeds), 2 diverged" in printed
    result = json.loads(out.read_text())
    assert result["cells"] == 100 and result["diverged"] == 2  # none at the larger lr, seeds 1 and 3
    assert set(result["seconds"]) == {"plan", "schedule", "report", "rerun"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    for phase in result["seconds"]:
        assert f"\n{phase} " in printed
