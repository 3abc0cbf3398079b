"""Helpers shared by the commands that read a run or a checkpoint."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UserError
from ..train import run as runfiles


def load_model(source: str, device: str = "cpu", folded_ok: bool = False) -> tuple[nn.Module, dict]:
    """``(model with steps, config)`` from a run folder or a checkpoint file (``weights_only`` load).

    With ``folded_ok``, a finished run whose checkpoint.pt is gone (deleted for disk space) gives
    its folded model instead: the vanilla architecture with model.safetensors loaded (no steps).
    """
    path = Path(source)
    if path.is_dir():
        if folded_ok and not (path / runfiles.CHECKPOINT_FILE).exists() and (path / runfiles.FOLDED_FILE).exists():
            return load_folded(path, device), runfiles.read_config(path)
        run = runfiles.load_run(path, device=device)
        return run.model, run.config
    if not path.is_file():
        raise UserError(f"{source} is neither a run folder nor a checkpoint file")
    return runfiles.model_from_checkpoint(path, device=device)


def load_folded(run_dir: Path, device: str = "cpu") -> nn.Module:
    """The vanilla-architecture model of a finished run from its model.safetensors (steps folded in)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..models import create_model

    config = runfiles.read_config(run_dir)
    m = config["model"]
    model = create_model(m["name"], num_classes=m["num_classes"], in_chans=m["in_chans"], steps="none")
    path = Path(run_dir) / runfiles.FOLDED_FILE
    try:
        model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UserError(f"{path} does not hold the folded {m['name']} of this run: {str(error).splitlines()[0]}") from None
    return model.to(device).eval()
