"""A study spec: one YAML file naming the recipe, models, step policies ("arms"), seeds and grid.

::

    name: normfree                 # results: benchmarks/results/<name> in the repo checkout, else ./study-results/<name>
    recipe: fashion_mnist_converged  # base recipe (name in tscnet/configs or a path)
    set: [model.norm=none]         # overrides applied to every cell (after the recipe)
    models: [cifar_resnet20, cifar_resnet56]
    seeds: [0, 1, 2]
    grid: {optim.lr: [0.01, 0.03, 0.1, 0.3]}          # optional cross product over config keys
    per_model: {cifar_resnet56: {seeds: [0, 1], grid: {optim.lr: [0.03, 0.1]}}}   # optional
    policies:                      # the arms: a policy string, or a mapping
      - none
      - fixed:0.1
      - {name: fixup, steps: none, set: [model.init=fixup]}
      - profile-of:tsc             # ablations of another arm's finished cell (same model, seed, grid point)
      - fixed-of:tsc
    baseline: none                 # reference of the "Δ vs baseline" column (default: none, else the first arm)
    peers: [none, fixed:0.1, fixup]  # controller-free arms; "best peer" is chosen among them (default: [baseline])
    executor: {kind: local, workers: 2, threads: 1}
    slurm: {partition: null, time: "02:00:00", gpus_per_node: 0, cpus_per_task: 1, nodes: 1}
    report: {title: ..., written_by: ..., layout: ...}   # optional: the report's heading and first line

Specs live in ``tscnet/configs/studies/`` (found by name) or anywhere (found by path). Every
problem is a :class:`~tscnet.errors.UserError` of one line naming the spec and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..train.config import CONFIG_DIR, file_exists, find_yaml, load_yaml_file

STUDY_DIR = CONFIG_DIR / "studies"
ABLATIONS = ("profile-of", "fixed-of")
TOP_KEYS = (
    "name",
    "recipe",
    "set",
    "models",
    "seeds",
    "grid",
    "per_model",
    "policies",
    "baseline",
    "peers",
    "executor",
    "slurm",
    "report",
    "description",
)
ARM_KEYS = ("name", "steps", "set")
# the wording of the report's first lines; transfer: true adds the depth-transfer reading (study.transfer)
REPORT_KEYS = ("title", "written_by", "layout", "transfer")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# str.splitlines()'s line breaks, escaped in an error (a quoted YAML key or value may hold one)
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_MAX_FOLDER = 255  # bytes in a folder name (NAME_MAX): an arm's tag, a grid point's tag


def ablation_kind(steps: str) -> str | None:
    """``"profile-of"`` / ``"fixed-of"`` for an ablation's steps, else ``None``."""
    kind = steps.partition(":")[0]
    return kind if kind in ABLATIONS else None


def policy_tag(policy: str) -> str:
    """The folder name of a policy: ``fixed:0.5`` → ``fixed0.5``, ``profile-of:tsc`` → ``profile-of-tsc``."""
    kind = ablation_kind(policy)
    if kind is not None:
        return f"{kind}-{policy_tag(policy.partition(':')[2])}"
    return policy.replace(":", "").replace(",", "_").replace("=", "").replace("/", "_")


@dataclass(frozen=True)
class Arm:
    """One arm of a study: its label, its ``model.steps`` (or an ablation) and its own overrides.

    A string arm ``"fixed:0.5"`` is ``Arm("fixed:0.5", "fixed:0.5")``; a mapping arm
    ``{name: fixup, steps: none, set: [model.init=fixup]}`` keeps its name as label and folder tag.
    """

    name: str
    steps: str
    set: tuple[str, ...] = ()
    mapping: bool = False  # given as a mapping: its folder tag is its name

    @property
    def tag(self) -> str:
        return self.name if self.mapping else policy_tag(self.name)

    @property
    def ablation(self) -> str | None:
        return ablation_kind(self.steps)

    @property
    def source(self) -> str | None:
        """The label of the arm an ablation is built from (``"tsc"`` for ``profile-of:tsc``)."""
        return self.steps.partition(":")[2] if self.ablation else None

    @property
    def label(self) -> str:
        """What the report prints after the arm's name (``"tsc's final Δt profile, frozen"``)."""
        if self.ablation == "profile-of":
            return f"{self.source}'s final Δt profile, frozen"
        if self.ablation == "fixed-of":
            return f"fixed Δt = T/D of {self.source}"
        return (
            self.name
            if self.name == self.steps and not self.set
            else f"steps {self.steps}" + (f", {' '.join(self.set)}" if self.set else "")
        )


