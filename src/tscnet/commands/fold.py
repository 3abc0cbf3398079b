"""``tscnet fold``: write the vanilla-architecture weights of a run (steps folded) as safetensors,
or, for a timm-family model, as a timm model folder (``config.json`` + ``model.safetensors``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError

NAME = "fold"
HELP = "fold a run's learned steps into its weights and save them as safetensors or a timm model folder"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN", help="run folder or checkpoint.pt")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output .safetensors file (never overwritten)")
    target.add_argument(
        "--timm-dir",
        metavar="DIR",
        help="timm-family models: write DIR/config.json + DIR/model.safetensors, the folder "
        "timm.create_model('local-dir:DIR', pretrained=True) loads and the Hub hosts "
        "(DIR must not exist or be empty)",
    )


def run(args: argparse.Namespace) -> int:
    if args.timm_dir is not None:
        return _run_timm_dir(args)
    from ..train.run import model_options, save_folded
    from .common import load_model

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out (earlier results are never overwritten)")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    model, config = load_model(args.source, folded_ok=True)  # a run without checkpoint.pt: already folded
    folded = save_folded(model, out, {"model": config["model"]["name"], "steps": config["model"]["steps"]})
    extra = "".join(f", {key}={value!r}" for key, value in model_options(config).items())
    print(
        f"wrote {out}: {config['model']['name']} ({sum(p.numel() for p in folded.parameters()):,} parameters, "
        f"steps {config['model']['steps']} folded); load with "
        f"tscnet.create_model({config['model']['name']!r}, num_classes={config['model']['num_classes']}, "
        f"in_chans={config['model']['in_chans']}{extra}).load_state_dict(safetensors.torch.load_file(...))"
    )
    return 0


def _run_timm_dir(args: argparse.Namespace) -> int:
    from ..hub import is_timm_model, run_data_config, save_timm_folder
    from ..train.run import CARD_FILE
    from .common import load_model

    directory = Path(args.timm_dir)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(
            f"{directory} already exists and is not an empty folder; choose another --timm-dir "
            "(earlier results are never overwritten)"
        )
    if not directory.parent.is_dir():
        raise UserError(f"folder {directory.parent} does not exist")
    model, config = load_model(args.source, folded_ok=True)
    name = config["model"]["name"]
    if not is_timm_model(model):
        raise UserError(
            f"--timm-dir needs a timm-family model; this run's model is {name} (save it with --out FILE.safetensors)"
        )
    card_file = Path(args.source) / CARD_FILE
    card = {"model": name, "steps": config["model"]["steps"]}
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{card_file} is not valid JSON ({error}); the run's model card is damaged") from None
    save_timm_folder(model, directory, data_config=run_data_config(config), model_card=card)
    print(
        f"wrote {directory}: {name} with steps {config['model']['steps']} folded (config.json, model.safetensors, "
        f"model_card.json); load with timm.create_model('local-dir:{directory}', pretrained=True)"
    )
    return 0
