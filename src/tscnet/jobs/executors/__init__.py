"""Executors run tasks (a study's cells, a sweep's runs): ``local`` (subprocesses on this machine) and
``slurm`` (one job per task).

Look one up with :func:`create_executor`; add one with :func:`register_executor`. Built-in
executors are imported on first use only (``slurm`` needs the optional ``submitit``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ...errors import UserError
from ...registry import Registry
from .base import Executor, Task

EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")
# name -> module defining it (imported when first asked for, so optional dependencies stay optional)
_BUILTIN = {"local": "tscnet.jobs.executors.local", "slurm": "tscnet.jobs.executors.slurm"}


def register_executor(*names: str):
    """Class decorator: ``@register_executor("local")`` makes ``kind: local`` build that class."""
    return EXECUTORS.register(*names)


def executor_names() -> list[str]:
    """The executor kinds, registered and built-in (not imported yet), sorted."""
    return sorted(set(EXECUTORS) | set(_BUILTIN))


def create_executor(kind: str, **options: Any) -> Executor:
    """The executor registered as ``kind``, built with ``options`` (e.g. ``workers=2, threads=1``).

    Raises:
        UserError: unknown ``kind``, its module's optional dependency is missing, or an option it
            does not take.
    """
    if kind not in EXECUTORS and kind in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[kind])
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("tscnet"):
                raise UserError(f"executor {kind!r} is not available in this version of tscnet") from None
            raise UserError(
                f"executor {kind!r} needs the Python package {error.name!r}: pip install 'tscnet[{kind}]'"
            ) from None
    if kind not in EXECUTORS:
        raise UserError(f"unknown executor {kind!r}; known: {', '.join(executor_names())}")
    try:
        return EXECUTORS[kind](**options)
    except TypeError as error:
        raise UserError(f"executor {kind!r}: {error}") from None


__all__ = ["EXECUTORS", "Executor", "Task", "create_executor", "executor_names", "register_executor"]
