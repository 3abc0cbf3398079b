"""Run folders as analysis input: loading, grouping by model and policy, test images."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..stepping import POLICY_CLASSES, StepPolicy
from ..train.config import PLACEMENT
from ..train.run import DIVERGED_FILE, Run, load_run

__all__ = [
    "load_runs",
    "check_one_dataset",
    "group_key",
    "group_label",
    "group_runs",
    "HOW_IT_RAN",
    "recipe_differences",
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


#: Config keys that say where and how a run ran or what it recorded, not what it trained: runs of
#: one model and policy that differ only in these and the seed are seeds of one group. The placement
#: keys a study also ignores (:data:`tscnet.train.config.PLACEMENT`), plus the precision and
#: compilation of the step and what the run recorded.
HOW_IT_RAN = frozenset(
    {f"{section}.{key}" for section, key in PLACEMENT}
    | {
        "train.seed",
        "train.amp",
        "train.channels_last",
        "train.compile",
        "train.checkpoint_every",
        "train.log",
        "train.eval_epochs",
        "train.loss_steps",
    }
)


def group_key(run: Run) -> tuple[str, str]:
    """``(model name, step policy)``: what a group's runs share (:func:`group_runs` also splits a
    group whose recipes differ in more than the seed)."""
    return run.config["model"]["name"], policy_of(run)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_differences(runs: Sequence[Run]) -> list[str]:
    """For runs of one model and policy: each run's values of the recipe keys on which the runs
    differ (``"model.init=fixup, optim.lr=0.1"``), ``""`` for every run when they differ only in
    the seed and in how they ran (:data:`HOW_IT_RAN`). A key some runs lack (written by an older
    tscnet) is not compared."""
    flats = [_flat(r.config) for r in runs]
    shared = set.intersection(*(set(f) for f in flats)) - HOW_IT_RAN if flats else set()
    differ = sorted(k for k in shared if len({repr(f[k]) for f in flats}) > 1)
    return [", ".join(f"{k}={f[k]}" for k in differ) for f in flats]


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
    """Runs grouped by :func:`group_key` into ``(model, label)`` groups: the label is the policy, or,
    where runs of one model and policy differ in more than the seed, the policy and those keys
    (``"none (model.init=fixup)"``; :func:`recipe_differences`), so that different recipes are never
    averaged as seeds of one. Groups in first-seen order, seeds sorted. A group's policy is
    :func:`policy_of` its runs, not its label."""
    by_policy: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_policy[group_key(run)].append(run)
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for (model, policy), members in by_policy.items():
        for run, differences in zip(members, recipe_differences(members)):
            groups[(model, f"{policy} ({differences})" if differences else policy)].append(run)
    return {k: sorted(v, key=seed_of) for k, v in groups.items()}


def test_batch(config: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (normalised, no augmentation) and labels of a run's dataset."""
    from ..data import create_test_loader

    data = config["data"]
    test, _ = create_test_loader(data["name"], data.get("data_dir"), batch_size=n, image_size=data.get("image_size"))
    images, labels = next(iter(test))
    return images[:n], labels[:n]
