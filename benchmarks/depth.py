"""Depth and stability: the vanilla ResNet against ``tsc`` at increasing depth, same aggressive recipe.

Trains ``none`` and ``tsc`` at depths 20, 56 and 110 (``tscnet/configs/fashion_mnist_depth.yaml``: lr 0.1
from the first step, no warm-up, no decay; resumable), then runs the stability study on every run:
final-epoch test error, whether training stayed finite, the measured random and worst-case
perturbation amplification and the bound. Writes a table (Markdown + JSON) and plots.

    python benchmarks/depth.py [--depths 20 56 110] [--seeds 0 1 2] [--runs runs/depth]
                               [--out benchmarks/results/depth] [--workers 2 --threads 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscnet.analysis.report import build_runs_report, format_summary
from tscnet.analysis.stability import format_stability_table, stability_study
from tscnet.train import load_config
from tscnet.study.sweep import Job, run_sweep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fashion_mnist_depth")
    p.add_argument("--depths", nargs="+", type=int, default=[20, 56, 110])
    p.add_argument("--policies", nargs="+", default=["none", "tsc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/depth"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/depth"))
    p.add_argument("--images", type=int, default=32, help="test images for the perturbation study")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    jobs = []
    for depth in args.depths:
        for policy in args.policies:
            for seed in args.seeds:
                config = load_config(args.recipe, args.set)
                config["model"].update(name=f"cifar_resnet{depth}", steps=policy)
                config["train"].update(seed=seed, progress=False)
                jobs.append(Job(config, args.runs / f"resnet{depth}" / policy.replace(":", "") / f"seed{seed}"))
    for job in run_sweep(jobs, args.workers, args.threads):
        print(f"run did not finish (failed or stopped): {job.out}")
    for job in (j for j in jobs if j.diverged):  # a result, but without final weights to measure
        print(f"diverged, left out of the stability measurements: {job.out}")
    done = [j.out for j in jobs if j.finished]
    study = stability_study(done, args.out, images=args.images)
    print(format_stability_table(study.rows))
    report = build_runs_report(done, args.out, stability=study.files["json"])
    print(format_summary(report.summary))
    print(f"report: {report.path}; stability plot: {study.files['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