@dataclass
class StudySpec:
    """A parsed, checked study spec (see the module docstring for the format)."""

    name: str
    recipe: str
    models: list[str]
    arms: list[Arm]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    set: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    per_model: dict[str, dict] = field(default_factory=dict)
    baseline: str = "none"
    peers: list[str] = field(default_factory=list)
    executor: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    description: str = ""
    path: Path | None = None

    def seeds_for(self, model: str) -> list[int]:
        return list(self.per_model.get(model, {}).get("seeds", self.seeds))

    def grid_for(self, model: str) -> dict[str, list]:
        return dict(self.per_model.get(model, {}).get("grid", self.grid))

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    @property
    def grid_keys(self) -> list[str]:
        """Every key some model's grid runs over (in first-seen order)."""
        keys = list(self.grid)
        for model in self.models:
            keys += [k for k in self.grid_for(model) if k not in keys]
        return keys


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec file: a path, or the name of a file in ``tscnet/configs/studies/`` (``.yaml`` optional)."""
    found = find_yaml(name_or_path, STUDY_DIR)
    if found is not None:
        return found
    names = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
    known = f"; specs in {STUDY_DIR}: {', '.join(names)}" if names else ""
    raise UserError(f"study spec {str(name_or_path)!r} not found: not a file, nor a spec name{known}")


def load_spec(name_or_path: str | Path | dict) -> StudySpec:
    """Read and check a study spec (a name in ``tscnet/configs/studies/``, a path, or a dict)."""
    if isinstance(name_or_path, dict):
        raw, path = name_or_path, None
    else:
        path = resolve_spec_path(name_or_path)
        raw = load_yaml_file(path, "study spec")
    where = f"study spec {path}" if path else "study spec"
    return parse_spec(raw, where, path)


def _fail(where: str, key: str, message: str) -> UserError:
    return UserError(f"{where}: {key}: {message}".translate(_LINE_BREAKS))


def _str_list(where: str, key: str, value: Any, allow_empty: bool = True) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, key, f"must be a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise _fail(where, key, "must name at least one")
    return [v.strip() for v in value]


def _seeds(where: str, key: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        raise _fail(where, key, f"must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise _fail(where, key, f"repeats a seed: {value!r}")
    return list(value)


def _grid(where: str, key: str, value: Any) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(
            where, key, f"must map config keys to lists of values, e.g. {{optim.lr: [0.03, 0.1]}}, got {value!r}"
        )
    grid = {}
    for name, values in value.items():
        if not isinstance(name, str) or name.count(".") != 1:
            raise _fail(where, f"{key}.{name}", "must be a config key section.key, e.g. optim.lr")
        if not isinstance(values, list) or not values:
            raise _fail(where, f"{key}.{name}", f"must be a non-empty list of values, got {values!r}")
        if not all(_grid_value(v) for v in values):
            raise _fail(where, f"{key}.{name}", f"values must be numbers, strings or lists of them, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise _fail(where, f"{key}.{name}", f"repeats a value: {values!r}")
        grid[name] = list(values)
    return grid


def _grid_value(value: Any, inside: tuple = ()) -> bool:
    """A value a grid may hold: no mapping or set, which no config key takes (nor a cell's folder name), nor a
    list that holds itself (a YAML alias, ``&a [1, *a]``)."""
    if isinstance(value, list):
        return id(value) not in inside and all(_grid_value(v, (*inside, id(value))) for v in value)
    return not isinstance(value, (dict, set))


def _arm(where: str, key: str, value: Any) -> Arm:
    if isinstance(value, str) and value.strip():
        return Arm(value.strip(), value.strip())
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ARM_KEYS]
        if unknown:
            raise _fail(where, key, f"unknown key {unknown[0]!r}; an arm mapping has {', '.join(ARM_KEYS)}")
        name = value.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(where, f"{key}.name", f"must be a folder-safe label (letters, digits, . _ + -), got {name!r}")
        steps = value.get("steps", "none")
        if not isinstance(steps, str) or not steps.strip():
            raise _fail(where, f"{key}.steps", f"must be a step policy string, got {steps!r}")
        return Arm(name, steps.strip(), tuple(_str_list(where, f"{key}.set", value.get("set", []))), mapping=True)
    raise _fail(where, key, f"must be a policy string or a mapping {{name, steps, set}}, got {value!r}")


def _check_model(where: str, key: str, name: str) -> None:
    from ..models.cifar_resnet import CIFAR_MODELS

    if name in CIFAR_MODELS:
        return
    prefix, sep, rest = name.partition(":")
    try:
        if sep and prefix == "tv":
            import torchvision

            known = rest in torchvision.models.list_models(module=torchvision.models)
        else:
            import timm

            known = not sep and timm.is_model(name)
    except ImportError:
        known = False
    if not known:
        import difflib

        close = difflib.get_close_matches(name, list(CIFAR_MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise _fail(where, key, f"unknown model {name!r}{hint}")


def _check_override(where: str, key: str, item: str) -> None:
    name, eq, _ = item.partition("=")
    if not eq or name.strip().count(".") != 1:
        raise _fail(where, key, f"override {item!r} must look like section.key=value (e.g. optim.lr=0.05)")


def parse_spec(raw: Any, where: str = "study spec", path: Path | None = None) -> StudySpec:
    """Check a spec mapping and build the :class:`StudySpec`; every problem names its key.

    The sections are checked in the order a spec is written: its keys, name and recipe, models
    (seeds, grid, per-model options), policies, baseline and peers, executor, report.
    """
    _check_keys(where, raw)
    name = raw.get("name", path.stem if path else None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "name", f"must be a folder-safe name (letters, digits, . _ + -), got {name!r}")
    recipe = _recipe(where, raw["recipe"], path)
    overrides = _str_list(where, "set", raw.get("set", []) or [])
    for i, item in enumerate(overrides):
        _check_override(where, f"set[{i}]", item)
    models = _models(where, raw["models"])
    seeds = _seeds(where, "seeds", raw.get("seeds", [0, 1, 2]))
    grid = _grid(where, "grid", raw.get("grid"))
    per_model = _per_model(where, raw, models)
    _check_grid_folders(where, models, grid, per_model)
    arms = _arms(where, raw["policies"])
    baseline, peers = _baseline_and_peers(where, raw, [a.name for a in arms])
    executor, slurm = _executor(where, raw)
    report = _report(where, raw.get("report") or {})
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail(where, "description", "must be a string")
    return StudySpec(
        name=name,
        recipe=recipe,
        models=models,
        arms=arms,
        seeds=seeds,
        set=overrides,
        grid=grid,
        per_model=per_model,
        baseline=baseline,
        peers=peers,
        executor=dict(executor),
        slurm=dict(slurm),
        report=dict(report),
        description=description,
        path=path,
    )


def _check_keys(where: str, raw: Any) -> None:
    """``raw`` is a mapping of known top-level keys with recipe, models and policies among them."""
    if not isinstance(raw, dict):
        raise UserError(
            f"{where} must be a mapping of keys (name, recipe, models, policies, ...), got {type(raw).__name__}"
        )
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), TOP_KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise _fail(where, str(unknown[0]), f"unknown key{hint}; a study spec has {', '.join(TOP_KEYS)}")
    for key in ("recipe", "models", "policies"):
        if key not in raw:
            raise _fail(where, key, "missing (a study spec needs recipe, models and policies)")


def _recipe(where: str, recipe: Any, path: Path | None) -> str:
    """The ``recipe:`` as a name or path that resolves (one next to the spec file: its absolute path)."""
    if not isinstance(recipe, str) or not recipe.strip():
        raise _fail(where, "recipe", f"must be a recipe name or path, got {recipe!r}")
    recipe = recipe.strip()
    if path is not None and not Path(recipe).is_absolute() and file_exists(path.parent / recipe):
        recipe = str((path.parent / recipe).resolve())  # a recipe next to the spec
    from ..train.config import resolve_config_path

    try:
        resolve_config_path(recipe)
    except UserError as error:
        raise _fail(where, "recipe", str(error)) from None
    return recipe


def _models(where: str, value: Any) -> list[str]:
    """The ``models:`` list: known model names, none repeated."""
    models = _str_list(where, "models", value, allow_empty=False)
    if len(set(models)) != len(models):
        raise _fail(where, "models", f"repeats a model: {models!r}")
    for i, model in enumerate(models):
        _check_model(where, f"models[{i}]", model)
    return models


def _per_model(where: str, raw: dict, models: list[str]) -> dict[str, dict]:
    """``per_model:``: each listed model's own ``seeds`` and/or ``grid``."""
    per_model: dict[str, dict] = {}
    if not isinstance(raw.get("per_model") or {}, dict):
        raise _fail(where, "per_model", f"must map models to their seeds and/or grid, got {raw['per_model']!r}")
    for model, entry in (raw.get("per_model") or {}).items():
        key = f"per_model.{model}"
        if model not in models:
            raise _fail(where, key, f"{model!r} is not one of models ({', '.join(models)})")
        if not isinstance(entry, dict) or any(k not in ("seeds", "grid") for k in entry):
            raise _fail(where, key, f"must be a mapping with seeds and/or grid, got {entry!r}")
        per_model[model] = {}
        if "seeds" in entry:
            per_model[model]["seeds"] = _seeds(where, f"{key}.seeds", entry["seeds"])
        if "grid" in entry:
            per_model[model]["grid"] = _grid(where, f"{key}.grid", entry["grid"])
    return per_model


def _check_grid_folders(where: str, models: list[str], grid: dict[str, list], per_model: dict[str, dict]) -> None:
    """Every grid point's folder name (of each model's grid) fits in :data:`_MAX_FOLDER` bytes."""
    from .plan import grid_tag  # plan imports this module

    for model in models:
        key = f"per_model.{model}.grid" if "grid" in per_model.get(model, {}) else "grid"
        parts = per_model.get(model, {}).get("grid", grid)
        longest = sum(max(len(grid_tag(((k, v),)).encode()) + 1 for v in vs) for k, vs in parts.items()) - 1
        if longest > _MAX_FOLDER:
            raise _fail(where, key, f"a grid point's folder name would be {longest} bytes, more than {_MAX_FOLDER}")


def _arms(where: str, value: Any) -> list[Arm]:
    """The ``policies:`` list: arms with distinct names and folder tags, valid policies and overrides,
    ablations naming an ordinary arm as their source."""
    from ..stepping import parse_policy

    if not isinstance(value, list) or not value:
        raise _fail(where, "policies", f"must be a non-empty list of arms, got {value!r}")
    arms = [_arm(where, f"policies[{i}]", item) for i, item in enumerate(value)]
    labels, tags = [a.name for a in arms], [a.tag for a in arms]
    for i, arm in enumerate(arms):
        key = f"policies[{i}]"
        if labels.index(arm.name) != i or tags.index(arm.tag) != i:
            raise _fail(where, key, f"{arm.name!r} repeats the name or folder tag {arm.tag!r} of another arm")
        if len(arm.tag.encode()) > _MAX_FOLDER:
            raise _fail(
                where,
                key,
                f"its folder name would be {len(arm.tag.encode())} bytes, more than {_MAX_FOLDER}; "
                "give the arm a short name: {name: ..., steps: ...}",
            )
        for j, item in enumerate(arm.set):
            _check_override(where, f"{key}.set[{j}]", item)
        if arm.ablation:
            if not arm.source:
                raise _fail(where, key, f"{arm.steps}: name the source arm, e.g. {arm.ablation}:tsc")
            if arm.source not in labels:
                raise _fail(where, key, f"{arm.steps}: its source arm {arm.source!r} is not among the policies")
            if arms[labels.index(arm.source)].ablation:
                raise _fail(where, key, f"{arm.steps}: the source of an ablation must be an ordinary arm")
            continue
        try:
            parse_policy(arm.steps)  # a typo fails before anything runs
        except (ValueError, TypeError) as error:
            raise _fail(where, key, str(error)) from None
    return arms


def _baseline_and_peers(where: str, raw: dict, labels: list[str]) -> tuple[str, list[str]]:
    """``(baseline, peers)``, arms of the study; the default baseline is ``none`` if an arm, else the first arm."""
    baseline = raw.get("baseline", "none" if "none" in labels else labels[0])
    if baseline not in labels:
        raise _fail(where, "baseline", f"{baseline!r} is not one of the policies ({', '.join(labels)})")
    peers = _str_list(where, "peers", raw.get("peers", [baseline]))
    for i, peer in enumerate(peers):
        if peer not in labels:
            raise _fail(where, f"peers[{i}]", f"{peer!r} is not one of the policies ({', '.join(labels)})")
    return baseline, peers


def _report(where: str, report: Any) -> dict:
    """The ``report:`` options: a mapping of some of :data:`REPORT_KEYS`."""
    if not isinstance(report, dict) or any(k not in REPORT_KEYS for k in report):
        bad = next((k for k in report if k not in REPORT_KEYS), None) if isinstance(report, dict) else None
        raise _fail(
            where, f"report.{bad}" if bad else "report", f"must be a mapping with some of {', '.join(REPORT_KEYS)}"
        )
    return report


def _executor(where: str, raw: dict) -> tuple[dict, dict]:
    """``(executor, slurm)``: mappings with an executor ``kind`` and positive ``workers`` / ``threads``."""
    executor = raw.get("executor") or {}
    if not isinstance(executor, dict):
        raise _fail(where, "executor", f"must be a mapping such as {{kind: local, workers: 2}}, got {executor!r}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise _fail(where, "slurm", f"must be a mapping of Slurm options, got {slurm!r}")
    kind = executor.get("kind", "local")
    if not isinstance(kind, str) or not kind.strip():
        raise _fail(where, "executor.kind", f"must be an executor name such as local or slurm, got {kind!r}")
    for section, options in (("executor", executor), ("slurm", slurm)):
        for option in ("workers", "threads"):
            value = options.get(option, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _fail(where, f"{section}.{option}", f"must be a positive integer, got {value!r}")
    return executor, slurm
