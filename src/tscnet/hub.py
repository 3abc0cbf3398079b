"""Folded models in the layout of a timm model repository on the Hugging Face Hub.

A timm local model folder holds ``config.json`` (architecture, ``model_args``, ``pretrained_cfg``
with the preprocessing) and ``model.safetensors`` (the state dict). It is what
``timm.create_model("local-dir:PATH", pretrained=True)`` reads and what ``timm`` pushes to the
Hub (``huggingface_hub.upload_folder`` uploads it as is). Steps are folded first, so the folder
holds the vanilla timm architecture: nobody needs tscnet to load it.

Only timm-family models have this layout; tscnet's CIFAR ResNets and torchvision's models keep
the run's ``model.safetensors`` and ``model_card.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .errors import InvalidValue
from .jobs.run_folder import RunFolder
from .stepping import fold_steps

__all__ = ["TIMM_CONFIG_FILE", "TIMM_WEIGHTS_FILE", "is_timm_model", "run_data_config", "save_timm_folder"]

TIMM_CONFIG_FILE = "config.json"
TIMM_WEIGHTS_FILE = "model.safetensors"


def is_timm_model(model: nn.Module) -> bool:
    """Is ``model`` (steps attached or not) one of timm's models, with the ``pretrained_cfg`` timm gives them?"""
    return type(model).__module__.startswith("timm.") and isinstance(getattr(model, "pretrained_cfg", None), dict)


def run_data_config(config: dict) -> dict:
    """timm's preprocessing keys for the data a run trained on: input size, mean, std, crop.

    In-memory sets (CIFAR, (Fashion-)MNIST) are used whole (``crop_pct`` 1); image folders are
    resized to 256/224 of the size and centre-cropped, as :mod:`tscnet.data.folder` evaluates.
    """
    from .data.registry import get_dataset_spec

    spec = get_dataset_spec(config["data"]["name"])
    size = config["data"].get("image_size") or spec.info.image_size
    return {
        "input_size": (int(config["model"]["in_chans"]), int(size), int(size)),
        "mean": tuple(spec.info.mean),
        "std": tuple(spec.info.std),
        "interpolation": "bilinear",
        "crop_pct": 1.0 if spec.in_memory else 224 / 256,
        "crop_mode": "center",
    }


def save_timm_folder(
    model: nn.Module, directory: str | Path, data_config: dict | None = None, model_card: dict | None = None
) -> nn.Module:
    """Fold ``model``'s steps and write ``directory/config.json`` + ``model.safetensors``; returns the folded model.

    ``data_config`` (timm keys: ``input_size``, ``mean``, ``std``, ``crop_pct``, ...) is the
    preprocessing the weights expect, recorded in ``pretrained_cfg``; ``model_card`` is written
    beside as ``model_card.json``. ``directory`` must not exist or be empty (nothing is overwritten).

    Raises:
        ValueError: ``model`` is not a timm model, or ``directory`` holds files.
    """
    from timm.models import save_for_hf

    directory = Path(directory)
    if not is_timm_model(model):
        raise InvalidValue(
            f"a timm model folder holds timm architectures; {type(model).__module__}.{type(model).__name__} "
            "is not one (save its folded weights as .safetensors instead)"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InvalidValue(
            f"{directory} already exists and is not an empty folder; choose another (results are never overwritten)"
        )
    folded = fold_steps(model).cpu().eval()
    save_for_hf(folded, str(directory), safe_serialization=True, data_config=data_config)
    if model_card is not None:
        (directory / RunFolder.CARD).write_text(json.dumps(model_card, indent=2) + "\n")
    return folded
