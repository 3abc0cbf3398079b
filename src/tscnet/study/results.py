"""A study's results folder: each finished cell's small files plus ``cell.json``, and reading them back.

A cell folder (``<results>/<cell.rel>``) holds ``cell.json`` (model, arm, policy, steps, set, grid,
seed, source; ``diverged`` with the reason when the run diverged) and the run's small files:
``config.yaml``, ``metrics.jsonl``, ``steps.json``, ``model_card.json`` and, when the run wrote them,
``platform.json`` and ``diverged.json`` — never checkpoints or weights. A folder is written
atomically (a temporary folder renamed into place), so a folder with ``cell.json`` is complete.

Divergence is a result: a run that stopped at a non-finite loss (the engine's ``loss became ...``
error in its log, or its ``diverged.json``) or that finished at chance level (final test error
≥ 0.95 · (100 − 100 / classes) %) is recorded as diverged and counts at chance error.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..analysis.stats import at_chance
from ..errors import UserError
from ..formats import check_format, stamped
from ..jobs.run_folder import RunFolder
from ..train.config import PLACEMENT
from ..train.metrics import CHANCE_FRACTION, chance_error, last_test_error
from ..train.preemption import inject_signal
from ..train.run import CONFIG_FILE, diverged_message
from ..train.run import read_metrics as read_run_metrics
from .plan import Cell, Layout, source_cell
from .spec import StudySpec

CELL_FILE = "cell.json"
RESULT_FILES = (RunFolder.CONFIG, RunFolder.METRICS, RunFolder.STEPS, RunFolder.CARD)  # a finished run's
DIVERGED_FILES = (RunFolder.CONFIG, RunFolder.METRICS)  # a diverged run has no final profile or model card
OPTIONAL_FILES = (RunFolder.PLATFORM, RunFolder.DIVERGED)  # copied when the run wrote them


def read_cell_info(folder: Path) -> dict | None:
    """``cell.json`` of a results folder, or ``None`` when there is none (or it is unreadable)."""
    try:
        info = json.loads((Path(folder) / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    check_format(info, Path(folder) / CELL_FILE)  # a newer tscnet's results: refused, not misread
    return info if isinstance(info, dict) else None


def is_collected(folder: Path) -> bool:
    """A complete results folder: ``cell.json`` and the files a finished (or diverged) run leaves."""
    info = read_cell_info(folder)
    if info is None:
        return False
    needed = DIVERGED_FILES if info.get("diverged") else RESULT_FILES
    return all((Path(folder) / name).is_file() for name in needed)


def diverged_reason(folder: Path) -> str | None:
    """The divergence message of a collected cell, else ``None``."""
    info = read_cell_info(folder) if is_collected(folder) else None
    return info.get("diverged") if info else None


# libyaml's parser where PyYAML was built with it: the same documents (built by the same SafeConstructor)
# about 7x faster than the pure-Python one, which took 9 of a 1,000-cell report's 11 s besides its figures
# and most of a rerun's check of the collected cells' recipes.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> dict:
    """The YAML file at ``path``, parsed as ``yaml.safe_load`` parses it (with libyaml where available)."""
    return yaml.load(Path(path).read_text(), Loader=_LOADER)


def read_metrics_or_empty(folder: Path) -> list[dict]:
    """The epochs of a run or a collected cell (checked as :func:`tscnet.train.run.read_metrics` does:
    a damaged line is a one-line error); ``[]`` for a folder that holds no run yet (no ``config.yaml``),
    which that function refuses."""
    return read_run_metrics(folder) if (Path(folder) / CONFIG_FILE).is_file() else []


def chance_error_of_config(config: dict) -> float:
    """Chance-level test error of a run's config: :func:`tscnet.train.metrics.chance_error` of its
    ``model.num_classes`` (10 where unset), 100 − 100 / classes (%)."""
    return chance_error(config.get("model", {}).get("num_classes") or 10)


def _log_errors(log: Path, start: int = 0) -> list[str]:
    """The one-line errors (``tscnet train: error: ...``) in a run's log from byte ``start`` on, oldest
    first, without the prefix."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]


def log_error(log: Path, start: int = 0) -> str | None:
    """The last one-line error in a run's log (why a trainer that failed did), else ``None``; ``start``:
    the log's size when this attempt began (an earlier attempt's error is not this one's reason)."""
    errors = _log_errors(log, start)
    return errors[-1] if errors else None


def log_divergence(log: Path) -> str | None:
    """The engine's one-line divergence error in a run's log (``loss became nan ...``), else ``None``."""
    errors = [error for error in _log_errors(log) if "loss became" in error]
    return errors[-1] if errors else None


