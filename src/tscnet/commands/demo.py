"""``tscnet demo``: step policies side by side on Fashion-MNIST, in minutes, where a study found a contrast.

Each contrast (:data:`CONTRASTS`) is one cell of a committed study, re-run for seed 0 with the
study's recipe: ``stability`` (the default) is the norm-free ResNet-20 at lr 0.1 without warm-up
from ``stability_normfree``, ``converged`` the BN ResNet-20 of the converged study. On a CPU the
policies train at once, one process each with the cores shared out (two one-thread processes beat
one two-thread process on CIFAR-size models); on a GPU, in turn. A policy that diverges is a result
(it counts at chance error), not a failure of the demo. Each contrast's
``findings`` say what the full study found, in numbers that ``tests/test_demo.py`` checks against
the study's committed ``summary.json``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Contrast:
    """A demo: the recipe and overrides of a study cell, the policies it compares, what the study found."""

    recipe: str
    overrides: tuple[str, ...]
    policies: tuple[str, ...]
    about: str       # one line: what the demo trains
    findings: str    # what the full study found (numbers checked against its summary.json)
    study: str       # the study's results folder under benchmarks/results/


STABILITY_FINDINGS = """\
What the study found (python benchmarks/study.py --commit stability_normfree; norm-free
cifar_resnet20, Fashion-MNIST 2560 images, 400 steps of batch 64, no warm-up, cosine; final-epoch
test error %, mean ± std over seeds 0-2; a run that diverged or ended at chance level counts at
90 %; benchmarks/results/stability_normfree/report.md):
  lr 0.1, 3 seeds: none 90.00 ± 0.00, tsc 90.00 ± 0.00 (all 3 seeds fail), depth:0.5 26.17 ± 0.81,
    tsc-small 27.40 ± 0.53 (tsc started at 1/sqrt(D)), tsc-norm 27.23 ± 0.58 (+ the branch norm),
    scalar:0 25.66 ± 0.84 (SkipInit, the best), depth:1 33.75 ± 0.94, fixed:0.1 34.90 ± 0.64.
  lr 0.3, 3 seeds: fixed:0.1 28.11 ± 0.93 and depth:1 27.56 ± 1.04 train in every seed; depth:0.5,
    tsc-small and tsc-norm fail in 2 of 3, none, tsc and scalar:0 in all 3.
  lr 0.03, 3 seeds: none 47.88 ± 30.11, tsc 42.42 ± 16.61, depth:0.5 32.33 ± 1.06,
    tsc-small 31.93 ± 1.09, scalar:0 31.67 ± 1.81.
  (dt = 1 is erratic there: one seed of none ends near chance, the seeds of tsc spread over 33 pp.)
  lr 0.01, 3 seeds: none 32.38 ± 3.96, tsc 35.68 ± 6.59, depth:0.5 39.96 ± 4.07, fixed:0.1 75.87 ± 4.93.
  The controller does not extend the stable range: from dt = 1 it fails where vanilla fails and is
  as erratic below, from 1/sqrt(D) it fails where the fixed 1/sqrt(D) fails and ties that rule
  where both train; the norm input changes neither. What sets the largest stable lr is steps that
  are small and stay small (fixed); learned scales, SkipInit's from 0 too, grow and fail at lr 0.3.
  Small steps cost speed at small lr: at 0.01 the dt = 1 arms lead.
Norm-free cifar_resnet56, same recipe; with dt = 1 its forward map has exploded before the first
update (first loss ~2.5e3), so none and tsc diverge at every lr (0.03, 0.1 and 0.3):
  cifar_resnet56 lr 0.1, 3 seeds: none 90.00 ± 0.00, tsc 90.00 ± 0.00 (NaN at step 2 in every seed),
    depth:0.5 28.08 ± 0.34, tsc-small 30.02 ± 1.65, tsc-norm 29.44 ± 1.78,
    scalar:0 42.01 ± 24.63 (one seed at 70 %), depth:1 41.11 ± 1.33.
  cifar_resnet56 lr 0.3, 3 seeds: fixed:0.1 27.52 ± 1.58 (the best arm), tsc-small 38.96 ± 6.01
    and tsc-norm 35.17 ± 3.98 train in every seed; depth:0.5 fails in 1 of 3, layerscale in 2,
    scalar:0 and fixup in all 3.
  Started at 1/sqrt(D), the controllers tie the fixed rules where those train and are the trained
  arms least sensitive to the lr (spread 5.7-8.9 pp over 0.03-0.3), not significantly with 3 seeds.
