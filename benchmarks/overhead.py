"""What the step policies cost: launches, training-step time and memory while training, nothing after folding.

For each policy, side by side in one run (policies interleaved round by round, so all see the
same machine load):

* **launches** (docs/design.md, "Count launches, not FLOPs"): the top-level ``aten::`` ops of one
  training step (forward + cross-entropy + backward), and on CUDA the device kernels of that step
  (memcpy/memset apart), counted with ``torch.profiler`` at batch ``--ops-batch`` (2): the count
  does not depend on the batch size, every op runs once per step whatever N is. See
  :mod:`tscnet.analysis.opcount` for what counts.
* the median time of one training step (forward + backward + SGD) at ``--batch-size`` and at
  ``--small-batch`` (8; where a step is launch-bound, the regime in which a policy's ops cost the
  most), relative to ``none``;
* the policy alone (all steps computed, then a backward through them);
* the activation memory saved for backward (bytes of the tensors autograd keeps, summed by a
  saved-tensor hook: deterministic, any device) and, on CUDA, the peak allocated memory of one
  training step of that policy alone (the other cases' gradients freed, peak stats reset first);
* the parameter count while training and after ``fold_steps``, and the median inference time of
  the folded model relative to ``none``;
* with ``--compile``: the same training step through ``torch.compile(model)`` after
  ``--compile-warmup`` steps, then with recompiles turned into errors
  (``torch._dynamo.config.error_on_recompile``): a policy that recompiles every step is reported
  as ``recompiled: ...`` instead of being timed on a silent eager fallback.

Targets (cifar_resnet56, batch 128, CPU): ``tsc`` ≤ 1.05× training, folded = 1.00× inference
within noise.

    python benchmarks/overhead.py [--model cifar_resnet56] [--batch-size 128] [--small-batch 8]
                                  [--rounds 12] [--device cpu] [--bf16] [--channels-last]
                                  [--compile [--compile-warmup 3]] [--out FILE.json]
    python benchmarks/overhead.py --ops-only --models cifar_resnet56 resnet50 tv:resnet50 ...

``--ops-only`` prints a policies × models table of op counts (and kernel counts on CUDA) and
their ratios to ``none``, without timing anything (seconds per model on a CPU). Policies that
do not parse (e.g. an option this version lacks) are skipped with a note, not an error.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

import tscnet
from tscnet.analysis.opcount import OPS_BATCH, count_train_step, usable_policies

POLICIES = ["none", "fixed:0.5", "scalar:0", "channel:1", "mlp", "tsc", "tsc:feedback=explicit"]
DEFAULT_OUT = "benchmarks/results/overhead.json"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--models", nargs="+", help="--ops-only: the models of the table (default: --model)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--small-batch", type=int, default=8, help="also time the train step at this batch (0: don't)")
    p.add_argument("--image-size", type=int, help="default 32 for cifar_* models, 224 otherwise")
    p.add_argument("--policies", nargs="+", default=POLICIES)
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds; each policy's median over them")
    p.add_argument("--steps", type=int, default=1, help="timed steps per policy per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # One thread by default: with another process on the other core, 2 OpenMP threads run ~4x
    # slower than 1 (barrier spinning), which would swamp the ratios in noise.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--ops-only", action="store_true", help="only count launches (no timing): policies x models table")
    p.add_argument("--ops-batch", type=int, default=OPS_BATCH, help="batch of the op/kernel counts")
    p.add_argument("--no-ops", action="store_true", help="timing run without the op/kernel counts")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) training steps")
    p.add_argument("--compile-warmup", type=int, default=3, help="compiled steps before recompiles become errors")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--max-seconds", type=float, help="time budget: no new compile or round after it (at least 1 round)")
    p.add_argument("--out", help=f"JSON file (timing runs: default {DEFAULT_OUT}; --ops-only: none unless given)")
    args = p.parse_args(argv)
    if not args.ops_only and args.out is None:
        args.out = DEFAULT_OUT
    return args


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def image_size(args, model: str) -> int:
    return args.image_size or (32 if model.startswith("cifar") else 224)


def inputs(batch: int, size: int, args, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def build_model(name: str, policy: str, args, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tscnet.create_model(name, num_classes=10, steps=policy).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class Case:
    """One policy: its training model and optimizer, its folded model for inference, its samples."""

    def __init__(self, policy: str, args: argparse.Namespace, device: torch.device) -> None:
        self.policy = policy
        self.model = build_model(args.model, policy, args, device)
        self.folded = tscnet.fold_steps(self.model).eval()
        if args.channels_last:
            self.folded.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.train_s: list[float] = []
        self.small_s: list[float] = []
        self.infer_s: list[float] = []
        self.compiled = None
        self.compiled_s: list[float] = []
        self.eager_in_compile_s: list[float] = []
        self.compile_note: Optional[str] = None
        self.compile_detail: Optional[str] = None  # the whole error message (JSON only)
        self.compile_seconds: Optional[float] = None
        self.compile_graphs: Optional[int] = None
        self.compiled_launches: dict = {}


def _autocast(args, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor, args, device) -> None:
    with _autocast(args, device):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def free_grads(cases: list[Case]) -> None:
    for case in cases:
        case.opt.zero_grad(set_to_none=True)
    gc.collect()


def controller_seconds(case: Case, sync, repeats: int = 20) -> float:
    """Median time of the policy alone: all steps computed, then a backward through them."""
    policy = tscnet.get_policy(case.model)
    if policy is None or not any(p.requires_grad for p in policy.parameters()):
        return 0.0
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.cat(policy.compute()).sum().backward()
        sync()
        times.append(time.perf_counter() - start)
    case.opt.zero_grad(set_to_none=True)
    return statistics.median(times)


def saved_activation_bytes(case: Case, x: torch.Tensor, y: torch.Tensor, args, device) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward."""
    total = 0
    seen: set = set()

    def pack(t: torch.Tensor):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:  # parameters and views of one storage count once
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(args, device):
        loss = F.cross_entropy(case.model(x).float(), y)
    del loss
    return total


