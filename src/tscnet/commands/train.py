"""``tscnet train``: train one model/policy pair on real data into a run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

NAME = "train"
HELP = "train a model with a step policy (one CPU, one GPU, or torchrun for many)"

# flag -> config key; a flag that is given overrides the recipe.
FLAGS = {
    "model": "model.name", "steps": "model.steps", "data": "data.name", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "data.batch_size", "train_subset": "data.train_subset",
    "test_subset": "data.test_subset", "seed": "train.seed", "device": "train.device", "lr": "optim.lr",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="recipe: a YAML file or a name from configs/ (e.g. cifar10_resnet56)")
    parser.add_argument("--model", help="model name, e.g. cifar_resnet20, resnet50, tv:resnet50")
    parser.add_argument("--steps", help="step policy: none, fixed:V, depth:P, scalar[:I], channel[:I], layerscale[:I], "
                        "profile:RUN_OR_FILE, mlp, tsc")
    parser.add_argument("--data", help="dataset: fashion-mnist, mnist, cifar10, cifar100, imagefolder")
    parser.add_argument("--data-dir", help="folder holding the dataset's files")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--train-subset", type=int, help="train on the first N of a fixed shuffle")
    parser.add_argument("--test-subset", type=int, help="evaluate on N test images only (quick runs)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--out", help="run folder (default runs/<model>-<steps>-<data>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")


def build_config(args: argparse.Namespace) -> dict:
    from ..train.config import load_config, set_value

    config = load_config(args.config, args.set)
    for flag, key in FLAGS.items():
        set_value(config, key, getattr(args, flag))
    if args.no_progress:
        config["train"]["progress"] = False
    return config


def default_out(config: dict) -> Path:
    steps = str(config["model"]["steps"]).replace(":", "").replace(",", "_").replace("=", "").replace("/", "_")
    name = config["model"]["name"].replace(":", "-")
    return Path("runs") / f"{name}-{steps}-{config['data']['name']}-seed{config['train']['seed']}"


def run(args: argparse.Namespace) -> int:
    from ..train import fit

    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_FOLDER")
        given = [f"--{f.replace('_', '-')}" for f in FLAGS if getattr(args, f) is not None]
        given += ["--config"] * bool(args.config) + ["--set"] * bool(args.set)
        if given:
            raise UserError(f"--resume continues the run with its saved config; drop {', '.join(given)}")
        fit({}, Path(args.out), resume=True)
        return 0
    config = build_config(args)
    fit(config, Path(args.out) if args.out else default_out(config))
    return 0
