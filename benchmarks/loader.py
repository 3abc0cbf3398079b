"""Cost of the tensor-resident loader next to a CIFAR ResNet-20 training step.

For each data set: the median time to produce one augmented batch (random crop + flip +
normalise) and the median time of one training step (forward + backward + SGD) of
``cifar_resnet20`` on those batches, measured interleaved so both see the same machine load.
Target: loader/step < 5 %.

    python benchmarks/loader.py [--batch-size 128] [--iters 20] [--out benchmarks/results/loader.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from tscnet.data import DataError, TensorLoader, build_dataset, get_dataset_spec
from tscnet.models.cifar_resnet import cifar_resnet20


def _cases(seed: int) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int, tuple, tuple]]:
    """``(name, images, labels, pad, mean, std)``: real Fashion-MNIST and a CIFAR-shaped uint8 set."""
    spec = get_dataset_spec("fashion-mnist")
    try:
        ds = build_dataset("fashion-mnist")
        yield "fashion-mnist 28x28x1", ds.images, ds.labels, spec.pad, spec.info.mean, spec.info.std
    except DataError as e:
        print(f"skipping Fashion-MNIST: {e}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (50000, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (50000,), generator=g)
    cifar = get_dataset_spec("cifar10")
    yield "synthetic cifar 32x32x3", images, labels, cifar.pad, cifar.info.mean, cifar.info.std


def _measure(loader: TensorLoader, iters: int, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Per-iteration (loader, step) seconds, interleaved."""
    model = cifar_resnet20(in_chans=loader.images.shape[1], num_classes=10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = iter(loader)
    load_s, step_s = [], []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        sync()
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            load_s.append(t1 - t0)
            step_s.append(t2 - t1)
    return load_s, step_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    rows = []
    for name, images, labels, pad, mean, std in _cases(args.seed):
        loader = TensorLoader(images, labels, args.batch_size, mean, std, pad=pad, flip=True, seed=args.seed, device=device)
        load_s, step_s = _measure(loader, args.iters, args.warmup, device)
        load, step = statistics.median(load_s), statistics.median(step_s)
        rows.append({"data": name, "pad": pad, "batch_size": args.batch_size, "loader_ms": load * 1e3,
                     "step_ms": step * 1e3, "ratio_pct": 100 * load / step, "target_met": load / step < 0.05})

    print(f"{'data':<26}{'pad':>4}{'loader ms':>11}{'step ms':>10}{'loader/step':>13}")
    for r in rows:
        print(f"{r['data']:<26}{r['pad']:>4}{r['loader_ms']:>11.2f}{r['step_ms']:>10.1f}{r['ratio_pct']:>12.2f}%"
              f"{'' if r['target_met'] else '  (target < 5 % missed)'}")
    env = {"torch": torch.__version__, "threads": args.threads, "device": str(device), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "loadavg_1min": os.getloadavg()[0], "iters": args.iters, "warmup": args.warmup, "statistic": "median",
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "loader", "env": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
