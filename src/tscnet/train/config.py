"""Training recipes: nested dicts from YAML files, with ``--set key.sub=value`` overrides.

The defaults below are the complete schema: a recipe or override naming a key outside it is an
error that lists the valid keys. ``tscnet/configs/*.yaml`` (package data) hold the recipes (He et al. 2016 for CIFAR,
Goyal et al. for ImageNet, and a few-minute Fashion-MNIST recipe for a 2-core CPU).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

# Recipes ship inside the package (package data), so an installed wheel finds them from any folder.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: The default recipe: every key a recipe may set, with its default (:func:`load_config` starts from it).
DEFAULTS: dict[str, Any] = {
    # norm: null (the model's own), batch or none (norm-free, our CIFAR nets); init: null (the model's
    # default), he, zero_last (last BN γ of every branch = 0) or fixup (norm-free CIFAR nets).
    "model": {
        "name": "cifar_resnet20",
        "steps": "none",
        "num_classes": None,
        "in_chans": None,
        "norm": None,
        "init": None,
    },
    "data": {
        "name": "fashion-mnist",
        "data_dir": None,
        "train_subset": None,
        "test_subset": None,
        "augment": True,
        "batch_size": 128,
        "eval_batch_size": 512,
        "workers": 4,
        "image_size": None,
        "download": False,
    },
    # name: sgd or adamw (betas, eps: AdamW's); weight_decay_rule: tscnet (every parameter) or timm
    # (none for 1-D parameters and biases); depth_lr_power P: lr · (D / depth_lr_base)^(−P), D the
    # residual updates (0: off; 0.5 with AdamW: depth-µP's 1/√depth).
    "optim": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "label_smoothing": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay_rule": "tscnet",
        "depth_lr_power": 0.0,
        "depth_lr_base": 1,
    },
    "sched": {
        "name": "multistep",
        "milestones": [0.5, 0.75],
        "gamma": 0.1,
        "step_size": 30,
        "warmup_epochs": 0.0,
        "warmup_start": 0.1,
    },
    "train": {
        "epochs": 10,
        "seed": 0,
        "device": "auto",
        "amp": "auto",
        "channels_last": "auto",
        "compile": False,
        "progress": True,
        "checkpoint_every": None,
        "log": "none",
        "loss_steps": [100, 300],
        "eval_epochs": None,
    },
}

#: Keys a recipe may leave null for the run to fill in from its data (engine: the dataset's classes
#: and channels). A run's saved config.yaml holds the resolved value; on ``--resume`` a null given
#: for one of them is the same recipe, not a change.
RESOLVED_AT_RUN_TIME = frozenset({"model.num_classes", "model.in_chans"})

#: Keys that place a run, not define it (where its data is, which device, how many loader workers,
#: the evaluation batch, the progress bar): a study's cell and the run it collected may differ in
#: them, and runs that differ only in them (and the seed) are seeds of one group in a report.
PLACEMENT = frozenset(
    {
        ("data", "data_dir"),
        ("data", "download"),
        ("data", "workers"),
        ("data", "eval_batch_size"),
        ("train", "device"),
        ("train", "progress"),
    }
)

# Flags that also take a name: train.compile is false, true (inductor) or a torch.compile backend
# such as "aot_eager".
FLAG_OR_NAME = {"train.compile"}


def _merge(base: dict, update: dict, path: str = "") -> dict:
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            close = difflib.get_close_matches(key, base, n=1) if isinstance(key, str) else []
            hint = f" (did you mean {path}{close[0]}?)" if close else ""
            raise UserError(
                f"unknown config key {where!r}{hint}; valid keys under "
                f"{path.rstrip('.') or 'the top level'}: {', '.join(base)}"
            )
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"config key {where!r} must be a mapping, got {value!r}")
            _merge(base[key], value, where + ".")
        elif isinstance(value, dict):
            below = f"{where}.{next(iter(value), '')}"
            raise UserError(
                f"config key {where!r} is a value, not a section: {below!r} does not exist (set it with {where}=VALUE)"
            )
        else:  # typed by the schema, not by the value a recipe or flag put there before
            base[key] = _typed(where, get(DEFAULTS, where, base[key]), value)
    return base


def _typed(key: str, default: Any, value: Any) -> Any:
    """``value`` converted to the type of ``default`` where that is a number or a flag."""
    if isinstance(default, bool):
        if isinstance(value, bool) or (key in FLAG_OR_NAME and isinstance(value, str) and value):
            return value
        also = " or a name" if key in FLAG_OR_NAME else ""
        raise UserError(f"config key {key!r} must be true or false{also}, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        if isinstance(value, str):  # YAML 1.1 reads "1e12" as a string
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    raise UserError(f"config key {key!r} must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"config key {key!r} must be a number, got {value!r}")
        if isinstance(default, float):
            try:
                return float(value)
            except OverflowError:
                raise UserError(
                    f"config key {key!r} must be a finite number, got an integer too large for a float"
                ) from None
        # An integer key keeps a whole float as an int (2.0 -> 2); 1.5 is left for validate_config to refuse.
        return int(value) if isinstance(value, float) and value.is_integer() else value
    return value


def find_yaml(name_or_path: str | Path, folder: Path) -> Path | None:
    """``name_or_path`` if it is a file, else ``folder/NAME.yaml`` or ``folder/NAME``; ``None`` if none is."""
    path = Path(name_or_path)
    if file_exists(path):
        return path
    return next((c for c in (folder / f"{name_or_path}.yaml", folder / str(name_or_path)) if file_exists(c)), None)


def file_exists(path: Path) -> bool:
    """``path.is_file()``, false also for a name the file system refuses (longer than it allows)."""
    try:
        return path.is_file()
    except OSError:
        return False


def load_yaml_file(path: Path, what: str) -> Any:
    """The YAML document in file ``path``; a file that is not YAML text is a one-line UserError naming ``what``."""
    try:
        return yaml.safe_load(path.read_text())
    except RecursionError:
        raise UserError(f"{what} {path} is not valid YAML: nested too deeply") from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: not UTF-8, or an integer of over 4300 digits
        raise UserError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read: {error.strerror}") from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a file in ``configs/`` (with or without ``.yaml``)."""
    found = find_yaml(name_or_path, CONFIG_DIR)
    if found is not None:
        return found
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise UserError(f"config {str(name_or_path)!r} not found: not a file, nor one of {', '.join(names)}")


