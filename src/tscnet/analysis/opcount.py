"""Launch counts of one training step: top-level ``aten::`` ops and, on CUDA, device kernels.

docs/design.md, "Count launches, not FLOPs": on a GPU every small op is a kernel launch of several µs
and a CIFAR-size step is launch-bound, so a step policy's cost there is the number of ops it adds,
not its FLOPs. This module measures that number with ``torch.profiler``:

* **ops**: events whose name starts with ``aten::`` and that have no ``aten::`` ancestor in the
  profiler's CPU tree (``event.cpu_parent`` chain): one per dispatcher call made by Python or by
  the autograd engine, not the ops a composite op calls internally. Backward ops count too (their
  parents are ``autograd::engine::evaluate_function: ...`` nodes, not ``aten::`` ops).
* **kernels** (CUDA only): device-side kernel events of the same step, memcpy and memset excluded
  and reported apart.

One training step here is forward + ``cross_entropy`` + backward, profiled after one un-profiled
warm-up step and ``zero_grad(set_to_none=True)`` (so backward allocates fresh ``.grad`` tensors
instead of accumulating: no ``add_`` per parameter). The optimizer step is not counted (foreach
SGD is a few multi-tensor ops whatever the policy). The count does not depend on the batch size
(every op runs once per step whatever N is), so it is taken at batch 2 by default: fast on a CPU.

The policies × models table of these counts: ``python benchmarks/opcount.py`` (the same as
``python benchmarks/overhead.py --ops-only``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["OPS_BATCH", "count_step", "count_train_step", "device_launches", "top_level_aten_ops", "usable_policies"]

OPS_BATCH = 2
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # kineto's per-profile info lines on stderr: warnings and up only


def _is_aten(event) -> bool:
    return event.name.startswith("aten::")


def top_level_aten_ops(events) -> Counter:
    """Names of the CPU events that are ``aten::`` ops with no ``aten::`` ancestor, counted."""
    counts: Counter = Counter()
    for e in events:
        if e.device_type != DeviceType.CPU or not _is_aten(e):
            continue
        parent = e.cpu_parent
        while parent is not None and not _is_aten(parent):
            parent = parent.cpu_parent
        if parent is None:
            counts[e.name] += 1
    return counts


def _device_kind(event) -> str | None:
    """``kernel``, ``memcpy``, ``memset`` for device-side events; None for anything else."""
    if event.device_type not in (DeviceType.CUDA, getattr(DeviceType, "HIP", DeviceType.CUDA)):
        return None
    kind = (getattr(event, "activity_type", None) or "").lower()
    name = event.name.lower()
    if "memcpy" in kind or name.startswith("memcpy"):
        return "memcpy"
    if "memset" in kind or name.startswith("memset"):
        return "memset"
    if kind in ("", "kernel", "concurrent_kernel"):
        return "kernel"
    return None  # e.g. gpu_user_annotation: a range on the device timeline, not a launch


def device_launches(events) -> Counter:
    """Device-side events of a profile by kind: ``kernel``, ``memcpy``, ``memset``."""
    counts: Counter = Counter()
    for e in events:
        kind = _device_kind(e)
        if kind is not None:
            counts[kind] += 1
    return counts


def count_step(step: Callable[[], None], device: torch.device) -> dict:
    """Profile one call of ``step`` (already warmed up): top-level aten ops and device launches."""
    activities = [ProfilerActivity.CPU]
    cuda = device.type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    ops = top_level_aten_ops(events)
    out = {"ops": sum(ops.values()), "ops_by_name": dict(ops.most_common())}
    if cuda:
        launches = device_launches(events)
        out.update(kernels=launches["kernel"], memcpy=launches["memcpy"], memset=launches["memset"])
    return out


def count_train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    autocast_dtype=None,
) -> dict:
    """Launch counts of one forward + cross-entropy + backward of ``model`` on ``(x, y)``.

    One un-profiled warm-up step (with ``optimizer.step()`` when given) first, then
    ``zero_grad(set_to_none=True)``, then the profiled forward + backward. Gradients are freed
    afterwards. ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under autocast.
    """
    from ..stepping.watch import stop_watching

    device = x.device
    stop_watching(model)  # the first steps' untrained-steps check is no cost of the policy
    model.train()

    def grads_to_none() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in model.parameters():
                p.grad = None

    def fwd_bwd() -> None:
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with ctx:
            out = model(x)
        F.cross_entropy(out.float(), y).backward()

    grads_to_none()
    fwd_bwd()
    if optimizer is not None:
        optimizer.step()
    grads_to_none()
    try:
        return count_step(fwd_bwd, device)
    finally:
        grads_to_none()


def usable_policies(requested: list[str]) -> tuple[list[str], list[str]]:
    """``(policies, notes)`` for a table of counts: ``none`` first (the base of every ratio), each
    policy once, and those this version cannot parse skipped with a note instead of an error."""
    from ..stepping import parse_policy

    policies, notes = [], []
    for p in (["none"] if "none" not in requested else []) + list(requested):
        try:
            parse_policy(p)
        except (ValueError, TypeError) as e:
            text = str(e).strip().splitlines()
            notes.append(f"skipped policy {p!r}: {type(e).__name__}: {text[0] if text else ''}")
            continue
        if p not in policies:
            policies.append(p)
    policies.sort(key=lambda p: p != "none")
    return policies, notes