def _state_bytes(case: Case) -> int:
    """Bytes of the case's parameters and optimizer state (momentum buffers)."""
    n = sum(p.numel() * p.element_size() for p in case.model.parameters())
    for state in case.opt.state.values():
        n += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return n


def cuda_peak_bytes(case: Case, cases: list[Case], x, y, args, device) -> tuple[int, int]:
    """``(step peak, step peak + own parameters and optimizer state)`` of one training step.

    Every case's ``.grad`` is freed first and the peak stats reset right before the step, so the
    peak above the allocated baseline is this case's gradients, activations and temporaries only;
    the other cases' parameters and optimizer state, resident all along, are not counted.
    """
    free_grads(cases)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    train_step(case.model, case.opt, x, y, args, device)
    torch.cuda.synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device) - base
    free_grads(cases)
    return step_peak, step_peak + _state_bytes(case)


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def _over_budget(args, start: float) -> bool:
    return args.max_seconds is not None and time.perf_counter() - start > args.max_seconds


def compile_cases(cases: list[Case], x, y, args, device, sync, start: float) -> None:
    """``torch.compile`` every case and run its warm-up steps; failures are noted, not raised."""
    from torch import _dynamo

    cfg = _dynamo.config
    # All cases share the model class's forward code object: room for every case's graphs, and a
    # hit limit fails loudly instead of falling back to eager.
    cfg.recompile_limit = max(cfg.recompile_limit, 8 * len(cases))
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 64 * len(cases))
    cfg.fail_on_recompile_limit_hit = True
    longest = 0.0  # the slowest compile so far: the next one is not started if it would not fit
    for case in cases:
        if args.max_seconds is not None and time.perf_counter() - start + longest > args.max_seconds:
            case.compile_note = f"not compiled: would not fit in the {args.max_seconds:.0f} s budget"
            continue
        print(f"compiling {case.policy} ({args.compile_warmup} warm-up steps) ...", flush=True)
        graphs = _dynamo_graphs()
        started = time.perf_counter()
        try:
            case.compiled = torch.compile(case.model, mode=None if args.compile_mode == "default" else args.compile_mode)
            for _ in range(max(1, args.compile_warmup)):
                train_step(case.compiled, case.opt, x, y, args, device)
            sync()
        except Exception as e:  # noqa: BLE001 - reported in the table, the other cases go on
            _compile_failed(case, e)
        case.compile_seconds = time.perf_counter() - started
        longest = max(longest, case.compile_seconds)
        case.compile_graphs = _dynamo_graphs() - graphs
        case.opt.zero_grad(set_to_none=True)
    cfg.error_on_recompile = True
    if device.type == "cuda" and not args.no_ops:
        # Kernels of one compiled forward + backward, at the timed batch (another batch would recompile).
        for case in cases:
            if case.compiled is None:
                continue
            try:
                counts = count_train_step(case.compiled, x, y, autocast_dtype=torch.bfloat16 if args.bf16 else None)
                case.compiled_launches = {k: v for k, v in counts.items() if k != "ops_by_name"}
            except Exception as e:  # noqa: BLE001
                _compile_failed(case, e)


