"""Peak memory of the stability study (``tscnet stability``) on a deep network.

Each part of one run's study — the bound (conv spectral norms), the measured amplification
(finite differences + a jvp/vjp power iteration) and the gradient-flow curves — runs in a fresh
process on ``cifar_resnet110`` (``tsc`` steps, untrained weights: memory does not depend on
them) with the first N real Fashion-MNIST test images, and reports its peak resident memory
(``ru_maxrss``), time and the numbers it produced. Target: the whole study of ResNet-110 on 32
images within a laptop's 4 GB.

    python benchmarks/stability_memory.py [--model cifar_resnet110] [--images 32] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

PART = r"""
import json, resource, sys, time
import torch
import tscnet
from tscnet.analysis.gradflow import fixed_step_study, gradient_flow
from tscnet.analysis.lipschitz import stability_bound
from tscnet.analysis.perturbation import amplification
from tscnet.analysis.runs import test_batch
from tscnet.train import load_config

part, model_name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(0)
x, y = test_batch(load_config(None), n)
model = tscnet.create_model(model_name, num_classes=10, in_chans=x.shape[1], steps="tsc").eval()
start = time.perf_counter()
result = {}
if part in ("bound", "all"):
    result["bound"] = stability_bound(model, tuple(x.shape[1:])).bound
if part in ("amplification", "all"):
    result.update(amplification(model, x, directions=8).medians())
if part in ("gradient_flow", "all"):
    curves = fixed_step_study(model, x, y)
    curves["learned"] = gradient_flow(model, x, y)
    result["gradient_flow_curves"] = len(curves)
result["seconds"] = time.perf_counter() - start
result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(result))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet110")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--parts", nargs="+", default=["bound", "amplification", "gradient_flow", "all"])
    p.add_argument("--out", default="benchmarks/results/stability_memory.json")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for part in args.parts:
        done = subprocess.run([sys.executable, "-c", PART, part, args.model, str(args.images)],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"{part}: failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            return 1
        rows.append({"part": part, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(f"{part}: peak RSS {rows[-1]['peak_rss_gb']:.2f} GB in {rows[-1]['seconds']:.0f} s", flush=True)
    print(f"\n{args.model}, {args.images} Fashion-MNIST test images, 1 thread, one fresh process per part\n")
    print("| part | peak RSS GB | seconds |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['part']} | {r['peak_rss_gb']:.2f} | {r['seconds']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "images": args.images, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/stability_memory.py", *sys.argv[1:]])}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
