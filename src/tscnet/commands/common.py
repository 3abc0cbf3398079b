"""Helpers shared by the commands that read a run or a checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import UserError

if TYPE_CHECKING:  # torch is imported where a command runs, not when `tscnet --help` lists the commands
    from torch import nn


def check_out_folder(out: Path, flag: str = "--out", writes: Iterable[str] = (), overwrite: bool = False) -> Path:
    """An output folder that exists or can be made: no file stands at ``out`` or at a parent of it,
    and (unless ``overwrite``) none of the files ``writes`` names is there from an earlier call."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = f"{flag} {out}" if path == out else f"{flag} {out}: {path}"
                raise UserError(f"{where} is a file, not a folder; choose another {flag}")
            break
    earlier = [name for name in writes if (out / name).exists()]
    if earlier and not overwrite:
        raise UserError(
            f"{flag} {out} already holds {', '.join(earlier)} from an earlier call; "
            f"choose another {flag}, or pass --overwrite to replace them"
        )
    return out


def check_device(name: str, flag: str = "--device") -> str:
    """A device torch knows (cpu, cuda, cuda:N, ...), available here."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{flag} must be a device such as cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {name} asked for, but CUDA is not available here; use {flag} cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{flag} {name}: there are only {torch.cuda.device_count()} CUDA devices here")
    return name


def load_model(source: str, device: str = "cpu", folded_ok: bool = False) -> tuple[nn.Module, dict]:
    """``(model with steps, config)`` from a run folder or a checkpoint file (``weights_only`` load).

    With ``folded_ok``, a finished run whose checkpoint.pt is gone (deleted for disk space) gives
    its folded model instead: the vanilla architecture with model.safetensors loaded (no steps).
    """
    from ..train import run as runfiles

    path = Path(source)
    if path.is_dir():
        if folded_ok and not (path / runfiles.CHECKPOINT_FILE).exists() and (path / runfiles.FOLDED_FILE).exists():
            return runfiles.model_from_folded(path, device=device), runfiles.read_config(path)
        run = runfiles.load_run(path, device=device)
        return cast("nn.Module", run.model), run.config  # load_run's with_model=True: never None
    if not path.is_file():
        raise UserError(f"{source} is neither a run folder nor a checkpoint file")
    return runfiles.model_from_checkpoint(path, device=device)
