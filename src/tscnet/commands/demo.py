"""``tscnet demo``: step policies side by side on Fashion-MNIST, in minutes, where a study found a contrast.

Each contrast (:data:`CONTRASTS`) is one cell of a committed study, re-run for seed 0 with the
study's recipe: ``stability`` (the default) is the norm-free ResNet-20 at lr 0.1 without warm-up
from ``stability_normfree``, ``converged`` the BN ResNet-20 of the converged study, ``vit`` the
24-block ViT at AdamW lr 4e-3 without warm-up from ``vit_depth``. On a CPU the
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
    model: str
    overrides: tuple[str, ...]
    policies: tuple[str, ...]
    about: str  # one line: what the demo trains
    findings: str  # what the full study found (numbers checked against its summary.json)
    study: str  # the study's results folder under benchmarks/results/


RESULTS_URL = "https://github.com/tscnet/tscnet/blob/main/BENCHMARKS.md"

STABILITY_FINDINGS = f"""\
What the full study found (norm-free cifar_resnet20, Fashion-MNIST, 400 steps without warm-up;
final test error %, mean ± std over seeds 0-2; a run that diverged or ended at chance counts at 90 %):
  lr 0.1, 3 seeds: none 90.00 ± 0.00, tsc 90.00 ± 0.00, depth:0.5 26.17 ± 0.81,
    tsc-small 27.40 ± 0.53 (tsc started at 1/sqrt(D)), scalar:0 25.66 ± 0.84 (SkipInit).
  From dt = 1 the controller fails where vanilla fails; started at 1/sqrt(D) it ties the fixed rule.
  Nowhere in the 330-run stability study (norm-free and BN ResNets up to depth 110, lr up to 1.6)
  does adaptive stepping beat a fixed rule.
Full results: {RESULTS_URL}#verdict-the-stability-study"""

CONVERGED_FINDINGS = f"""\
What the full study found (BN ResNets, 10k images, 20 epochs with warm-up; final test error %,
mean ± std, Welch 95 % CI of the difference):
  cifar_resnet20, 5 seeds: none 9.69 ± 0.33, tsc 9.49 ± 0.17, depth:1 12.14 ± 0.29;
    tsc - none: -0.20 pp [-0.60, +0.21], a tie; depth:1 - none: +2.45 pp [+2.00, +2.90], worse.
    Every other policy ends within 9.49-10.01 %.
  At convergence the controller ties vanilla; only too small a total time (depth:1, T = 1) hurts.
Full results: {RESULTS_URL}#verdict-so-far-the-converged-study"""

VIT_FINDINGS = f"""\
What the full study found (timm ViTs of width 64 and 6-24 blocks, Fashion-MNIST, 400 AdamW steps
without warm-up, lr 0.00025-0.008; final test error %, mean ± std over seeds 0-2):
  mini_vit_d24 lr 0.004, 3 seeds: none 47.13 ± 5.56, tsc 56.04 ± 10.93, layerscale-1e-6
    27.79 ± 1.07, layerscale 28.65 ± 0.68, depth:0.5 30.04 ± 1.14, tsc-small 31.31 ± 0.73, tsc-norm
    30.82 ± 2.02.
  mini_vit_d24, each arm at its own best lr: layerscale-1e-6 27.79 ± 1.07 at 0.004, tsc-small
    30.07 ± 0.48 at 0.002, none 39.42 ± 0.58 at 0.0005, tsc 39.28 ± 1.19 at 0.0005.
  Best lr from 6 to 24 blocks: none 0.002 -> 0.0005, tsc 0.002 -> 0.0005, layerscale-1e-6
    0.004 -> 0.004.
  No controller beats LayerScale 1e-6 at any depth or lr, and only the LayerScale arms keep
  their best lr as the model gets deeper.
Full results: {RESULTS_URL}#verdict-the-deep-vit-study"""

CONTRASTS: dict[str, Contrast] = {
    # Evaluated once, at the end: train.eval_epochs changes no trained weight (tests/test_run_records.py).
    "stability": Contrast(
        "fashion_mnist_nowarmup",
        "cifar_resnet20",
        ("model.norm=none", "optim.lr=0.1", "train.eval_epochs=[-1]"),
        ("none", "tsc", "depth:0.5"),
        "norm-free ResNet-20 at lr 0.1 without warm-up: vanilla, TSC (from dt = 1) and dt = 1/sqrt(D)",
        STABILITY_FINDINGS,
        "stability_normfree",
    ),
    "converged": Contrast(
        "fashion_mnist_demo",
        "cifar_resnet20",
        (),
        ("none", "tsc", "depth:1"),
        "BN ResNet-20 with warm-up: vanilla, TSC and dt = 1/D",
        CONVERGED_FINDINGS,
        "converged",
    ),
    "vit": Contrast(
        "fashion_mnist_vit",
        "mini_vit_d24",
        ("optim.lr=0.004", "train.eval_epochs=[-1]"),
        ("none", "layerscale:1e-6", "tsc"),
        "24-block ViT at AdamW lr 4e-3 without warm-up: no branch scale, DeiT III's LayerScale 1e-6 and TSC",
        VIT_FINDINGS,
        "vit_depth",
    ),
}

