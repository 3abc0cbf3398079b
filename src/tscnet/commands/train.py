"""``tscnet train``: train one model/policy pair on real data into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

NAME = "train"
HELP = "train a model with a step policy (one CPU, one GPU, or torchrun for many)"

# flag -> config key; a flag that is given overrides the recipe.
FLAGS = {
    "model": "model.name",
    "steps": "model.steps",
    "data": "data.name",
    "data_dir": "data.data_dir",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "train_subset": "data.train_subset",
    "test_subset": "data.test_subset",
    "seed": "train.seed",
    "device": "train.device",
    "lr": "optim.lr",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="recipe: a YAML file or a name from configs/ (e.g. cifar10_resnet56)")
    parser.add_argument("--model", help="model name, e.g. cifar_resnet20, resnet50, tv:resnet50")
    parser.add_argument(
        "--steps",
        help="step policy: none, fixed:V, depth:P, scalar[:I], channel[:I], layerscale[:I], "
        "profile:RUN_OR_FILE, mlp, tsc",
    )
    parser.add_argument("--data", help="dataset: fashion-mnist, mnist, cifar10, cifar100, imagefolder")
    parser.add_argument("--data-dir", help="folder holding the dataset's files")
    parser.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's train.epochs)")
    parser.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    parser.add_argument("--lr", type=float, help="base learning rate (default: the recipe's optim.lr)")
    parser.add_argument("--train-subset", type=int, help="train on the first N of a fixed shuffle")
    parser.add_argument("--test-subset", type=int, help="evaluate on N test images only (quick runs)")
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of the initial weights, the batches and the augmentation (default: the recipe's train.seed)",
    )
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set optim.lr=0.05 (repeatable)",
    )
    parser.add_argument("--out", help="run folder (default runs/<model>-<steps>-<data>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")


def build_config(args: argparse.Namespace) -> dict:
    from ..train.config import load_config, set_value, validate_config

    config = load_config(args.config, args.set, validate=False)
    for flag, key in FLAGS.items():
        set_value(config, key, getattr(args, flag))
    if args.no_progress:
        config["train"]["progress"] = False
    return validate_config(config)  # flags included: the recipe may set what a flag then fixes


def check_out(out: Path) -> Path:
    """``--out`` must be a folder or not exist yet (nor may a file stand where a parent folder goes)."""
    from .common import check_out_folder

    return check_out_folder(out)


def default_out(config: dict) -> Path:
    steps = str(config["model"]["steps"]).replace(":", "").replace(",", "_").replace("=", "").replace("/", "_")
    name = config["model"]["name"].replace(":", "-")
    return Path("runs") / f"{name}-{steps}-{config['data']['name']}-seed{config['train']['seed']}"


def _given_keys(args: argparse.Namespace) -> list[str]:
    """The config keys the command line sets: its flags, its ``--set`` keys and its recipe's keys."""
    import yaml

    from ..train.config import resolve_config_path

    keys = [key for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    keys += [item.partition("=")[0].strip() for item in args.set]
    if args.config:
        recipe = yaml.safe_load(resolve_config_path(args.config).read_text()) or {}
        keys += [f"{section}.{key}" for section, values in recipe.items() if isinstance(values, dict) for key in values]
    return list(dict.fromkeys(keys))


def check_resume(args: argparse.Namespace, saved: dict) -> None:
    """``--resume`` added to the command that started a run is accepted; a flag that would change
    the saved config is refused, naming every such key with its saved and given values. A key the
    recipe leaves to the data (``model.num_classes: null``) matches the value the run resolved, so
    a study's cell recipe resumes its run (a requeued Slurm job runs ``--config RECIPE --resume``)."""
    from ..train.config import get, same_setting

    given = build_config(args)
    conflicts = [
        f"{key} (saved {get(saved, key)!r}, given {get(given, key)!r})"
        for key in _given_keys(args)
        if not same_setting(key, get(saved, key), get(given, key))
    ]
    if conflicts:
        raise UserError(
            "--resume continues the run with its saved config, and these flags differ from it: "
            + "; ".join(conflicts)
            + " — drop them or start a new run with another --out"
        )


def run(args: argparse.Namespace) -> int:
    from ..train import fit
    from ..train.run import read_config, require_run

    if args.resume:
        # Pressing ↑ and adding --resume: the same flags find the same (default) run folder.
        out = check_out(Path(args.out) if args.out else default_out(build_config(args)))
        check_resume(args, read_config(require_run(out)))
        fit({}, out, resume=True)
        return 0
    config = build_config(args)
    fit(config, check_out(Path(args.out) if args.out else default_out(config)))
    return 0
