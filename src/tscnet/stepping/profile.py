"""Step profiles: the final Δt of every block and channel of a model, as a small JSON file.

Every ``tscnet train`` run writes ``RUN/steps.json`` at its end; the ``profile:PATH`` policy
reads one back (from a run folder or the file itself) to train a new model with those steps
frozen. The format (JSON only, never pickle; floats at full precision, so a profile read back
is bit-identical in float32)::

    {"model": "cifar_resnet20", "steps": "tsc", "evolution_time": T,
     "dt": [[Δt_0[0], ..., Δt_0[C_0 − 1]], [Δt_1[0], ...], ...]}

with ``T = Σ_d mean_c Δt_d`` (the evolution time, as in the run's metrics).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InvalidValue
from ..formats import check_format, stamped

__all__ = ["PROFILE_FILE", "profile_dict", "read_profile"]

PROFILE_FILE = "steps.json"


def profile_dict(steps: Sequence[torch.Tensor], model: str, spec: str) -> dict:
    """The profile of ``steps`` (one 1-D tensor per block, e.g. :func:`tscnet.step_sizes`)."""
    dt = [[float(v) for v in s.detach().float().cpu().flatten().tolist()] for s in steps]
    return stamped(
        {
            "model": str(model),
            "steps": str(spec),
            "evolution_time": sum(float(s.detach().float().mean()) for s in steps),
            "dt": dt,
        }
    )


def read_profile(path: str | Path) -> dict:
    """Read and check a profile from a run folder (its ``steps.json``) or a JSON file.

    Returns the parsed dict plus ``"file"`` (the file read). Raises ``ValueError`` with the
    reason for a missing, unreadable or malformed file.
    """
    path = Path(path)
    file = path / PROFILE_FILE if path.is_dir() else path
    if not file.is_file():
        where = (
            f"run folder {path} has no {PROFILE_FILE} (runs write it when they finish)"
            if path.is_dir()
            else f"{path} is neither a run folder nor a step profile file"
        )
        raise InvalidValue(f"cannot read a step profile: {where}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidValue(f"step profile {file} is not valid JSON: {str(error).splitlines()[0]}") from None
    check_format(data, f"step profile {file}")
    blocks = data.get("dt") if isinstance(data, dict) else None
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, list) and b for b in blocks):
        raise InvalidValue(f'step profile {file} needs a non-empty list "dt" of per-block lists of step sizes')
    for d, values in enumerate(blocks):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise InvalidValue(f"step profile {file}: block {d} holds a value that is not a finite number")
    return {**data, "file": str(file)}
