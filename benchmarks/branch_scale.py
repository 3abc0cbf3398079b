"""How a branch scale started at 0 grows in the first steps: SkipInit against zero-γ (BN regime).

Both arms start every residual branch at exactly 0 and compute the same function at
initialisation. They learn different things: zero-γ (``init=zero_last``) learns the branch's last
BN γ_{d,c} alone; SkipInit (``steps=scalar:0``) learns one scalar α_d per block that multiplies
that γ (Δt_d ⊙ BN_{γ,β} = BN_{α_d·γ, α_d·β}). The effective branch scale is α_d·γ_{d,c} for SkipInit
and γ_{d,c} for zero-γ. This script trains BN ``cifar_resnet56`` with the stability study's recipe
(``fashion_mnist_nowarmup``: 2560 Fashion-MNIST images, batch 64, SGD momentum 0.9, weight decay
1e-4, cosine from the first step, no warm-up; seed 0, the study's first batches) and records, after
every step, the training loss and the largest effective branch scale max_{d,c} |α_d·γ_{d,c}|.

    python benchmarks/branch_scale.py [--lrs 0.4 1.6] [--steps 80] [--out benchmarks/results/branch_scale.json]
"""
from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path

import torch

import tscnet
from tscnet.data.registry import create_loaders
from tscnet.stepping import step_sizes
from tscnet.train import load_config
from tscnet.train.optim import build_optimizer, build_scheduler

ARMS = {"SkipInit (scalar:0)": ("scalar:0", "he"), "zero-γ": ("none", "zero_last")}
SHOWN = (1, 5, 10, 15, 20, 40, 60, 80)  # steps in the printed table (all of them go to the JSON)


def branch_scale(model: torch.nn.Module, stepped: bool) -> float:
    """max over blocks d and channels c of |Δt_{d,c} · γ_{d,c}| (Δt ≡ 1 without steps)."""
    bns = [block.bn2 for block in chain(model.layer1, model.layer2, model.layer3)]
    steps = step_sizes(model) if stepped else [torch.ones(1)] * len(bns)
    return max((bn.weight.detach().abs() * dt.abs()).max().item() for bn, dt in zip(bns, steps))


def trace(steps_policy: str, init: str, lr: float, steps: int, recipe: dict) -> list[dict]:
    """Loss and branch scale after each of the first ``steps`` SGD steps (stops at a non-finite loss: None)."""
    torch.manual_seed(0)
    model = tscnet.create_model("cifar_resnet56", num_classes=10, in_chans=1, steps=steps_policy, init=init)
    optimizer = build_optimizer(model, {**recipe["optim"], "lr": lr})
    data = recipe["data"]
    train = create_loaders("fashion-mnist", batch_size=data["batch_size"], seed=0, train_subset=data["train_subset"],
                           augment=data["augment"], workers=0)[0]
    epochs = recipe["train"]["epochs"]
    scheduler = build_scheduler(optimizer, recipe["sched"], epochs, len(train))
    rows: list[dict] = []
    for _ in range(epochs):
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x.float()), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            finite = math.isfinite(loss.item())  # JSON has no NaN: a non-finite loss is written as null
            rows.append({"step": len(rows) + 1, "loss": loss.item() if finite else None,
                         "scale": branch_scale(model, steps_policy != "none") if finite else None})
            if len(rows) == steps or not finite:
                return rows
    return rows


def fmt(row: dict | None) -> str:
    if row is None:
        return "—"
    if row["loss"] is None:
        return "NaN"
    return f"{row['loss']:.3g} / {row['scale']:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.4, 1.6])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", default="benchmarks/results/branch_scale.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_config("fashion_mnist_nowarmup")
    results = {arm: {str(lr): trace(*policy, lr, args.steps, recipe) for lr in args.lrs} for arm, policy in ARMS.items()}
    shown = [s for s in SHOWN if s <= args.steps]
    print("training loss / max_{d,c} |Δt·γ| after step k (BN cifar_resnet56, seed 0)\n")
    print("| arm | lr | " + " | ".join(f"step {s}" for s in shown) + " |")
    print("|---|---:|" + "---:|" * len(shown))
    for arm, by_lr in results.items():
        for lr, rows in by_lr.items():
            at = {r["step"]: r for r in rows}
            last = rows[-1]["step"]
            cells = [fmt(at.get(s)) if s <= last else ("NaN" if rows[-1]["loss"] is None else "—") for s in shown]
            print(f"| {arm} | {lr} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "torch": torch.__version__, "model": "cifar_resnet56", "recipe": "fashion_mnist_nowarmup",
                               "seed": 0, "steps": args.steps, "arms": {a: list(p) for a, p in ARMS.items()},
                               "traces": results}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