def _guard_failure(message: str) -> str:
    """The guard failure that says why a case recompiled (e.g. a Python int mutated in forward).

    Dynamo lists one failure per cached graph of the code object, the other cases' graphs
    included (those fail on the identity/type of their own modules): skip those, take the most
    recent graph's.
    """
    found = []
    for line in message.splitlines():
        m = re.match(r"\s*- (\d+)/(\d+): (.*)", line)
        if m:
            text = " ".join(m.group(3).split("(HINT")[0].split())
            found.append((("___check_type_id" not in text and "___check_obj_id" not in text), int(m.group(2)), text))
    return f"{max(found)[2]}" if found else ""


def _compile_failed(case: Case, e: Exception) -> None:
    from torch._dynamo.exc import RecompileError

    kind = "recompiled" if isinstance(e, RecompileError) or "recompil" in str(e).lower() else "failed"
    reason = _guard_failure(str(e))
    case.compiled, case.compile_note = None, f"{kind}: {_first_line(e)}" + (f" [{reason[:200]}]" if reason else "")
    case.compile_detail = str(e)
    case.opt.zero_grad(set_to_none=True)


def launch_counts(model: torch.nn.Module, args, device, size: int) -> dict:
    x, y = inputs(args.ops_batch, size, args, device, seed=1)
    counts = count_train_step(model, x, y, autocast_dtype=torch.bfloat16 if args.bf16 else None)
    counts.pop("ops_by_name")
    return counts


def _ratio(value, base) -> Optional[float]:
    return None if value is None or not base else value / base


def run_timing(args, device: torch.device, policies: list[str], notes: list[str]) -> dict:
    start = time.perf_counter()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    size = image_size(args, args.model)
    x, y = inputs(args.batch_size, size, args, device)
    xs, ys = inputs(args.small_batch, size, args, device) if args.small_batch > 0 else (None, None)
    cases = []
    for p in policies:
        try:
            cases.append(Case(p, args, device))
        except Exception as e:  # noqa: BLE001 - e.g. an option this model's blocks do not support
            if p == "none":
                raise
            notes.append(f"skipped policy {p!r} on {args.model}: {_first_line(e)}")
    launches = {}
    if not args.no_ops:
        for case in cases:
            launches[case.policy] = launch_counts(case.model, args, device, size)
        free_grads(cases)
    for case in cases:
        for _ in range(args.warmup):
            train_step(case.model, case.opt, x, y, args, device)
            if xs is not None:
                train_step(case.model, case.opt, xs, ys, args, device)
            with torch.no_grad(), _autocast(args, device):
                case.folded(x)
    free_grads(cases)
    memory = {}
    for case in cases:  # after every warm-up: all optimizer states exist, all grads freed
        saved = saved_activation_bytes(case, x, y, args, device)
        peak = cuda_peak_bytes(case, cases, x, y, args, device) if device.type == "cuda" else (None, None)
        memory[case.policy] = (saved, *peak)
    if args.compile:
        compile_cases(cases, x, y, args, device, sync, start)
    for r in range(args.rounds):
        # Rotate the order every round: whoever runs first after a round pays for cold caches.
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            for _ in range(args.steps):
                case.train_s.append(timed(lambda: train_step(case.model, case.opt, x, y, args, device), sync))
            if case.compiled is not None:
                try:
                    for _ in range(args.steps):
                        case.compiled_s.append(timed(lambda: train_step(case.compiled, case.opt, x, y, args, device), sync))
                except Exception as e:  # noqa: BLE001 - a recompile after warm-up lands here
                    _compile_failed(case, e)
            with torch.no_grad(), _autocast(args, device):
                for _ in range(args.steps):
                    case.infer_s.append(timed(lambda: case.folded(x), sync))
            if xs is not None:
                for _ in range(args.steps):
                    case.small_s.append(timed(lambda: train_step(case.model, case.opt, xs, ys, args, device), sync))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
        if _over_budget(args, start) and r + 1 < args.rounds:
            notes.append(f"stopped after {r + 1} of {args.rounds} rounds: over the {args.max_seconds:.0f} s budget")
            break
    if args.compile:
        from torch import _dynamo

        _dynamo.config.error_on_recompile = False
    free_grads(cases)

    def med(samples: list[float]) -> Optional[float]:
        return statistics.median(samples) if samples else None

    base = cases[0]
    base_train, base_small, base_infer = med(base.train_s), med(base.small_s), med(base.infer_s)
    base_compiled = med(base.compiled_s)
    base_launch = launches.get(base.policy, {})
    rows = []
    for case in cases:
        train, small, infer, compiled = med(case.train_s), med(case.small_s), med(case.infer_s), med(case.compiled_s)
        saved, step_peak, peak = memory[case.policy]
        row = {
            "policy": case.policy,
            "train_step_ms": 1e3 * train, "train_ratio": train / base_train,
            "train_ratio_iqr": _iqr_ratio(case.train_s, base_train),
            "small_batch": args.small_batch or None,
            "train_step_ms_small": None if small is None else 1e3 * small,
            "train_ratio_small": _ratio(small, base_small),
            "controller_fwd_bwd_ms": 1e3 * controller_seconds(case, sync),
            "saved_activation_mb": saved / 2**20, "saved_activation_ratio": saved / memory[base.policy][0],
            "cuda_step_peak_mb": None if step_peak is None else step_peak / 2**20,
            "cuda_peak_mb": None if peak is None else peak / 2**20,
            "params_train": sum(p.numel() for p in case.model.parameters()),
            "params_folded": sum(p.numel() for p in case.folded.parameters()),
            "folded_infer_ms": 1e3 * infer, "folded_infer_ratio": infer / base_infer,
        }
        if case.policy in launches:
            lc = launches[case.policy]
            row.update(ops=lc["ops"], ops_ratio=_ratio(lc["ops"], base_launch.get("ops")))
            if "kernels" in lc:
                row.update(kernels=lc["kernels"], kernels_ratio=_ratio(lc["kernels"], base_launch.get("kernels")),
                           memcpy=lc["memcpy"], memset=lc["memset"])
        if args.compile:
            row.update(
                compiled_step_ms=None if compiled is None else 1e3 * compiled,
                compiled_over_eager=_ratio(compiled, train),
                compiled_ratio=_ratio(compiled, base_compiled),
                compile_seconds=case.compile_seconds, compile_graphs=case.compile_graphs,
                compile_note=case.compile_note, compile_detail=case.compile_detail,
                compiled_kernels=case.compiled_launches.get("kernels"),
                compiled_kernels_ratio=_ratio(case.compiled_launches.get("kernels"),
                                              cases[0].compiled_launches.get("kernels")),
            )
        rows.append(row)
    meta = _meta(args, device) | {"model": args.model, "batch_size": args.batch_size, "image_size": size,
                                  "rounds": args.rounds, "rounds_done": len(base.train_s) // args.steps,
                                  "steps_per_round": args.steps, "seconds": time.perf_counter() - start,
                                  "notes": notes}
    return {"meta": meta, "rows": rows}


