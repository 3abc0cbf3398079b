"""``tscnet demo``: the vanilla and the ``tsc`` ResNet-20 side by side on Fashion-MNIST, in minutes."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "train vanilla and TSC ResNet-20 side by side on Fashion-MNIST (a few minutes on 2 cores)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="demo folder (a fresh numbered one if it exists)")
    parser.add_argument("--policies", nargs="+", default=["none", "tsc"], help="step policies to compare")
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
        fit(config, run_dir)
        runs.append(run_dir)
    report = build_report(runs, out)
    print()
    print(format_summary(report.summary))
    print(f"\nreport with training curves and learned steps: {report.path}")
    return 0