def load_config(source: str | Path | dict | None = None, overrides: Iterable[str] = (), validate: bool = True) -> dict:
    """Defaults, then the recipe ``source`` (file, recipe name or dict), then ``key=value`` overrides.

    With ``validate`` (the default) the result is checked by :func:`validate_config`; callers that
    set more keys afterwards (command-line flags) pass ``validate=False`` and validate at the end.
    """
    config = copy.deepcopy(DEFAULTS)
    if isinstance(source, dict):
        _merge(config, source)
    elif source is not None:
        path = resolve_config_path(source)
        loaded = load_yaml_file(path, "config") or {}
        if not isinstance(loaded, dict):
            raise UserError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        _merge(config, loaded)
    for item in overrides:
        apply_override(config, item)
    return validate_config(config) if validate else config


def apply_override(config: dict, item: str) -> None:
    """Apply ``section.key=value`` (the value parsed as YAML: numbers, lists, null, strings)."""
    key, eq, raw = item.partition("=")
    if not eq or "." not in key:
        raise UserError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or an integer of over 4300 digits): the text
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
        put_value(config, key, value)


def put_value(config: dict, key: str, value: Any) -> None:
    """Set ``section.key`` to ``value``, None included (a study's grid value ``null`` means the key's null)."""
    section, name = key.split(".")
    _merge(config, {section: {name: value}})


# ---------------------------------------------------------------------------------------------
# Ranges: what each key may hold. A value outside them is refused before anything is written
# (no run folder), with one line naming the key, the rule and the value.

_MAX_SEED = 2**64 - 1  # torch.manual_seed's range (numpy's SeedSequence needs >= 0 too)
AMP_SETTINGS = ("auto", "bf16", "fp16", "off")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _optional_positive_int(value: Any) -> bool:
    return value is None or _positive_int(value)


def _name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _milestones(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(m) and m > 0 for m in value)


