"""The run folder: everything one training run leaves behind, and how to read it back.

::

    RUN/config.yaml        the resolved recipe (model.num_classes / in_chans filled in)
    RUN/metrics.jsonl      one JSON line per finished epoch (see :data:`METRIC_KEYS`)
    RUN/checkpoint.pt      the last epoch's state (atomic write; ``torch.load(weights_only=True)``)
    RUN/model.safetensors  the folded, vanilla-architecture weights (at the end)
    RUN/steps.json         the final Δt of every block and channel (at the end; ``profile:RUN`` reads it)
    RUN/platform.json      where it ran: torch, CPU model or GPU, threads, host (one entry per machine)
    RUN/diverged.json      only if the loss became NaN/inf: step, epoch, batch, loss, message
    RUN/model_card.json    model, policy, data, final metrics, commit, platform (at the end, written last)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..errors import UserError
from ..formats import check_format
from ..jobs.run_folder import RunFolder

# The file names are the run folder's (tscnet.jobs.run_folder.RunFolder), named here for the engine.
CONFIG_FILE = RunFolder.CONFIG
METRICS_FILE = RunFolder.METRICS
CHECKPOINT_FILE = RunFolder.CHECKPOINT
FOLDED_FILE = RunFolder.FOLDED
CARD_FILE = RunFolder.CARD
STEPS_FILE = RunFolder.STEPS  # tscnet.stepping.profile.PROFILE_FILE
DIVERGED_FILE = RunFolder.DIVERGED  # where the loss became non-finite (written by the engine)

METRIC_KEYS = (
    "epoch",  # 1-based
    "lr",  # learning rate at the end of the epoch
    "train_loss",
    "train_acc",
    "test_loss",
    "test_top1",
    "test_top5",
    "test_error",  # accuracies and error in %
    "evolution_time",  # T = Σ_d mean_c Δt_d
    "dt_mean",  # [mean_c Δt_d for each block d]
    "epoch_time",
    "images_per_s",
    "loss_at_step",  # {"100": mean train loss of steps 81..100, ...} for train.loss_steps in this epoch
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Raises:
        UserError: the write failed (read-only folder, disk full, ...); ``path`` is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise UserError(
            f"cannot write {path}: {error.strerror or error}; the previous {path.name} is untouched"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(
                f"cannot write {path}: {error.strerror or error}; the previous {path.name} is untouched"
            ) from None
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_folded(model: nn.Module, path: Path, metadata: dict | None = None) -> nn.Module:
    """Fold ``model``'s steps and save the vanilla weights as safetensors; returns the folded model."""
    from safetensors.torch import save_file

    from ..stepping import fold_steps

    folded = fold_steps(model)
    state = {k: v.detach().cpu().contiguous() for k, v in folded.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return folded


def require_run(run_dir: Path) -> Path:
    """``run_dir`` as a ``Path``, checked to be a run folder (it holds the run's config).

    Raises:
        UserError: it is not one.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(
            f"{run_dir} is not a tscnet run folder (no {CONFIG_FILE}); train one with `tscnet train --out DIR`"
        )
    return run_dir


def read_config(run_dir: Path) -> dict:
    """A run's resolved config, checked like a recipe (known keys, types, ranges): a corrupt or
    edited ``config.yaml`` is a one-line error naming the file, never a traceback."""
    from .config import load_config

    path = require_run(run_dir) / CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid YAML ({str(error).splitlines()[0]}); the run's config is damaged"
        ) from None
    if not isinstance(saved, dict):
        raise UserError(
            f"{path} must be a mapping of sections (model, data, optim, sched, train), got {type(saved).__name__}"
        )
    missing = [
        k
        for k in ("model.name", "model.steps", "data.name")
        if not isinstance(saved.get(k.split(".")[0]), dict) or k.split(".")[1] not in saved[k.split(".")[0]]
    ]
    if missing:
        raise UserError(f"{path} does not say which run it is: no {', '.join(missing)}")
    try:
        return load_config(saved)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def read_diverged(run_dir: Path) -> dict | None:
    """The run's ``diverged.json`` (where its loss became non-finite, written by the engine), ``None``
    for a run that did not diverge; a damaged record is a one-line error."""
    path = Path(run_dir) / DIVERGED_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise UserError(f"{path} is not valid JSON; the run diverged, its record is damaged") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a JSON object; the run diverged, its record is damaged")
    check_format(record, path)
    return record


def diverged_message(run_dir: Path) -> str | None:
    """Why the run diverged, from its ``diverged.json`` (the engine's message), else ``None``."""
    record = read_diverged(run_dir)
    if record is None:
        return None
    return str(record.get("message") or f"loss became {record.get('loss')} at step {record.get('step')}")


def read_metrics(run_dir: Path) -> list[dict]:
    """The epochs recorded in ``metrics.jsonl`` (empty if none finished yet); a line that is not a
    JSON object is a one-line error naming the file and the line."""
    path = require_run(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not text ({error.reason}); the run's metrics are damaged") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise UserError(
                f"{path} line {number} is not valid JSON ({error}); the run's metrics are damaged"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise UserError(f"{path} line {number} is not an epoch's metrics (a JSON object with an epoch number)")
        rows.append(row)
    return rows


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """A checkpoint dict, loaded with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling refused or corrupt file
        raise UserError(f"cannot load checkpoint {path} safely: {_load_failure(error)}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a tscnet checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    check_format(checkpoint, f"checkpoint {path}")
    return checkpoint


def _load_failure(error: Exception) -> str:
    """The reason in torch.load's error, without its paragraphs of advice (one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        reasons = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))]
        return (
            f"{reasons[0] if reasons else 'unsupported content'} (refused by torch.load(weights_only=True): "
            f"a damaged file, not a checkpoint, or one that would run code)"
        )
    first = lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__
    return f"{first} (a damaged or truncated file?)"


def build_model_from_config(config: dict) -> nn.Module:
    """The untrained model a run's resolved ``config`` describes: its ``model:`` section (name,
    classes, channels, steps) and options, through :func:`~tscnet.models.registry.create_model`."""
    from ..models import create_model

    m = config["model"]
    return create_model(
        m["name"], num_classes=m["num_classes"], in_chans=m["in_chans"], steps=m["steps"], **model_options(config)
    )


def model_options(config: dict) -> dict:
    """The constructor options of a recipe's model besides name, classes and channels (``norm``, ``init``)."""
    return {key: config["model"][key] for key in ("norm", "init") if config["model"].get(key) is not None}


def check_checkpoint_matches(checkpoint: dict, config: dict, source: Path) -> None:
    """Refuse a checkpoint of another model or policy, naming both."""
    want = (config["model"]["name"], str(config["model"]["steps"]))
    have = (checkpoint.get("model_name"), checkpoint.get("steps"))
    if have != want:
        raise UserError(
            f"checkpoint {source} holds model {have[0]} with steps {have[1]!r}, "
            f"but the run is model {want[0]} with steps {want[1]!r}"
        )


@dataclass
class Run:
    """A finished or interrupted run read back from its folder."""

    path: Path
    config: dict
    metrics: list[dict]
    model: nn.Module | None  # with its step policy, weights of the last checkpoint, eval mode
    weights: str = CHECKPOINT_FILE  # where the model's weights came from

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def load_run(run_dir: Path, with_model: bool = True, device: str = "cpu", unfold_ok: bool = False) -> Run:
    """Read a run folder; with ``with_model`` rebuild the model and load its last checkpoint.

    With ``unfold_ok``, a finished run whose checkpoint.pt is gone gives the stepped model rebuilt
    from model.safetensors and steps.json (:func:`stepped_from_folded`): the same function and
    steps, with the final steps frozen (``profile:RUN``) instead of the run's policy.
    """
    run_dir = require_run(Path(run_dir))
    config = read_config(run_dir)
    model, weights = None, CHECKPOINT_FILE
    if with_model and unfold_ok and not (run_dir / CHECKPOINT_FILE).exists() and (run_dir / FOLDED_FILE).exists():
        model, weights = stepped_from_folded(run_dir, config, device), f"{FOLDED_FILE} + {STEPS_FILE}"
    elif with_model:
        model = model_from_checkpoint(run_dir / CHECKPOINT_FILE, config, device)[0]
    return Run(run_dir, config, read_metrics(run_dir), model, weights)


def model_from_folded(run_dir: Path, config: dict | None = None, device: str = "cpu") -> nn.Module:
    """The vanilla-architecture model of a finished run from its model.safetensors (steps folded in), eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..models import create_model

    config = config or read_config(run_dir)
    m = config["model"]
    model = create_model(
        m["name"], num_classes=m["num_classes"], in_chans=m["in_chans"], steps="none", **model_options(config)
    )
    path = Path(run_dir) / FOLDED_FILE
    try:
        model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UserError(
            f"{path} does not hold the folded {m['name']} of this run: {str(error).splitlines()[0]}"
        ) from None
    return model.to(device).eval()


def stepped_from_folded(run_dir: Path, config: dict | None = None, device: str = "cpu") -> nn.Module:
    """A finished run's stepped model without its checkpoint: model.safetensors with the final Δt
    of steps.json divided back out (:func:`tscnet.stepping.fold.unfold_steps`), steps frozen as
    ``profile:RUN``; eval mode. It computes what the folded model computes, block by block."""
    from ..stepping import is_stock
    from ..stepping.fold import unfold_steps

    config = config or read_config(run_dir)
    model = model_from_folded(run_dir, config, device)
    if is_stock(config["model"]["steps"]):
        return model
    try:
        return unfold_steps(model, f"profile:{Path(run_dir).resolve()}").eval()
    except ValueError as error:  # missing, damaged or mismatched steps.json
        raise UserError(f"cannot rebuild the stepped model of {run_dir} without {CHECKPOINT_FILE}: {error}") from None


def model_from_checkpoint(path: Path, config: dict | None = None, device: str = "cpu") -> tuple[nn.Module, dict]:
    """``(model, config)``: the model of ``config`` (default: the checkpoint's own) with the
    checkpoint's weights, in eval mode.

    Loaded with ``weights_only=True``; a checkpoint of another model or policy is refused.
    """
    checkpoint = load_checkpoint(path, map_location=device)
    if config is None:
        if "config" not in checkpoint or "model" not in checkpoint:
            raise UserError(f"{path} is not a tscnet checkpoint (no config/model entries)")
        config = checkpoint["config"]
    check_checkpoint_matches(checkpoint, config, Path(path))
    model = build_model_from_config(config).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        lines = str(error).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
        raise UserError(
            f"checkpoint {path} does not fit the run's {config['model']['name']} "
            f"(num_classes={config['model']['num_classes']}, in_chans={config['model']['in_chans']}): "
            f"{detail}"
        ) from None
    return model.eval(), config