def run_divergence(run_dir: Path, log: Path | None = None) -> str | None:
    """Why an ended run failed and counts at chance error, else ``None``: it diverged (its
    ``diverged.json``, the engine's error in its log) or, finished, it did not learn (a final test
    error at chance level, :func:`did_not_learn`)."""
    run_dir = Path(run_dir)
    try:
        message = diverged_message(run_dir)
    except (OSError, UserError):  # unreadable or damaged: the log and the metrics decide
        message = None
    if message is None and log is not None:
        message = log_divergence(log)
    if message:
        return message
    if RunFolder(run_dir).finished:
        metrics = read_metrics_or_empty(run_dir)
        try:
            config = read_yaml(RunFolder(run_dir).config_file)
        except OSError:
            return None
        if metrics and "test_error" in metrics[-1]:
            error, chance = float(metrics[-1]["test_error"]), chance_error_of_config(config)
            if at_chance(error, chance):
                return f"final test error {error:.2f} % {AT_CHANCE} (≥ {CHANCE_FRACTION:g} × {chance:.2f} %)"
    return None


# How run_divergence words a run that finished at chance level (cell.json's "diverged" keeps this reason).
AT_CHANCE = "is at chance level"


def did_not_learn(reason: str) -> bool:
    """Whether a failed cell's reason (``cell.json``'s ``diverged``) says it finished at chance level —
    it did not learn — rather than diverging (a non-finite loss). Both count at chance error."""
    return AT_CHANCE in reason


def cell_info(spec: StudySpec, cell: Cell, steps: str, overrides: list[str], diverged: str | None = None) -> dict:
    """The ``cell.json`` of ``cell``: the converged study's keys first, in its order (``policy`` is the
    arm's label for a string arm, its ``steps`` for a mapping arm; ``steps`` the resolved
    ``model.steps``), then ``arm``, the arm's ``set``, every override after the recipe (``overrides``,
    grid values aside), ``grid`` (``{key: value}``, with a grid) and ``diverged`` (why, when it did)."""
    source = source_cell(spec, cell)
    info: dict[str, Any] = {
        "model": cell.model,
        "policy": cell.arm.steps if cell.arm.mapping else cell.arm.name,
        "seed": cell.seed,
        "steps": steps,
        "source": str(source.rel) if source else None,
        "arm": cell.arm.name,
        "set": list(cell.arm.set),
        "overrides": list(overrides),
    }
    if cell.grid:
        info["grid"] = cell.grid_values
    if diverged:
        info["diverged"] = diverged
    return info


def collect(run_dir: Path, final: Path, info: dict) -> Path:
    """Copy the small results of finished (or diverged) run ``run_dir`` with ``info`` as ``cell.json``
    to ``final``, atomically; returns ``final``."""
    run_dir, final = Path(run_dir), Path(final)
    if is_collected(final):  # another study process collected it first (two launches of one study)
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as error:
        raise _unwritable(run_dir, final, error) from None
    diverged = bool(info.get("diverged"))
    try:
        for name in RESULT_FILES + OPTIONAL_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
                inject_signal("collect", name)  # tests: kill -9 of the study while it copies
            elif name == RunFolder.METRICS and diverged:  # diverged in its first epoch: no epoch finished
                (tmp / name).write_text("")
            elif name in (DIVERGED_FILES if diverged else RESULT_FILES):
                raise UserError(f"{run_dir} has no {name}; it cannot be collected")
        (tmp / CELL_FILE).write_text(json.dumps(stamped(info), indent=2) + "\n")
        inject_signal("collect", CELL_FILE)
        if final.exists() and not is_collected(final):  # a partial copy from a killed runner: replace it
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_collected(final):  # not another process's copy of the same results: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise _unwritable(run_dir, final, error) from None
        raise
    return final


def _unwritable(run_dir: Path, final: Path, error: OSError) -> UserError:
    """A collect that failed to copy (a full disk, a read-only folder): nothing of the cell was kept."""
    return UserError(
        f"cannot copy {run_dir} to {final}: {error.strerror or error}; nothing of it was kept, and "
        "the next tscnet study collects it"
    )


def final_error(folder: Path) -> float:
    """The test error of the last evaluated epoch (a diverged run's may be an early one; NaN if none was)."""
    error = last_test_error(read_metrics_or_empty(folder))
    return float("nan") if error is None else error


# ---------------------------------------------------------------------------------------------
# Configs: what a cell trains, and whether a run on disk is that


def step_spec(spec: StudySpec, cell: Cell, layout: Layout) -> str:
    """The ``model.steps`` of ``cell``; an ablation's comes from its source's collected results:
    ``profile:<source results>`` (its final Δt, frozen) or ``fixed:<T / D of the source>``."""
    from ..stepping.profile import read_profile

    source = source_cell(spec, cell)
    if source is None:
        return cell.arm.steps
    folder = layout.result_dir(source)
    if not is_collected(folder):
        raise UserError(f"{cell}: the results of {source} are not in {layout.results} yet")
    if diverged_reason(folder):
        raise UserError(f"{cell}: its source {source} diverged, so there is no final profile to ablate")
    if cell.arm.ablation == "profile-of":
        return f"profile:{layout.for_recipe(folder)}"
    profile = read_profile(folder)
    return f"fixed:{profile['evolution_time'] / len(profile['dt'])!r}"


