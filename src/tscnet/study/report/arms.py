"""What the report says of an arm beside its numbers: its label, the arm an ablation was made from,
the order arms are listed in, and how figures draw it (a controller's Δt solid, the others dashed)."""

from __future__ import annotations

from ...stepping import policy_class
from ..spec import StudySpec, ablation_kind
from .load import Result


def is_controller(steps: str) -> bool:
    """Whether an arm's Δt comes from a controller (solid lines in the figures); an ablation's is frozen."""
    return not ablation_kind(steps) and policy_class(steps).controller


def is_constant(steps: str) -> bool:
    """Whether an arm's Δt is a constant its steps state (no heatmap); an ablation's comes from its source run."""
    return not ablation_kind(steps) and policy_class(steps).constant


def arm_label(spec: StudySpec, name: str) -> str:
    """The arm's label in tables and legends (an ablation not in the spec: what it freezes, of which arm)."""
    try:
        return spec.arm(name).label
    except KeyError:
        kind = ablation_kind(name)
        source = name.partition(":")[2]
        return (
            f"{source}'s final Δt profile, frozen"
            if kind == "profile-of"
            else f"fixed Δt = T/D of {source}"
            if kind == "fixed-of"
            else name
        )


def arm_source(spec: StudySpec, result: Result) -> str | None:
    """The arm an ablation's result was made from (``tsc`` for ``profile-of:tsc``), else ``None``."""
    try:
        return spec.arm(result.arm).source
    except KeyError:
        return result.steps.partition(":")[2] if ablation_kind(result.steps) else None


def ordered(names: list[str], known: list[str]) -> list[str]:
    """``names`` in the order of ``known`` (the spec's arms or models), the others after them, sorted."""
    first = [n for n in known if n in names]
    return first + sorted(n for n in names if n not in first)
