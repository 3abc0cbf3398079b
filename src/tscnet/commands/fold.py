"""``tscnet fold``: write the vanilla-architecture weights of a run (steps folded) as safetensors."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

NAME = "fold"
HELP = "fold a run's learned steps into its weights and save them as safetensors"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN", help="run folder or checkpoint.pt")
    parser.add_argument("--out", required=True, help="output .safetensors file (never overwritten)")


def run(args: argparse.Namespace) -> int:
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
    print(f"wrote {out}: {config['model']['name']} ({sum(p.numel() for p in folded.parameters()):,} parameters, "
          f"steps {config['model']['steps']} folded); load with "
          f"tscnet.create_model({config['model']['name']!r}, num_classes={config['model']['num_classes']}, "
          f"in_chans={config['model']['in_chans']}{extra}).load_state_dict(safetensors.torch.load_file(...))")
    return 0
