"""Step policies: how the step sizes Δt_d of all residual blocks are produced.

Every policy computes the steps of *all* blocks in one call (``policy()``, a flat tensor of
``Σ_d C_d`` values), once per forward pass of the model; the sites read them back by block index.

==============  ==============================================================================
``none``        the vanilla model: no policy, no sites, Δt ≡ 1.
``fixed:V``     Δt_d = V for every block and channel (e.g. the small step of Zhang et al. 2019).
``scalar[:I]``  one free learnable Δt per block, init I (0 allowed: ReZero / SkipInit-like).
``channel[:I]`` a free learnable Δt per block and channel, init I = 1 (LayerScale-like).
``mlp``         Δt_d = Θ(w_d): a controller of the block's own weights, no recurrence (ablation).
``tsc``         Δt_d = Θ(w_d; Δt_1..Δt_{d−1}): the paper's LSTM controller across the blocks.
==============  ==============================================================================
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .branches import Branch
from .sites import prepare_sites


class StepPolicy(nn.Module):
    """Base class: produces the steps of all D blocks, flat (``Σ_d C_d`` values, block after block).

    Subclasses implement :meth:`forward`. The model's step sites call :meth:`site_args`; the first
    block's call runs the policy and prepares every site's input (one batched op per kind of
    site), the others read theirs back. No Python counter or flag changes between calls, so
    ``torch.compile`` sees the same program every step.
    """

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        # Plain lists, not submodules: the blocks and sites belong to the model, not to the policy.
        self.__dict__["branches"] = branches
        self.__dict__["sites"] = []
        self.sizes = [b.channels for b in branches]
        self._site_args: Optional[list] = None

    def forward(self) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> list[torch.Tensor]:
        """``[Δt_0, ..., Δt_{D-1}]``, one 1-D tensor of ``C_d`` values per block."""
        return list(self().split(self.sizes))

    def __getstate__(self) -> dict:
        # The prepared inputs of the last forward are graph nodes: copies and pickles drop them.
        return {**self.__dict__, "_site_args": None}

    def site_args(self, index: int):
        """The forward input of block ``index``'s site; block 0 prepares those of this forward pass."""
        if index == 0 or self._site_args is None:
            self._site_args = prepare_sites(self.sites, self(), self.sizes)
        return self._site_args[index]

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}"


class FixedSteps(StepPolicy):
    """Δt_d ≡ ``value`` (a constant, not trained)."""

    def __init__(self, branches: list[Branch], value: float = 1.0) -> None:
        super().__init__(branches)
        self.value = float(value)
        self.register_buffer("dt", torch.full((sum(self.sizes),), self.value), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.dt

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, value={self.value}"


class FreeSteps(StepPolicy):
    """Free learnable steps: one per block (``per_channel=False``) or one per block and channel."""

    def __init__(self, branches: list[Branch], init: float = 1.0, per_channel: bool = True) -> None:
        super().__init__(branches)
        self.per_channel = per_channel
        if not value > 0:  # also refuses NaN
            raise ValueError(f"fixed step must be positive, got {value}: Δt = 0 switches every residual branch "
                             "off and Δt < 0 runs the ODE backwards in time (for a learnable step that may "
                             "start at 0, use scalar:0)")
        n = sum(self.sizes) if per_channel else len(self.sizes)
        self.dt = nn.Parameter(torch.full((n,), float(init)))
        block_of_channel = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.register_buffer("block_of_channel", block_of_channel, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.dt if self.per_channel else self.dt[self.block_of_channel]

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, per_channel={self.per_channel}"


# ---------------------------------------------------------------------------------------------
# Policy specs: "name[:arg][,key=value...]" strings or config objects, and the registry.


@dataclass
class PolicySpec:
    """A parsed step policy: ``name`` plus constructor options (``PolicySpec("tsc", {"hidden": 64})``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        if set(self.options) == {"value"} or set(self.options) == {"init"}:
            return f"{self.name}:{next(iter(self.options.values()))}"
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))


@dataclass
class _Entry:
    factory: Optional[Callable[..., StepPolicy]]
    positional: Optional[str]  # the option a bare ``name:V`` sets
    options: dict[str, type]


_POLICIES: dict[str, _Entry] = {}


def register_policy(name: str, factory, positional: Optional[str] = None, **options: type) -> None:
    _POLICIES[name] = _Entry(factory, positional, options)


def policy_names() -> list[str]:
    return list(_POLICIES)


def _convert(name: str, key: str, value: Any, kind: type) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"step policy {name!r}: option {key}={value!r} is not a valid {kind.__name__}") from None


def parse_policy(spec: Union[str, PolicySpec, dict, None]) -> PolicySpec:
    """Parse ``"tsc"``, ``"fixed:0.1"``, ``"tsc:hidden=64,dt_max=2"``, a dict or a :class:`PolicySpec`."""
    if spec is None:
        return PolicySpec("none")
    if isinstance(spec, PolicySpec):
        name, raw = spec.name, dict(spec.options)
    elif isinstance(spec, dict):
        raw = dict(spec)
        name = str(raw.pop("name", "none"))
    elif isinstance(spec, str):
        name, _, args = spec.strip().partition(":")
        raw = {}
        for i, item in enumerate(a for a in args.split(",") if a.strip()):
            key, eq, value = item.partition("=")
            if not eq:
                entry = _POLICIES.get(name)
                if i or entry is None or entry.positional is None:
                    raise ValueError(f"step policy {spec!r}: expected key=value, got {item!r}")
                key, value = entry.positional, item
            raw[key.strip()] = value.strip()
    else:
        raise TypeError(f"step policy must be a string, dict or PolicySpec, not {type(spec).__name__}")
    if name not in _POLICIES:
        close = difflib.get_close_matches(name, _POLICIES, n=3, cutoff=0.3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown step policy {name!r}{hint}; valid: {', '.join(_POLICIES)}")
    entry = _POLICIES[name]
    unknown = set(raw) - set(entry.options)
    if unknown:
        valid = ", ".join(entry.options) or "none"
        raise ValueError(f"step policy {name!r}: unknown option(s) {', '.join(sorted(unknown))} (valid: {valid})")
    return PolicySpec(name, {k: _convert(name, k, v, entry.options[k]) for k, v in raw.items()})


def build_policy(spec: Union[str, PolicySpec, dict], branches: list[Branch]) -> Optional[StepPolicy]:
    """The policy module for ``spec`` over ``branches``, or ``None`` for ``none``."""
    spec = parse_policy(spec)
    factory = _POLICIES[spec.name].factory
    return None if factory is None else factory(branches, **spec.options)


register_policy("none", None)
register_policy("fixed", FixedSteps, positional="value", value=float)
register_policy("scalar", lambda b, init=1.0: FreeSteps(b, init, per_channel=False), positional="init", init=float)
register_policy("channel", lambda b, init=1.0: FreeSteps(b, init, per_channel=True), positional="init", init=float)