#: key -> (check, what the value must be)
RULES: dict[str, tuple[Any, str]] = {
    "model.name": (_name, "a model name such as cifar_resnet20"),
    "model.steps": (_name, "a step policy such as none, fixed:0.5 or tsc"),
    "model.num_classes": (_optional_positive_int, "a positive integer or null (the dataset's)"),
    "model.in_chans": (_optional_positive_int, "a positive integer or null (the dataset's)"),
    "model.norm": (lambda v: v in (None, "batch", "none"), "null (the model's), batch or none (norm-free)"),
    "model.init": (lambda v: v in (None, "he", "zero_last", "fixup"), "null (the model's), he, zero_last or fixup"),
    "data.name": (_name, "a dataset name such as fashion-mnist"),
    "data.data_dir": (lambda v: v is None or _name(v), "a folder or null"),
    "data.download": (lambda v: isinstance(v, bool), "true or false (fetch CIFAR or MNIST into data_dir if missing)"),
    "data.train_subset": (_optional_positive_int, "a positive integer or null (all images)"),
    "data.test_subset": (_optional_positive_int, "a positive integer or null (all images)"),
    "data.batch_size": (_positive_int, "a positive integer"),
    "data.eval_batch_size": (_positive_int, "a positive integer"),
    "data.workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data.image_size": (_optional_positive_int, "a positive integer or null"),
    "optim.name": (lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    "optim.lr": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "optim.betas": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1), e.g. [0.9, 0.999]",
    ),
    "optim.eps": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "optim.weight_decay_rule": (
        lambda v: v in ("tscnet", "timm"),
        "tscnet (every parameter) or timm (none for 1-D parameters and biases)",
    ),
    "optim.depth_lr_power": (lambda v: _is_number(v), "a finite number (0: the lr is not scaled with depth)"),
    "optim.depth_lr_base": (_positive_int, "a positive number of residual updates"),
    "optim.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "optim.label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "sched.milestones": (_milestones, "a list of positive numbers (< 1: fractions of the run, >= 1: epochs)"),
    "sched.gamma": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "sched.step_size": (lambda v: _is_number(v) and v > 0, "a positive number of epochs"),
    "sched.warmup_epochs": (lambda v: _is_number(v) and v >= 0, "a finite number of epochs >= 0"),
    "sched.warmup_start": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "train.epochs": (_positive_int, "a positive integer"),
    "train.seed": (lambda v: _is_int(v) and 0 <= v <= _MAX_SEED, "an integer in [0, 2**64 - 1]"),
    "train.device": (_name, "auto, cpu, cuda or cuda:N"),
    "train.amp": (lambda v: v is False or v in AMP_SETTINGS, f"one of {', '.join(AMP_SETTINGS)}"),
    "train.channels_last": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    # The mean training loss of the 20 steps ending at each listed global step (metrics' loss_at_step).
    "train.loss_steps": (
        lambda v: isinstance(v, list) and all(_positive_int(s) for s in v),
        "a list of positive step numbers such as [100, 300] ([] for none)",
    ),
    # The epochs that end with a test-set evaluation: null (every one) or a list, negative numbers
    # counting from the end (-1: the last); the last epoch is always evaluated (the run's result).
    "train.eval_epochs": (
        lambda v: v is None or (isinstance(v, list) and all(_is_int(e) and e != 0 for e in v)),
        "null (every epoch) or a list of non-zero epoch numbers such as [1, -4, -1]",
    ),
}


def validate_config(config: dict) -> dict:
    """Refuse a value out of range or of the wrong type, naming the key, the rule and the value.

    Checked here, before anything is written: every key of :data:`RULES`, ``sched.name`` against
    the registered schedules, and ``optim.nesterov`` (it needs a momentum). Names that need the
    model or the data (``model.name``, ``model.steps``, ``data.name``, ``train.compile``) are
    checked where they are built, also before a run folder exists. Returns ``config``.
    """
    from .optim import SCHEDULES

    for key, (check, rule) in RULES.items():
        value = get(config, key)
        if not check(value):
            raise UserError(f"{key} must be {rule}, got {value!r}")
    name = get(config, "sched.name")
    if not isinstance(name, str) or name not in SCHEDULES:
        raise UserError(f"sched.name must be one of {', '.join(SCHEDULES)}, got {name!r}")
    if get(config, "optim.nesterov") and not get(config, "optim.momentum"):
        raise UserError("optim.nesterov needs optim.momentum > 0, got momentum 0")
    epochs, listed = get(config, "train.epochs"), get(config, "train.eval_epochs") or []
    outside = [e for e in listed if abs(e) > epochs]
    if outside:
        raise UserError(
            f"train.eval_epochs {outside} lie outside the run's {epochs} epochs "
            f"(1..{epochs}, or -{epochs}..-1 from the end)"
        )
    return config


def evaluated_epochs(config: dict) -> set[int]:
    """The epochs (1-based) that end with a test-set evaluation: ``train.eval_epochs``, negative
    entries counted from the end (-1 = the last epoch), always with the last epoch; every epoch if null."""
    epochs, listed = int(get(config, "train.epochs")), get(config, "train.eval_epochs")
    if listed is None:
        return set(range(1, epochs + 1))
    return {e if e > 0 else epochs + 1 + e for e in listed} | {epochs}


def dump_config(config: dict) -> str:
    """``config`` as YAML, keys in their order (what a run's ``config.yaml`` holds)."""
    return yaml.safe_dump(config, sort_keys=False)


def same_setting(key: str, saved: Any, given: Any) -> bool:
    """Whether a key of a saved (resolved) config and of a given recipe mean the same run: equal, or
    left null in the recipe for the run to resolve (:data:`RESOLVED_AT_RUN_TIME`)."""
    return saved == given or (given is None and key in RESOLVED_AT_RUN_TIME)


def get(config: dict, key: str, default: Any | None = None) -> Any:
    """The value at dotted ``key`` (``"optim.lr"``) of a nested ``config``, else ``default``."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
