"""How long a study of ~1,000 cells takes to plan, schedule and report, training aside.

The spec: 10 arms (8 policies and the two ablations of tsc) x 5 learning rates x 4 models x 5
seeds of the cheap ``fashion_mnist_grid`` recipe, 2 epochs: 1,000 cells. Nothing trains: a fake
executor, registered only here, "runs" each task the moment it starts by writing the run folder a
finished run leaves (``config.yaml``, ``metrics.jsonl`` with its 2 epochs, ``steps.json``,
``model_card.json``; ``none`` at the largest learning rate diverges on odd seeds and writes
``diverged.json`` instead of a model card), so the study's own code is all that is timed:

1. ``plan``: ``plan_cells`` and the dry run (every cell's state and estimated cost, as
   ``tscnet study --dry-run`` prints it);
2. ``schedule``: ``run_study`` (``StudyRun``) over the fake executor, 16 tasks at a time: ordering,
   ablations waiting for their source, collecting each run into the results folder, progress;
3. ``report``: ``build_study_report`` over the 1,000 collected cells, figures included;
4. ``rerun``: ``run_study`` again, every cell already collected (the skip path of a study resumed).

    python benchmarks/study_scale.py [--models 4] [--seeds 5] [--lrs 5] [--out benchmarks/results/study_scale.json]
    python benchmarks/study_scale.py --profile schedule   # cProfile of one phase, the top 25 by cumulative time
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import tempfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tscnet.commands.study import dry_run
from tscnet.jobs.executors import Executor, Task, create_executor, register_executor
from tscnet.jobs.run_folder import RunFolder
from tscnet.study import build_study_report, load_spec, plan_cells, run_study
from tscnet.study.plan import Layout

MODELS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110"]
LRS = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
POLICIES = ["none", "fixed:0.5", "depth:0.5", "depth:1", "scalar:0", "layerscale", "mlp", "tsc",
            "profile-of:tsc", "fixed-of:tsc"]
EPOCHS = 2
PHASES = ("plan", "schedule", "report", "rerun")


def study_spec(models: int, seeds: int, lrs: int) -> dict:
    """The benchmark's spec: 10 arms × ``lrs`` learning rates × ``models`` models × ``seeds`` seeds."""
    return {"name": "study_scale", "recipe": "fashion_mnist_grid", "set": [f"train.epochs={EPOCHS}"],
            "models": MODELS[:models], "seeds": list(range(seeds)), "grid": {"optim.lr": LRS[:lrs]},
            "policies": POLICIES, "baseline": "none", "peers": ["none", "fixed:0.5", "depth:0.5", "depth:1", "scalar:0"]}


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts`` (the fake runs' errors and steps)."""
    return zlib.crc32(repr(parts).encode()) / 2**32


def _blocks(model: str) -> list[int]:
    """Channels of each residual block of a CIFAR ResNet-(6n+2): n blocks of 16, 32 and 64 channels."""
    n = (int(model.rpartition("resnet")[2]) - 2) // 6
    return [16] * n + [32] * n + [64] * n


def write_finished_run(task: Task, diverge_lr: float) -> int:
    """Write the files a finished run of ``task`` leaves in its run folder, or those of a diverged one for
    ``none`` at learning rate ``diverge_lr`` on odd seeds; its exit code."""
    config = json.loads(json.dumps(task.config))  # a copy
    config["model"].update(num_classes=10, in_chans=1)  # what a run fills in from its data
    model, steps, seed, lr = (config["model"]["name"], config["model"]["steps"], config["train"]["seed"],
                              config["optim"]["lr"])
    run = RunFolder(task.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    run.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    diverged = steps == "none" and lr == diverge_lr and seed % 2 == 1
    base = 8.0 + 20.0 * _unit(model, steps, lr) + 2.0 * _unit(model, steps, lr, seed)
    rows = []
    for epoch in range(1, (1 if diverged else EPOCHS) + 1):
        error = base + 30.0 / epoch
        rows.append({"epoch": epoch, "train_loss": error / 40, "train_acc": 100 - error, "epoch_time": 1.0,
                     "images_per_s": 6000.0, "test_loss": error / 35, "test_top1": 100 - error, "test_top5": 99.0,
                     "test_error": error, "lr": lr, "loss_at_step": {"100": error / 30} if epoch == 1 else {}})
    run.metrics_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if diverged:
        run.diverged_file.write_text(json.dumps({"step": 60, "epoch": 1, "loss": "nan",
                                                 "message": "training diverged: loss became nan at step 60"}))
        return 1
    dt = [[round(0.2 + _unit(model, steps, lr, seed, d, c), 4) for c in range(channels)]
          for d, channels in enumerate(_blocks(model))]
    evolution = sum(sum(b) / len(b) for b in dt)
    run.steps_file.write_text(json.dumps({"model": model, "steps": steps, "evolution_time": evolution, "dt": dt}))
    run.card_file.write_text(json.dumps({"model": model, "steps": steps, "data": "fashion-mnist", "num_classes": 10,
                                         "in_chans": 1, "epochs": EPOCHS,
                                         "final": {"test_error": rows[-1]["test_error"], "evolution_time": evolution}}))
    return 0


@register_executor("study-scale-fake")
class InstantExecutor(Executor):
    """Runs each task instantly (:func:`write_finished_run`): the scheduler's and collector's work alone."""

    name = "study-scale-fake"

    seconds = 0.0  # spent writing the fake runs, across instances (not the study's own time)

    def __init__(self, workers: int = 16, threads: int = 1, diverge_lr: float = max(LRS)) -> None:
        self.capacity, self.diverge_lr = workers, diverge_lr

    def start(self, task: Task) -> int:
        start = time.perf_counter()
        try:
            return write_finished_run(task, self.diverge_lr)
        finally:
            InstantExecutor.seconds += time.perf_counter() - start

    def poll(self, handle: int) -> int | None:
        return handle

    def stop(self, handle: int, signum: int) -> None:
        pass


class _Timed:
    """Wraps ``module.name`` to add the seconds its calls take to :attr:`seconds` (figures inside a report)."""

    def __init__(self, module: Any, names: tuple[str, ...]) -> None:
        self.module, self.names, self.seconds, self.saved = module, names, 0.0, {}

    def __enter__(self) -> _Timed:
        for name in self.names:
            self.saved[name] = original = getattr(self.module, name)

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            setattr(self.module, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self.saved.items():
            setattr(self.module, name, original)


def run_phases(models: int, seeds: int, lrs: int, root: Path, profile: str | None = None) -> dict:
    """Time each phase on a fresh results folder under ``root``: ``{"cells", "diverged", "phases": {name:
    wall seconds}, "cpu": {name: CPU seconds of this process}, "parts": {...}}``, the parts being the fake
    executor's writing (in ``schedule``) and the figures (in ``report``)."""
    from tscnet.study.report import build as report_module  # where build_study_report looks up the figure functions

    spec = load_spec(study_spec(models, seeds, lrs))
    layout = Layout(root / "results", root / "runs", root)
    lines: list[str] = []
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    parts: dict[str, float] = {}
    cells: list = []

    def executor() -> Executor:
        return create_executor("study-scale-fake", workers=16, diverge_lr=LRS[lrs - 1])

    def plan() -> None:
        cells[:] = plan_cells(spec)
        with contextlib.redirect_stdout(io.StringIO()):
            dry_run(spec, cells, layout, (), 16)

    def schedule() -> None:
        InstantExecutor.seconds = 0.0
        counts = run_study(spec, cells, layout, executor(), poll_interval=0.0, out=lines.append)
        assert counts["collected"] == len(cells) and not counts["failed"], lines[-5:]
        parts["schedule: fake executor writing runs"] = InstantExecutor.seconds

    def report() -> None:
        with _Timed(report_module, ("group_figures", "plot_sweep", "plot_transfer")) as figures:
            build_study_report(spec, layout.results)
        parts["report: figures"] = figures.seconds

    def rerun() -> None:
        counts = run_study(spec, cells, layout, executor(), poll_interval=0.0, out=lines.append)
        assert counts["skipped"] == len(cells), lines[-5:]

    for name, phase in zip(PHASES, (plan, schedule, report, rerun)):
        profiler = cProfile.Profile() if name == profile else None
        start, start_cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        phase()
        if profiler is not None:
            profiler.disable()
        seconds[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu  # this process's CPU: less at the mercy of other work here
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    diverged = sum(1 for line in lines if line.startswith("done:") and "DIVERGED" in line)
    return {"cells": len(cells), "diverged": diverged, "phases": seconds, "cpu": cpu, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4, help=f"models, of {len(MODELS)} (default 4)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (default 5)")
    parser.add_argument("--lrs", type=int, default=5, help=f"learning rates, of {len(LRS)} (default 5)")
    parser.add_argument("--profile", choices=PHASES, help="print a cProfile of this phase")
    parser.add_argument("--keep", type=Path, help="work in this (empty) folder and keep it (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "study_scale.json",
                        help="JSON results (default benchmarks/results/study_scale.json; '-' for none)")
    args = parser.parse_args()
    if not (1 <= args.models <= len(MODELS) and 1 <= args.lrs <= len(LRS) and args.seeds >= 1):
        parser.error(f"--models 1..{len(MODELS)}, --lrs 1..{len(LRS)}, --seeds >= 1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="study_scale."))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = run_phases(args.models, args.seeds, args.lrs, root.resolve(), args.profile)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    n = result["cells"]
    print(f"{n} cells ({len(POLICIES)} arms x {args.lrs} lrs x {args.models} models x {args.seeds} seeds), "
          f"{result['diverged']} diverged")
    print(f"{'phase':<10} {'seconds':>9} {'cells/s':>9} {'CPU s':>9}")
    for name, seconds in result["phases"].items():
        print(f"{name:<10} {seconds:>9.2f} {n / seconds if seconds > 0 else math.inf:>9.0f} {result['cpu'][name]:>9.2f}")
    for name, seconds in result["parts"].items():
        print(f"  of which {name}: {seconds:.2f} s")
    if str(args.out) != "-":
        document = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cells": n,
                    "shape": {"arms": len(POLICIES), "lrs": args.lrs, "models": args.models, "seeds": args.seeds},
                    "diverged": result["diverged"], "seconds": {k: round(v, 3) for k, v in result["phases"].items()},
                    "cells_per_s": {k: round(n / v, 1) for k, v in result["phases"].items() if v > 0},
                    "cpu_seconds": {k: round(v, 3) for k, v in result["cpu"].items()},
                    "parts_seconds": {k: round(v, 3) for k, v in result["parts"].items()},
                    "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                "loadavg_1min": os.getloadavg()[0]},
                    "command": "python benchmarks/study_scale.py"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
