"""What the step policies cost: training-step time and memory while training, and nothing after folding.

For each policy, side by side in one run (policies interleaved round by round, so all see the
same machine load): the median time of one training step (forward + backward + SGD), relative
to ``none``; the activation memory saved for backward (bytes of tensors autograd keeps, summed
by a saved-tensor hook: deterministic, any device) and, on CUDA, the peak allocated memory; the
parameter count while training and after ``fold_steps``; the median inference time of the folded
model relative to ``none``. Targets (cifar_resnet56, batch 128, CPU): ``tsc`` ≤ 1.05× training,
folded = 1.00× inference within noise.

    python benchmarks/overhead.py [--model cifar_resnet56] [--batch-size 128] [--rounds 12]
                                  [--device cpu] [--bf16] [--channels-last] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import tscnet

POLICIES = ["none", "fixed:0.5", "scalar:0", "channel:1", "mlp", "tsc"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--batch-size", type=int, default=128)
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
    p.add_argument("--out", default="benchmarks/results/overhead.json")
    return p.parse_args()


class Case:
    """One policy: its training model and optimizer, and its folded model for inference."""

    def __init__(self, policy: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.policy = policy
        self.model = tscnet.create_model(args.model, num_classes=10, steps=policy).to(device)
        self.folded = tscnet.fold_steps(self.model).eval()
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.folded.to(memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.train_s: list[float] = []
        self.infer_s: list[float] = []


def _autocast(args, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)


def train_step(case: Case, x: torch.Tensor, y: torch.Tensor, args, device) -> None:
    with _autocast(args, device):
        loss = F.cross_entropy(case.model(x).float(), y)
    case.opt.zero_grad(set_to_none=True)
    loss.backward()
    case.opt.step()


def controller_seconds(case: Case, repeats: int = 20) -> float:
    """Median time of the policy alone: all steps computed, then a backward through them."""
    policy = tscnet.get_policy(case.model)
    if policy is None or not any(p.requires_grad for p in policy.parameters()):
        return 0.0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.cat(policy.compute()).sum().backward()
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


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    size = args.image_size or (32 if args.model.startswith("cifar") else 224)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cases = [Case(p, args, device) for p in args.policies]
    memory = {}
    for case in cases:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            train_step(case, x, y, args, device)
            with torch.no_grad(), _autocast(args, device):
                case.folded(x)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        memory[case.policy] = (saved_activation_bytes(case, x, y, args, device), peak)
    for r in range(args.rounds):
        # Rotate the order every round: whoever runs first after a round pays for cold caches.
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            for _ in range(args.steps):
                case.train_s.append(timed(lambda: train_step(case, x, y, args, device), sync))
            with torch.no_grad(), _autocast(args, device):
                for _ in range(args.steps):
                    case.infer_s.append(timed(lambda: case.folded(x), sync))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = {k: statistics.median(getattr(cases[0], k)) for k in ("train_s", "infer_s")}
    rows = []
    for case in cases:
        train, infer = statistics.median(case.train_s), statistics.median(case.infer_s)
        saved, peak = memory[case.policy]
        rows.append({
            "policy": case.policy,
            "train_step_ms": 1e3 * train, "train_ratio": train / base["train_s"],
            "controller_fwd_bwd_ms": 1e3 * controller_seconds(case),
            "train_ratio_iqr": _iqr_ratio(case.train_s, base["train_s"]),
            "saved_activation_mb": saved / 2**20, "saved_activation_ratio": saved / memory[cases[0].policy][0],
            "cuda_peak_mb": None if peak is None else peak / 2**20,
            "params_train": sum(p.numel() for p in case.model.parameters()),
            "params_folded": sum(p.numel() for p in case.folded.parameters()),
            "folded_infer_ms": 1e3 * infer, "folded_infer_ratio": infer / base["infer_s"],
        })
    print_table(rows, args, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "batch_size": args.batch_size, "image_size": size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": args.threads, "bf16": args.bf16, "channels_last": args.channels_last,
            "rounds": args.rounds, "steps_per_round": args.steps, "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_avg": os.getloadavg()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def _iqr_ratio(samples: list[float], base: float) -> list[float]:
    q = statistics.quantiles(samples, n=4)
    return [q[0] / base, q[2] / base]


def print_table(rows: list[dict], args, device) -> None:
    print(f"\n{args.model}, batch {args.batch_size}, {device}{', bf16' if args.bf16 else ''}"
          f"{', channels_last' if args.channels_last else ''}; medians of {args.rounds}x{args.steps} steps\n")
    head = ("| policy | train step ms | × none | policy fwd+bwd ms | saved act. MB | × none | params train | "
            "params folded | folded infer ms | × none |")
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['train_step_ms']:.1f} | {r['train_ratio']:.3f} | {r['controller_fwd_bwd_ms']:.2f} | "
              f"{r['saved_activation_mb']:.1f} | "
              f"{r['saved_activation_ratio']:.3f} | {r['params_train']:,} | {r['params_folded']:,} | "
              f"{r['folded_infer_ms']:.1f} | {r['folded_infer_ratio']:.3f} |")


if __name__ == "__main__":
    main()
