"""The accuracy grid: every step policy, same recipe and seeds, on Fashion-MNIST (2-core CPU).

Trains models × policies × seeds with ``tscnet/configs/fashion_mnist_grid.yaml`` (resumable: finished
runs are skipped, interrupted ones resumed), then writes the report: final-epoch test error
mean ± std and evolution time T per model and policy, training curves and learned Δt profiles.

    python benchmarks/accuracy.py [--runs runs/grid] [--out benchmarks/results/accuracy]
                                  [--models cifar_resnet20 cifar_resnet56] [--seeds 0 1 2]
                                  [--workers 2 --threads 1] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscnet.analysis.report import build_runs_report, format_summary
from tscnet.train import load_config
from tscnet.study.sweep import Job, run_sweep

POLICIES = ["none", "fixed:0.5", "scalar:0", "channel:1", "mlp", "tsc"]


def grid_jobs(recipe: str, models: list[str], policies: list[str], seeds: list[int], runs: Path,
              overrides: list[str]) -> list[Job]:
    jobs = []
    for model in models:
        for policy in policies:
            for seed in seeds:
                config = load_config(recipe, overrides)
                config["model"].update(name=model, steps=policy)
                config["train"].update(seed=seed, progress=False)
                tag = policy.replace(":", "")
                jobs.append(Job(config, runs / model / tag / f"seed{seed}"))
    return jobs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fashion_mnist_grid")
    p.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet56"])
    p.add_argument("--policies", nargs="+", default=POLICIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/grid"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    jobs = grid_jobs(args.recipe, args.models, args.policies, args.seeds, args.runs, args.set)
    failed = run_sweep(jobs, args.workers, args.threads)
    done = [j.out for j in jobs if j.finished or j.diverged]
    if done:
        report = build_runs_report(done, args.out)
        print(format_summary(report.summary))
        print(f"report: {report.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