def run_ops_only(args, device: torch.device, policies: list[str], notes: list[str]) -> dict:
    rows = []
    for model_name in args.models or [args.model]:
        size = image_size(args, model_name)
        base = None
        for policy in policies:
            row = {"model": model_name, "policy": policy}
            try:
                model = build_model(model_name, policy, args, device)
                row.update(launch_counts(model, args, device, size))
                del model
            except Exception as e:  # noqa: BLE001 - one model/policy pair, not the table
                row["error"] = _first_line(e)
                notes.append(f"{model_name} / {policy}: {row['error']}")
            if policy == "none":
                base = row
            if base is not None and "ops" in row and "ops" in base:
                row["ops_ratio"] = row["ops"] / base["ops"]
                if "kernels" in row and base.get("kernels"):
                    row["kernels_ratio"] = row["kernels"] / base["kernels"]
            rows.append(row)
            print(f"{model_name} {policy}: {row.get('ops', row.get('error'))}", flush=True)
        gc.collect()
    return {"meta": _meta(args, device) | {"ops_batch": args.ops_batch, "notes": notes}, "rows": rows}


def _meta(args, device) -> dict:
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": args.threads, "bf16": args.bf16, "channels_last": args.channels_last,
            "ops_batch": None if args.no_ops else args.ops_batch, "compile": args.compile,
            "compile_warmup": args.compile_warmup if args.compile else None, "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_avg": os.getloadavg()}


def _iqr_ratio(samples: list[float], base: float) -> Optional[list[float]]:
    if len(samples) < 2:
        return None
    q = statistics.quantiles(samples, n=4)
    return [q[0] / base, q[2] / base]


def _f(value, fmt: str, missing: str = "–") -> str:
    return missing if value is None else format(value, fmt)


def _setting(args, device) -> str:
    return f"{device}{', bf16' if args.bf16 else ''}{', channels_last' if args.channels_last else ''}"


