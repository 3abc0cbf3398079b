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
    return runfiles.model_from_checkpoint(path, device=device)
