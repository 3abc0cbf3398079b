"""``tscnet demo``: vanilla, ``tsc`` and Δt = 1/D ResNet-20 side by side on Fashion-MNIST, in minutes.

The three policies show the clearest effect of the converged study (``benchmarks/converged.py``):
what matters is the total time T = Σ_d mean_c Δt_d the steps add up to. The controller keeps T
near the vanilla network's and ends where it does; the neural-ODE scaling Δt = 1/D (T = 1) is
clearly worse. :data:`STUDY_FINDINGS` says what the full study found, in numbers that
``tests/test_demo.py`` checks against ``benchmarks/results/converged/summary.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "train vanilla, TSC and Δt=1/D ResNet-20 side by side on Fashion-MNIST (about 3 minutes on 2 cores)"
POLICIES = ["none", "tsc", "depth:1"]
STUDY_FINDINGS = """\
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


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="demo folder (a fresh numbered one if it exists)")
    parser.add_argument("--policies", nargs="+", default=POLICIES, help="step policies to compare")
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--test-subset", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the demo never writes over an earlier one."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import build_report, format_summary
    from ..stepping import parse_policy
    from ..train import fit, load_config
    from ..train.engine import TrainingDiverged
    from ..train.config import set_value, validate_config
    from .common import check_out_folder

    configs = []
    for policy in args.policies:  # every config checked before any training
        parse_policy(policy)
        config = load_config("fashion_mnist_demo", validate=False)
        for key, value in (("model.name", args.model), ("model.steps", policy), ("train.epochs", args.epochs),
                           ("data.train_subset", args.train_subset), ("data.test_subset", args.test_subset),
                           ("train.seed", args.seed), ("data.data_dir", args.data_dir),
                           ("train.device", args.device)):
            set_value(config, key, value)
        config["train"]["progress"] = not args.no_progress
        configs.append((policy, validate_config(config)))
    out = check_out_folder(fresh_folder(Path(args.out)))  # a file where a parent folder goes is refused
    runs = []
    for policy, config in configs:
        run_dir = out / f"{args.model}-{str(policy).replace(':', '')}"
        print(f"== {args.model} with steps={policy}: {config['train']['epochs']} epochs on "
              f"{config['data']['train_subset'] or 'all'} Fashion-MNIST images -> {run_dir}")
        try:
            fit(config, run_dir)
        except TrainingDiverged as error:  # a result of the comparison (counted at chance), not a failure
            print(f"   {policy}: {error}")
        runs.append(run_dir)
    report = build_report(runs, out)
    print()
    print(format_summary(report.summary))
    print(f"\nreport with training curves and learned steps: {report.path}")
    print(f"\n{STUDY_FINDINGS}")
    return 0