BN cifar_resnet56 and cifar_resnet110 without warm-up (python benchmarks/study.py --commit stability_bn;
same recipe, BN ending every branch; benchmarks/results/stability_bn/report.md):
  BN cifar_resnet56 lr 0.4, 3 seeds: none 68.35 ± 6.81 (gamma = 1), zero-gamma 22.47 ± 1.68 (no steps),
    fixed:0.5 34.93 ± 9.48, depth:0.5 19.69 ± 0.65, tsc-small 20.07 ± 0.91, tsc-norm 19.11 ± 0.37.
  BN cifar_resnet56 lr 0.1, 3 seeds: none 42.81 ± 15.71, tsc 32.50 ± 10.28, depth:0.5 18.82 ± 0.64.
  BN cifar_resnet110 lr 0.4, 3 seeds: none 90.00 ± 0.00 (chance in every seed), zero-gamma 25.47 ± 2.49,
    depth:0.5 18.78 ± 0.31, tsc-small 19.61 ± 1.02, tsc-norm 19.30 ± 1.22.
  BN cifar_resnet110 lr 1.6, 3 seeds: depth:0.5 29.23 ± 9.77, tsc-small 46.41 ± 29.34,
    tsc-norm 39.33 ± 12.89 (each controller with one poor seed); none, tsc and scalar:0 at chance.
  Under BN a step rescales the branch's last gamma, so what helps is a small start, which zero-gamma
  (the last gamma at 0) gets without steps, though it falls behind 1/sqrt(D) at depth 110. The fixed
  1/sqrt(D) is the best peer at both depths and trains in every seed up to lr 1.6; the controllers
  started there tie it at its best lr and trail it, within the noise, at 1.6. From dt = 1 the
  controller keeps vanilla's bad start; SkipInit (scalar:0) ends at chance from lr 0.4 up.
