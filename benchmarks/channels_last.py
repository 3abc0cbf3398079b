"""``tscnet train`` images/s with ``train.channels_last`` false vs true, side by side.

Each round runs the real CLI twice in fresh processes, once per setting (the order alternates
between rounds so both see the same machine load), on the same data: Fashion-MNIST, a fixed
subset, one epoch, ``train.progress=false``. The figure is the engine's own training
throughput (``images_per_s`` in ``metrics.jsonl``: the epoch's training loop, evaluation
excluded); the table gives the medians over the rounds and their ratio. The load average is
recorded before and after, since nothing guarantees the machine is otherwise idle.

    python benchmarks/channels_last.py [--model cifar_resnet20] [--train-subset 4000] [--batch-size 128]
        [--rounds 5] [--threads 2] [--amp off] [--device cpu] [--out benchmarks/results/channels_last.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = (False, True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _train(args: argparse.Namespace, channels_last: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "tscnet.cli", "train", "--data", args.data, "--model", args.model,
           "--steps", args.steps, "--train-subset", str(args.train_subset), "--test-subset", str(args.test_subset),
           "--epochs", "1", "--batch-size", str(args.batch_size), "--device", args.device, "--seed", "0",
           "--set", f"train.channels_last={str(channels_last).lower()}", "--set", f"train.amp={args.amp}",
           "--set", "train.progress=false", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"tscnet train failed:\n{' '.join(cmd)}\n{result.stderr[-2000:]}")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"images_per_s": row["images_per_s"], "epoch_time": row["epoch_time"], "train_loss": row["train_loss"],
            "test_top1": row["test_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--steps", default="none")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--test-subset", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="off", help="train.amp: off, bf16, fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "channels_last.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    runs: dict[bool, list[dict]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="tscnet-cl-") as tmp:
        for r in range(args.rounds):
            for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                out = Path(tmp) / f"r{r}-{setting}"
                runs[setting].append(_train(args, setting, out))
                print(f"round {r + 1}/{args.rounds} channels_last={str(setting).lower():5}  "
                      f"{runs[setting][-1]['images_per_s']:.0f} img/s", flush=True)
    load_after = os.getloadavg()

    median = {s: statistics.median(x["images_per_s"] for x in runs[s]) for s in SETTINGS}
    ratio = median[True] / median[False]
    per_round = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[False], runs[True])]
    print()
    print(f"`tscnet train` {args.model} steps={args.steps} on {args.data}, {args.train_subset} images, 1 epoch, "
          f"batch {args.batch_size}, amp {args.amp}, {args.device}, {args.threads} threads, "
          f"medians of {args.rounds} interleaved rounds:")
    print()
    print("| train.channels_last | images/s (median) | min | max | × false |")
    print("|---|---:|---:|---:|---:|")
    for s in SETTINGS:
        ips = [x["images_per_s"] for x in runs[s]]
        print(f"| {str(s).lower()} | {median[s]:.0f} | {min(ips):.0f} | {max(ips):.0f} "
              f"| {median[s] / median[False]:.3f} |")
    print()
    print(f"per-round ratio true/false: median {statistics.median(per_round):.3f}, "
          f"min {min(per_round):.3f}, max {max(per_round):.3f}; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")

    import torch

    result = {
        "benchmark": "channels_last", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": args.model, "steps": args.steps, "data": args.data, "train_subset": args.train_subset,
        "batch_size": args.batch_size, "epochs": 1, "amp": args.amp, "device": args.device, "threads": args.threads,
        "rounds": args.rounds, "metric": "images_per_s of the training epoch (metrics.jsonl), median over rounds",
        "images_per_s_median": {str(s).lower(): median[s] for s in SETTINGS}, "ratio_true_over_false": ratio,
        "per_round_ratio": per_round, "runs": {str(s).lower(): runs[s] for s in SETTINGS},
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