NAME = "demo"
HELP = (
    "train step policies side by side on Fashion-MNIST where a study found a contrast "
    "(about 2-3 minutes on 2 idle cores)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contrast",
        choices=list(CONTRASTS),
        default="stability",
        help="; ".join(f"{name}: {c.about}" for name, c in CONTRASTS.items()),
    )
    parser.add_argument("--out", default="runs/demo", help="demo folder (a fresh numbered one if it exists)")
    parser.add_argument("--policies", nargs="+", help="step policies to compare (default: the contrast's)")
    parser.add_argument(
        "--model",
        help="model every policy trains (default: the contrast's, cifar_resnet20 or mini_vit_d24; "
        "see tscnet list models)",
    )
    parser.add_argument("--epochs", type=int, help="epochs per policy (default: the contrast's recipe)")
    parser.add_argument(
        "--train-subset", type=int, help="train on the first N images of a fixed shuffle (default: the recipe's)"
    )
    parser.add_argument("--test-subset", type=int, help="evaluate on N test images (default: the recipe's)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and the batches, the same for every policy (default 0)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key after the contrast's, e.g. --set optim.lr=0.03 (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        help="the data's folder (default for Fashion-MNIST: the Debian package's; "
        "with --set data.download=true it is fetched into this folder; another dataset with "
        "--set data.name=NAME)",
    )
    parser.add_argument("--device", default="auto", help="auto (default: a GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument(
        "--jobs",
        type=int,
        help="policies trained at once, each a process (default: all of them on a CPU, "
        "one at a time on a GPU); the cores are shared out between them",
    )
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
    from ..analysis.report import build_runs_report, format_summary
    from ..data import check_data
    from ..errors import UserError
    from ..stepping import parse_policy
    from ..study.sweep import Job, run_sweep
    from ..train import fit, load_config
    from ..train.config import set_value, validate_config
    from ..train.engine import TrainingDiverged
    from .common import check_out_folder

    contrast = CONTRASTS[args.contrast]
    model = args.model or contrast.model
    configs = []
    for policy in args.policies or contrast.policies:  # every config checked before any training
        parse_policy(policy)
        config = load_config(contrast.recipe, [*contrast.overrides, *args.set], validate=False)
        for key, value in (
            ("model.name", model),
            ("model.steps", policy),
            ("train.epochs", args.epochs),
            ("data.train_subset", args.train_subset),
            ("data.test_subset", args.test_subset),
            ("train.seed", args.seed),
            ("data.data_dir", args.data_dir),
            ("train.device", args.device),
        ):
            set_value(config, key, value)
        config["train"]["progress"] = not args.no_progress
        configs.append((policy, validate_config(config)))
    jobs = default_jobs(len(configs), args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    data = configs[0][1]["data"]  # the same for every policy; unreadable data: one line, before any folder
    info = check_data(
        data["name"],
        data["data_dir"],
        image_size=data["image_size"],
        train_subset=data["train_subset"],
        test_subset=data["test_subset"],
        download=data["download"],
    )
    out = check_out_folder(fresh_folder(Path(args.out)))  # a file where a parent folder goes is refused
    print(f"tscnet demo ({args.contrast}): {contrast.about}")
    runs = [out / f"{model}-{str(policy).replace(':', '')}" for policy, _ in configs]
    for (policy, config), run_dir in zip(configs, runs):
        print(
            f"== {model} with steps={policy}: {config['train']['epochs']} epochs on "
            f"{config['data']['train_subset'] or 'all'} {info.name} images at lr {config['optim']['lr']} "
            f"-> {run_dir}"
        )
    if jobs > 1:  # one process per policy, the cores shared out
        jobs = min(jobs, len(configs))
        left = run_sweep(
            [Job(config, run_dir) for (_, config), run_dir in zip(configs, runs)],
            workers=jobs,
            threads=max(1, len(os.sched_getaffinity(0)) // jobs),
            progress=not args.no_progress,
        )
        if left:
            raise UserError(f"training did not finish for {', '.join(j.out.name for j in left)} (see above)")
    else:
        for (policy, config), run_dir in zip(configs, runs):
            try:
                fit(config, run_dir)
            except TrainingDiverged as error:  # a result of the comparison (counted at chance), not a failure
                print(f"   {policy}: {error}")
    report = build_runs_report(runs, out)
    print()
    print(format_summary(report.summary))
    print(f"\nreport with training curves and learned steps: {report.path}")
    print(f"\n{contrast.findings}")
    return 0