def print_timing(result: dict, args, device) -> None:
    rows, notes = result["rows"], result["meta"]["notes"]
    cuda = device.type == "cuda"
    small = args.small_batch > 0
    print(f"\n{args.model}, batch {args.batch_size}, {_setting(args, device)}; "
          f"medians of {result['meta']['rounds_done']}x{args.steps} steps\n")
    cols = ["policy", "train step ms", "× none"]
    if small:
        cols += [f"train step ms @b{args.small_batch}", f"× none @b{args.small_batch}"]
    cols += ["policy fwd+bwd ms", "saved act. MB", "× none"]
    if cuda:
        cols += ["step peak MB", "peak MB"]
    cols += ["params train", "params folded", "folded infer ms", "× none"]
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for r in rows:
        cells = [r["policy"], _f(r["train_step_ms"], ".1f"), _f(r["train_ratio"], ".3f")]
        if small:
            cells += [_f(r["train_step_ms_small"], ".1f"), _f(r["train_ratio_small"], ".3f")]
        cells += [_f(r["controller_fwd_bwd_ms"], ".2f"), _f(r["saved_activation_mb"], ".1f"),
                  _f(r["saved_activation_ratio"], ".3f")]
        if cuda:
            cells += [_f(r["cuda_step_peak_mb"], ".1f"), _f(r["cuda_peak_mb"], ".1f")]
        cells += [f"{r['params_train']:,}", f"{r['params_folded']:,}", _f(r["folded_infer_ms"], ".1f"),
                  _f(r["folded_infer_ratio"], ".3f")]
        print("| " + " | ".join(cells) + " |")
    if any("ops" in r for r in rows):
        print(f"\nLaunches per training step (forward + cross-entropy + backward, counted at batch {args.ops_batch}; "
              "ops = top-level aten:: ops)\n")
        cols = ["policy", "ops", "× none"] + (["kernels", "× none", "memcpy", "memset"] if cuda else [])
        print("| " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * (len(cols) - 1))
        for r in rows:
            cells = [r["policy"], _f(r.get("ops"), "d"), _f(r.get("ops_ratio"), ".3f")]
            if cuda:
                cells += [_f(r.get("kernels"), "d"), _f(r.get("kernels_ratio"), ".3f"),
                          _f(r.get("memcpy"), "d"), _f(r.get("memset"), "d")]
            print("| " + " | ".join(cells) + " |")
    if args.compile:
        print(f"\ntorch.compile (mode {args.compile_mode}), batch {args.batch_size}: medians over the same rounds, "
              f"after {args.compile_warmup} warm-up steps; recompiles after warm-up are errors\n")
        cols = ["policy", "eager ms", "compiled ms", "compiled / eager", "compiled × none", "graphs", "compile s"]
        cols += ["compiled kernels", "× none"] if cuda else []
        cols += ["note"]
        print("| " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * (len(cols) - 2) + "---|")
        for r in rows:
            cells = [r["policy"], _f(r["train_step_ms"], ".1f"), _f(r["compiled_step_ms"], ".1f"),
                     _f(r["compiled_over_eager"], ".3f"), _f(r["compiled_ratio"], ".3f"),
                     _f(r["compile_graphs"], "d"), _f(r["compile_seconds"], ".0f")]
            if cuda:
                cells += [_f(r["compiled_kernels"], "d"), _f(r["compiled_kernels_ratio"], ".3f")]
            cells += [r["compile_note"] or ""]
            print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(f"note: {note}")


def print_ops_table(result: dict, args, device) -> None:
    rows, notes = result["rows"], result["meta"]["notes"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    cell = {(r["model"], r["policy"]): r for r in rows}
    cuda = device.type == "cuda"

    def table(key: str, title: str, missing: str) -> None:
        print(title)
        print("| policy | " + " | ".join(f"{m} {key} | × none" for m in models) + " |")
        print("|---|" + "---:|---:|" * len(models))
        for p in policies:
            cells = []
            for m in models:
                r = cell.get((m, p), {})
                cells += [_f(r.get(key), "d", missing if "error" in r else "–"), _f(r.get(f"{key}_ratio"), ".3f")]
            print(f"| {p} | " + " | ".join(cells) + " |")

    table("ops", f"\nTop-level aten:: ops per training step (forward + cross-entropy + backward), batch "
                 f"{args.ops_batch}, {_setting(args, device)}; ratio to none\n", "error")
    if cuda:
        table("kernels", "\nCUDA kernels per training step (memcpy/memset not counted); ratio to none\n", "–")
    for note in notes:
        print(f"note: {note}")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    policies, notes = usable_policies(args.policies)
    for note in notes:
        print(f"note: {note}", flush=True)
    if args.ops_only:
        result = run_ops_only(args, device, policies, notes)
        print_ops_table(result, args, device)
    else:
        result = run_timing(args, device, policies, notes)
        print_timing(result, args, device)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
