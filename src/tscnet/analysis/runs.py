"""Run folders as analysis input: loading, grouping by model and policy, test images."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..stepping import POLICY_CLASSES, StepPolicy
from ..train.run import DIVERGED_FILE, Run, load_run

__all__ = [
    "load_runs",
    "check_one_dataset",
    "group_key",
    "group_label",
    "group_runs",
    "has_controller",
    "learns_steps",
    "seed_of",
    "test_batch",
]


def load_runs(
    paths: Iterable[Path], with_model: bool = True, unfold_ok: bool = False, diverged_ok: bool = False
) -> list[Run]:
    """Read each run folder (the last checkpoint's model with ``with_model``; with ``unfold_ok`` a
    finished run without checkpoint.pt gives its folded weights with the steps divided back out);
    one dataset only. With ``diverged_ok`` a run that diverged (``diverged.json``) is read even
    before its first finished epoch."""
    runs = []
    for path in dict.fromkeys(Path(p).resolve() for p in paths):  # each folder once, order kept
        run = load_run(path, with_model=with_model, unfold_ok=unfold_ok)
        if not run.metrics and not (diverged_ok and (path / DIVERGED_FILE).is_file()):
            raise UserError(f"run {path} has no finished epoch (empty metrics.jsonl)")
        runs.append(run)
    if not runs:
        raise UserError("no run folder given")
    check_one_dataset(runs)
    return runs


def check_one_dataset(runs: Sequence[Run]) -> str:
    """The runs' common dataset name; a UserError naming the mix otherwise."""
    by_data: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        by_data[run.config["data"]["name"]].append(run.name)
    if len(by_data) > 1:
        mix = "; ".join(f"{name}: {', '.join(names)}" for name, names in by_data.items())
        raise UserError(f"runs of different datasets cannot be compared ({mix}); pass runs of one dataset")
    return next(iter(by_data))


def policy_of(run: Run) -> str:
    """The run's step policy string (``model.steps`` of its config)."""
    return str(run.config["model"]["steps"])


def seed_of(run: Run) -> int:
    """The run's seed (``train.seed`` of its config)."""
    return int(run.config["train"]["seed"])


def group_key(run: Run) -> tuple[str, str]:
    """``(model name, step policy)``: runs that differ only in the seed."""
    return run.config["model"]["name"], policy_of(run)


def group_label(key: tuple[str, str]) -> str:
    """``model / policy``: a :func:`group_key` as a label."""
    return f"{key[0]} / {key[1]}"


def _registered_class(policy: str) -> type[StepPolicy] | None:
    """The class of a run's policy string, ``None`` if its name is not registered in this process
    (a policy a training script registered itself: the run's files still hold its steps)."""
    return POLICY_CLASSES.get(policy.partition(":")[0])


def has_controller(policy: str) -> bool:
    """Whether ``policy``'s Δt comes from a controller of the weights (its class's
    :attr:`~tscnet.stepping.StepPolicy.controller`: ``tsc``, ``mlp``); an unregistered one: no."""
    cls = _registered_class(policy)
    return cls is not None and cls.controller


def learns_steps(policy: str) -> bool:
    """Whether Δt is trained (its class's :attr:`~tscnet.stepping.StepPolicy.learned`; not ``none``,
    ``fixed``, ``depth``, a frozen ``profile``); an unregistered policy counts as trained (its steps are shown)."""
    cls = _registered_class(policy)
    return cls is None or cls.learned


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by :func:`group_key`, groups in first-seen order, seeds sorted."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return {k: sorted(v, key=seed_of) for k, v in groups.items()}


def test_batch(config: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (normalised, no augmentation) and labels of a run's dataset."""
    from ..data import create_test_loader

    data = config["data"]
    test, _ = create_test_loader(data["name"], data.get("data_dir"), batch_size=n, image_size=data.get("image_size"))
    images, labels = next(iter(test))
    return images[:n], labels[:n]
