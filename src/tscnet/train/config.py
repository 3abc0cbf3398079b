"""Training recipes: nested dicts from YAML files, with ``--set key.sub=value`` overrides.

The defaults below are the complete schema: a recipe or override naming a key outside it is an
error that lists the valid keys. ``configs/*.yaml`` hold the recipes (He et al. 2016 for CIFAR,
Goyal et al. for ImageNet, and a few-minute Fashion-MNIST recipe for a 2-core CPU).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from ..errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

DEFAULTS: dict[str, Any] = {
    "model": {"name": "cifar_resnet20", "steps": "none", "num_classes": None, "in_chans": None},
    "data": {
        "name": "fashion-mnist", "data_dir": None, "train_subset": None, "test_subset": None, "augment": True,
        "batch_size": 128, "eval_batch_size": 512, "workers": 4, "image_size": None,
    },
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "label_smoothing": 0.0},
    "sched": {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1, "step_size": 30,
              "warmup_epochs": 0.0, "warmup_start": 0.1},
    "train": {"epochs": 10, "seed": 0, "device": "auto", "amp": "auto", "channels_last": "auto",
              "compile": False, "progress": True, "checkpoint_every": None},
}

# Flags that also take a name: train.compile is false, true (inductor) or a torch.compile backend
# such as "aot_eager".
FLAG_OR_NAME = {"train.compile"}


def _merge(base: dict, update: dict, path: str = "") -> dict:
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            close = difflib.get_close_matches(key, base, n=1)
            hint = f" (did you mean {path}{close[0]}?)" if close else ""
            raise UserError(f"unknown config key {where!r}{hint}; valid keys under "
                            f"{path.rstrip('.') or 'the top level'}: {', '.join(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"config key {where!r} must be a mapping, got {value!r}")
            _merge(base[key], value, where + ".")
        else:
            base[key] = _typed(where, base[key], value)
    return base


def _typed(key: str, default: Any, value: Any) -> Any:
    """``value`` converted to the type of ``default`` where that is a number or a flag."""
    if isinstance(default, bool):
        if isinstance(value, bool) or (key in FLAG_OR_NAME and isinstance(value, str) and value):
            return value
        also = " or a name" if key in FLAG_OR_NAME else ""
        raise UserError(f"config key {key!r} must be true or false{also}, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        kind = int if isinstance(default, int) and not isinstance(value, float) else float
        try:
            number = kind(value)  # YAML 1.1 reads "1e12" as a string
        except (TypeError, ValueError):
            raise UserError(f"config key {key!r} must be a number, got {value!r}") from None
        return number
    return value


def resolve_config_path(name_or_path: Union[str, Path]) -> Path:
    """A recipe file: a path, or the name of a file in ``configs/`` (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise UserError(f"config {str(name_or_path)!r} not found: not a file, nor one of {', '.join(names)}")


def load_config(source: Union[str, Path, dict, None] = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults, then the recipe ``source`` (file, recipe name or dict), then ``key=value`` overrides."""
    config = copy.deepcopy(DEFAULTS)
    if isinstance(source, dict):
        _merge(config, source)
    elif source is not None:
        path = resolve_config_path(source)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        _merge(config, loaded)
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: dict, item: str) -> None:
    """Apply ``section.key=value`` (the value parsed as YAML: numbers, lists, null, strings)."""
    key, eq, raw = item.partition("=")
    if not eq or "." not in key:
        raise UserError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    update: dict = {}
    node = update
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    _merge(config, update)


def set_value(config: dict, key: str, value: Any) -> None:
    """Set ``section.key`` to ``value`` if ``value`` is not None (CLI flags that were given)."""
    if value is not None:
        section, name = key.split(".")
        _merge(config, {section: {name: value}})


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def get(config: dict, key: str, default: Optional[Any] = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
