"""Helpers shared by the commands that read a run or a checkpoint."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UserError
from ..train import run as runfiles


def load_model(source: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """``(model with steps, config)`` from a run folder or a checkpoint file (``weights_only`` load)."""
    path = Path(source)
    if path.is_dir():
        run = runfiles.load_run(path, device=device)
        return run.model, run.config
    if not path.is_file():
        raise UserError(f"{source} is neither a run folder nor a checkpoint file")
    checkpoint = runfiles.load_checkpoint(path, map_location=device)
    if "config" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{source} is not a tscnet checkpoint (no config/model entries)")
    config = checkpoint["config"]
    runfiles.check_checkpoint_matches(checkpoint, config, path)
    model = runfiles.build_model_from_config(config).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config