Nowhere in the study does adaptive stepping beat a fixed rule."""

CONVERGED_FINDINGS = """\
What the full study found (python benchmarks/converged.py; Fashion-MNIST, 10k training images,
20 epochs, warm-up + cosine, the same seeds for every policy; final-epoch test error %, mean ± std,
Welch 95 % CI of each difference; benchmarks/results/converged/report.md):
  cifar_resnet20, 5 seeds: none 9.69 ± 0.33, tsc 9.49 ± 0.17, depth:1 12.14 ± 0.29;
    best controller-free peer scalar:0 9.67 ± 0.35; tsc's ablations: profile-of:tsc 9.64 ± 0.29
    (its learned Δt frozen from the first step), fixed-of:tsc 9.55 ± 0.28 (a uniform step at its T/D).
  tsc - none: -0.20 pp [-0.60, +0.21], a tie; depth:1 - none: +2.45 pp [+2.00, +2.90], worse.
  Every other policy ends within 9.49-10.01 %: nothing beyond noise is due to the controller. What
  hurts is a small total time T (the sum of the steps): depth:1 has T = 1, none T = 9.
  cifar_resnet56, 3 seeds: none 9.61 ± 0.23, tsc 9.97 ± 0.52, depth:1 13.62 ± 0.18,
    fixed:0.5 8.98 ± 0.23 (the best); profile-of:tsc 9.29 ± 0.25 (better than tsc itself).
  tsc - none: +0.36 pp [-0.73, +1.46], a tie; depth:1 - none: +4.01 pp [+3.52, +4.49], worse;
  fixed:0.5 - none: -0.63 pp [-1.15, -0.11], a lead only (corrected for the 10 comparisons with
  none, fixed:0.5 Holm p = 0.26).
  Every other policy ends within 8.98-9.97 %. The controller shrinks the steps early (T from 27
  to 17) and lets them grow back: tsc has T = 20 at the end, none T = 27. Learning the steps
  brings no gain; a constant half step leads Δt = 1 by a margin that more seeds must confirm."""

CONTRASTS: dict[str, Contrast] = {
    # Evaluated once, at the end: train.eval_epochs changes no trained weight (tests/test_run_records.py).
    "stability": Contrast(
        "fashion_mnist_nowarmup", ("model.norm=none", "optim.lr=0.1", "train.eval_epochs=[-1]"),
        ("none", "tsc", "depth:0.5"),
        "norm-free ResNet-20 at lr 0.1 without warm-up: vanilla, TSC (from dt = 1) and dt = 1/sqrt(D)",
        STABILITY_FINDINGS, "stability_normfree"),
    "converged": Contrast(
        "fashion_mnist_demo", (), ("none", "tsc", "depth:1"),
        "BN ResNet-20 with warm-up: vanilla, TSC and dt = 1/D", CONVERGED_FINDINGS, "converged"),
}

NAME = "demo"
HELP = ("train step policies side by side on Fashion-MNIST where the stability study found a contrast "
        "(2.5-4 minutes on 2 cores)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contrast", choices=list(CONTRASTS), default="stability",
                        help="; ".join(f"{name}: {c.about}" for name, c in CONTRASTS.items()))
    parser.add_argument("--out", default="runs/demo", help="demo folder (a fresh numbered one if it exists)")
    parser.add_argument("--policies", nargs="+", help="step policies to compare (default: the contrast's)")
    parser.add_argument("--model", default="cifar_resnet20",
                        help="model every policy trains (default: cifar_resnet20; see tscnet list models)")
    parser.add_argument("--epochs", type=int, help="epochs per policy (default: the contrast's recipe)")
    parser.add_argument("--train-subset", type=int,
                        help="train on the first N images of a fixed shuffle (default: the recipe's)")
    parser.add_argument("--test-subset", type=int, help="evaluate on N test images (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and the batches, the same for every policy (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key after the contrast's, e.g. --set optim.lr=0.03 (repeatable)")
    parser.add_argument("--data-dir", help="the data's folder (default for Fashion-MNIST: the Debian package's; "
                        "another dataset with --set data.name=NAME)")
    parser.add_argument("--device", default="auto", help="auto (default: a GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument("--jobs", type=int,
                        help="policies trained at once, each a process (default: all of them on a CPU, "
                             "one at a time on a GPU); the cores are shared out between them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the demo never writes over an earlier one."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def default_jobs(policies: int, device: str) -> int:
    """All policies at once on a CPU, where one-thread processes use the cores better than one
    process with many threads (CIFAR-size models); one at a time on a GPU."""
    import torch

    on_gpu = device != "cpu" and (device != "auto" or torch.cuda.is_available())
    return 1 if on_gpu else max(1, policies)


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import build_report, format_summary
    from ..data import check_data
    from ..errors import UserError
    from ..stepping import parse_policy
    from ..train import fit, load_config
    from ..train.config import set_value, validate_config
    from ..train.engine import TrainingDiverged
    from ..study.sweep import Job, run_sweep
    from .common import check_out_folder

    contrast = CONTRASTS[args.contrast]
    configs = []
    for policy in args.policies or contrast.policies:  # every config checked before any training
        parse_policy(policy)
        config = load_config(contrast.recipe, [*contrast.overrides, *args.set], validate=False)
        for key, value in (("model.name", args.model), ("model.steps", policy), ("train.epochs", args.epochs),
                           ("data.train_subset", args.train_subset), ("data.test_subset", args.test_subset),
                           ("train.seed", args.seed), ("data.data_dir", args.data_dir),
                           ("train.device", args.device)):
            set_value(config, key, value)
        config["train"]["progress"] = not args.no_progress
        configs.append((policy, validate_config(config)))
    jobs = default_jobs(len(configs), args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    data = configs[0][1]["data"]  # the same for every policy; unreadable data: one line, before any folder
    info = check_data(data["name"], data["data_dir"], image_size=data["image_size"], train_subset=data["train_subset"],
                      test_subset=data["test_subset"], download=data["download"])
    out = check_out_folder(fresh_folder(Path(args.out)))  # a file where a parent folder goes is refused
    print(f"tscnet demo ({args.contrast}): {contrast.about}")
    runs = [out / f"{args.model}-{str(policy).replace(':', '')}" for policy, _ in configs]
    for (policy, config), run_dir in zip(configs, runs):
        print(f"== {args.model} with steps={policy}: {config['train']['epochs']} epochs on "
              f"{config['data']['train_subset'] or 'all'} {info.name} images at lr {config['optim']['lr']} "
              f"-> {run_dir}")
    if jobs > 1:  # one process per policy, the cores shared out
        jobs = min(jobs, len(configs))
        left = run_sweep([Job(config, run_dir) for (_, config), run_dir in zip(configs, runs)], workers=jobs,
                         threads=max(1, len(os.sched_getaffinity(0)) // jobs), progress=not args.no_progress)
        if left:
            raise UserError(f"training did not finish for {', '.join(j.out.name for j in left)} (see above)")
    else:
        for (policy, config), run_dir in zip(configs, runs):
            try:
                fit(config, run_dir)
            except TrainingDiverged as error:  # a result of the comparison (counted at chance), not a failure
                print(f"   {policy}: {error}")
    report = build_report(runs, out)
    print()
    print(format_summary(report.summary))
    print(f"\nreport with training curves and learned steps: {report.path}")
    print(f"\n{contrast.findings}")
    return 0