def cell_overrides(spec: StudySpec, cell: Cell, extra: tuple[str, ...] = ()) -> list[str]:
    """The overrides of ``cell`` after the recipe: the spec's ``set``, ``extra`` (the command line's),
    an ablation's source arm's ``set``, the arm's own ``set``. Grid values come after these."""
    source = spec.arm(cell.arm.source) if cell.arm.source else None
    return [*spec.set, *extra, *(source.set if source else ()), *cell.arm.set]


def base_config(spec: StudySpec, cell: Cell, extra: tuple[str, ...] = ()) -> dict:
    """``cell``'s recipe with an ablation's steps left unresolved (for estimates and early checks)."""
    from ..train.config import load_config, put_value

    config = load_config(spec.recipe, cell_overrides(spec, cell, extra), validate=False)
    for key, value in cell.grid_values.items():
        put_value(config, key, value)
    config["model"].update(name=cell.model, steps=cell.arm.steps)
    config["train"].update(seed=cell.seed, progress=False)
    return config


def check_configs(spec: StudySpec, cells: list[Cell], extra: tuple[str, ...] = ()) -> None:
    """Every cell's recipe (ablations' steps aside) is valid: a bad key or value fails before anything runs."""
    from ..train.config import validate_config

    seen = set()
    for cell in cells:
        key = (cell.model, cell.arm.name if not cell.arm.ablation else cell.arm.source, cell.grid)
        if key in seen:
            continue
        seen.add(key)
        config = base_config(spec, cell, extra)
        if cell.arm.ablation:
            config["model"]["steps"] = "none"
        validate_config(config)


def check_cell_data(
    spec: StudySpec, cells: list[Cell], workdir: Path, extra: tuple[str, ...] = (), download: bool = True
) -> None:
    """Every dataset the ``cells`` train on can be read from ``workdir``, where their runs start, with
    their subsets: a missing or damaged data folder fails once, before any cell starts, instead of
    once per cell. ``download=False`` (a dry run) fetches nothing: data a recipe would download is
    not checked."""
    from ..data import check_data

    seen = set()
    for cell in cells:
        data = base_config(spec, cell, extra)["data"]
        key = tuple(data[k] for k in ("name", "data_dir", "image_size", "train_subset", "test_subset"))
        if key in seen:
            continue
        seen.add(key)
        if data["download"] and not download:
            continue
        folder = data["data_dir"]
        if folder is not None and not Path(folder).expanduser().is_absolute():
            folder = workdir / folder
        try:
            check_data(
                data["name"],
                folder,
                image_size=data["image_size"],
                train_subset=data["train_subset"],
                test_subset=data["test_subset"],
                download=data["download"],
            )
        except UserError as error:
            relative = f" (relative to {workdir}, where the runs start)" if folder != data["data_dir"] else ""
            message = str(error).replace("--data-dir", "--set data.data_dir=DIR")  # train's flag; a study's --set
            raise UserError(f"{message}{relative}; no cell was started") from None


def cell_config(spec: StudySpec, cell: Cell, layout: Layout, extra: tuple[str, ...] = ()) -> dict:
    """The resolved recipe of ``cell`` (what its run trains)."""
    from ..train.config import validate_config

    config = base_config(spec, cell, extra)
    config["model"]["steps"] = step_spec(spec, cell, layout)
    return validate_config(config)


def definition(config: dict, filled: dict) -> dict:
    """``config`` without placement keys; ``model.num_classes``/``in_chans`` as the run filled them in."""
    config = copy.deepcopy(config)
    for section, key in PLACEMENT:
        config.get(section, {}).pop(key, None)
    for key in ("num_classes", "in_chans"):
        if config["model"].get(key) is None:
            config["model"][key] = filled["model"].get(key)
    return config


def config_difference(want: dict, have: dict) -> str | None:
    """``None`` if run config ``have`` defines the same run as ``want``, else the first difference.

    A key missing on one side (a run saved before the key was added to the schema) reads as its
    schema default there."""
    from ..train.config import DEFAULTS

    a, b = definition(want, have), definition(have, have)

    def value(config: dict, section: str, key: str) -> Any:
        if key in config.get(section, {}):
            return config[section][key]
        return DEFAULTS.get(section, {}).get(key)

    for section in sorted(set(a) | set(b)):
        for key in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
            if (section, key) in PLACEMENT:
                continue
            x, y = value(a, section, key), value(b, section, key)
            if x != y:
                return f"{section}.{key}: {y!r} there, {x!r} in this recipe"
    return None


def check_recipe(spec: StudySpec, cells: list[Cell], layout: Layout, extra: tuple[str, ...] = ()) -> None:
    """Collected results must come from this study's recipe: refuse to mix recipes in one results folder."""
    for cell in cells:
        folder = layout.result_dir(cell)
        if is_collected(folder):
            problem = config_difference(cell_config(spec, cell, layout, extra), read_yaml(folder / RunFolder.CONFIG))
            if problem:
                raise UserError(
                    f"results {folder} were trained with another recipe ({problem}); "
                    "use another --results folder or remove them"
                )
