#!/usr/bin/env bash
# GPU benchmarks for one H100/H200 in about 9 minutes (TOTAL_SECONDS=540), everything printed:
#   1. launches per training step: top-level aten ops and CUDA kernels, policies x models
#   2. overhead, eager, bf16 autocast + channels_last: cifar_resnet56 batch 128 and 512,
#      resnet50 batch 256 (each with its op and kernel counts and the batch-8 step)
#   3. overhead, torch.compile: cifar_resnet56 batch 128 (compiled vs eager; recompiles are errors)
#   4. the Fashion-MNIST accuracy grid for the time left (resumable), then its report
# Every step runs under its own time limit; a failed or timed-out step prints its exit status
# and the script goes on. JSON and logs go to $OUT_DIR (default benchmarks/results/gpu).
#
# Preparation (on a machine with the Debian package dataset-fashion-mnist; data/ is git-ignored):
#   bash benchmarks/gpu.sh --prepare       # copies the four .gz files into data/fashion-mnist (30 MB)
# Then, on the GPU machine (repository root as cwd, no network, that folder copied along):
#   OUT_DIR=DIR bash benchmarks/gpu.sh
#
# No install and no network: tscnet runs from src/ (PYTHONPATH). That Python needs torch, timm,
# numpy, PyYAML, safetensors, tqdm, matplotlib (checked first). Fashion-MNIST is looked up in
# $DATA_DIR, shared/fashion-mnist, data/fashion-mnist, /usr/share/datasets/fashion-mnist; without
# it the grid is skipped, the rest runs.
#
# Try every step on a CPU with tiny sizes (about 3 minutes on 2 cores):
#   DEVICE=cpu OUT_DIR=/tmp/gpu-dry bash benchmarks/gpu.sh
# Knobs: TOTAL_SECONDS, OUT_DIR, PYTHON, DATA_DIR, POLICIES, COMPILE_POLICIES, GRID_MODELS,
# GRID_POLICIES, GRID_SEEDS, GRID_WORKERS, GRID_THREADS, and STEPS, the steps to run (default
# all: opcount overhead_cifar_resnet56_b128 overhead_cifar_resnet56_b512 overhead_resnet50_b256
# overhead_compiled grid grid_report), e.g. STEPS="grid grid_report" to resume the grid alone.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
  src=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
  mkdir -p data/fashion-mnist && cp -v "$src"/*-ubyte.gz data/fashion-mnist/ && ls -l data/fashion-mnist
  exit $?
fi

DEVICE=${DEVICE:-cuda}
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu}
TOTAL_SECONDS=${TOTAL_SECONDS:-540}
REPORT_RESERVE=${REPORT_RESERVE:-40}   # seconds kept for the grid's report
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
POLICIES=${POLICIES:-none fixed:0.5 scalar:0 channel:1 mlp tsc tsc:feedback=explicit}
COMPILE_POLICIES=${COMPILE_POLICIES:-none tsc tsc:feedback=explicit}
GRID_POLICIES=${GRID_POLICIES:-none fixed:0.5 scalar:0 channel:1 mlp tsc}
GRID_SEEDS=${GRID_SEEDS:-0}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=${KINETO_LOG_LEVEL:-5}
mkdir -p "$OUT_DIR"
START=$SECONDS
STATUS=()
LAST_RC=""  # exit status of the last step ("" if skipped)

left() { echo $((TOTAL_SECONDS - (SECONDS - START))); }

# step NAME LIMIT_SECONDS CMD...: run CMD under min(LIMIT, time left - reserve), log to $OUT_DIR/NAME.log
step() {
  local name=$1 limit=$2 rc
  shift 2
  LAST_RC=""
  if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then
    return
  fi
  local avail=$(($(left) - REPORT_RESERVE))
  ((avail < limit)) && limit=$avail
  echo
  echo "=== $name (limit ${limit}s, $(($(left)))s of the budget left)"
  if ((limit < 15)); then
    echo "=== $name: skipped, time budget spent"
    STATUS+=("$name: skipped (time budget)")
    return
  fi
  echo "+ $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v --line-buffered '^USDT:' | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  LAST_RC=$rc
  local what=""
  ((rc == 124 || rc == 137)) && what=" (timed out after ${limit}s)"
  echo "=== $name: exit status $rc$what, $((SECONDS - START))s elapsed"
  STATUS+=("$name: exit $rc$what")
}

if [[ "$DEVICE" == cpu ]]; then
  # Tiny sizes: every step's logic, in minutes, on a 2-core CPU.
  OPS_MODELS=${OPS_MODELS:-cifar_resnet20 resnet50}
  OPS_ARGS=(--image-size 64)
  R56_B128=(--model cifar_resnet56 --batch-size 16 --small-batch 4 --rounds 2 --steps 1 --warmup 1)
  R56_B512=(--model cifar_resnet56 --batch-size 32 --small-batch 0 --rounds 1 --steps 1 --warmup 1)
  R50_B256=(--model resnet50 --image-size 64 --batch-size 4 --small-batch 2 --rounds 1 --steps 1 --warmup 1)
  COMPILE=(--model cifar_resnet20 --batch-size 16 --small-batch 0 --rounds 2 --steps 1 --warmup 1 --compile-warmup 2)
  COMPILE_POLICIES=${DRY_COMPILE_POLICIES:-none fixed:0.5}
  GRID_MODELS=${GRID_MODELS:-cifar_resnet20}
  GRID_POLICIES=${DRY_GRID_POLICIES:-none tsc}
  GRID_WORKERS=${GRID_WORKERS:-2}
  GRID_THREADS=${GRID_THREADS:-1}
  GRID_SETS=(--set train.device=cpu --set data.train_subset=512 --set data.test_subset=256 --set train.epochs=1)
  THREADS=1
else
  OPS_MODELS=${OPS_MODELS:-cifar_resnet56 resnet50}
  OPS_ARGS=()
  R56_B128=(--model cifar_resnet56 --batch-size 128 --rounds 10 --steps 5)
  R56_B512=(--model cifar_resnet56 --batch-size 512 --rounds 8 --steps 3)
  R50_B256=(--model resnet50 --batch-size 256 --rounds 5 --steps 3)
  COMPILE=(--model cifar_resnet56 --batch-size 128 --small-batch 0 --rounds 10 --steps 5 --compile-warmup 3)
  GRID_MODELS=${GRID_MODELS:-cifar_resnet56}
  # Small launch-bound runs: several at a time share the GPU well (16 CPU cores).
  GRID_WORKERS=${GRID_WORKERS:-6}
  GRID_THREADS=${GRID_THREADS:-2}
  GRID_SETS=(--set train.device=cuda --set data.train_subset=null)
  THREADS=1
fi
COMMON=(--device "$DEVICE" --bf16 --channels-last --threads "$THREADS")

echo "=== environment ($(date -u +%FT%TZ)), device $DEVICE, budget ${TOTAL_SECONDS}s, results in $OUT_DIR"
if [[ "$DEVICE" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/card.csv"
fi
"$PYTHON" - "$DEVICE" <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "timm", "numpy", "yaml", "safetensors", "tqdm", "matplotlib")
           if importlib.util.find_spec(m) is None]
if missing:
    print(f"MISSING Python packages: {', '.join(missing)} (no network here: install them in this image)")
import torch, tscnet
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "| tscnet from", tscnet.__file__)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch.cuda.is_available() is False: no GPU for DEVICE=cuda")
    print("gpu:", torch.cuda.get_device_name())
EOF
rc=$?
if ((rc != 0)); then
  echo "=== environment check failed (exit status $rc): nothing to benchmark"
  exit "$rc"
fi

DATA=""
for d in ${DATA_DIR:+"$DATA_DIR"} shared/fashion-mnist data/fashion-mnist /usr/share/datasets/fashion-mnist; do
  if [[ -f "$d/train-images-idx3-ubyte.gz" || -f "$d/train-images-idx3-ubyte" ]]; then
    DATA=$d
    break
  fi
done
if [[ -n "$DATA" ]]; then
  echo "=== Fashion-MNIST: $DATA"
else
  echo "=== Fashion-MNIST NOT FOUND in \$DATA_DIR (${DATA_DIR:-unset}), shared/fashion-mnist, data/fashion-mnist,"
  echo "    /usr/share/datasets/fashion-mnist: the accuracy grid is skipped. Prepare with"
  echo "    'bash benchmarks/gpu.sh --prepare' where the Debian package is, and carry data/fashion-mnist."
fi

# shellcheck disable=SC2086  # the policy lists split on spaces on purpose
{
step opcount 90 "$PYTHON" benchmarks/overhead.py --ops-only --models $OPS_MODELS "${OPS_ARGS[@]}" "${COMMON[@]}" \
  --policies $POLICIES --out "$OUT_DIR/opcount.json"
step overhead_cifar_resnet56_b128 80 "$PYTHON" benchmarks/overhead.py "${R56_B128[@]}" "${COMMON[@]}" \
  --policies $POLICIES --max-seconds 50 --out "$OUT_DIR/overhead_cifar_resnet56_b128.json"
step overhead_cifar_resnet56_b512 80 "$PYTHON" benchmarks/overhead.py "${R56_B512[@]}" "${COMMON[@]}" \
  --policies $POLICIES --max-seconds 50 --out "$OUT_DIR/overhead_cifar_resnet56_b512.json"
step overhead_resnet50_b256 100 "$PYTHON" benchmarks/overhead.py "${R50_B256[@]}" "${COMMON[@]}" \
  --policies $POLICIES --max-seconds 60 --out "$OUT_DIR/overhead_resnet50_b256.json"
step overhead_compiled 200 "$PYTHON" benchmarks/overhead.py "${COMPILE[@]}" "${COMMON[@]}" --compile \
  --policies $COMPILE_POLICIES --max-seconds 150 --out "$OUT_DIR/overhead_compiled.json"

if [[ -n "$DATA" ]]; then
  # Same recipe as the CPU grid (src/tscnet/configs/fashion_mnist_grid.yaml) but on the full 60k training set;
  # resumable: a rerun skips finished runs and resumes interrupted ones.
  step grid 100000 "$PYTHON" benchmarks/accuracy.py --runs "$OUT_DIR/grid" --out "$OUT_DIR/accuracy" \
    --models $GRID_MODELS --policies $GRID_POLICIES --seeds $GRID_SEEDS \
    --workers "$GRID_WORKERS" --threads "$GRID_THREADS" "${GRID_SETS[@]}" --set data.data_dir="$DATA"
  # accuracy.py writes its report only when its sweep ran to the end: if it was stopped (or
  # skipped), report whatever finished, from this and earlier invocations.
  REPORT_RESERVE=0
  [[ "$LAST_RC" == 0 ]] || step grid_report 60 "$PYTHON" - "$OUT_DIR/grid" "$OUT_DIR/accuracy" <<'EOF'
import sys
from pathlib import Path

from tscnet.analysis.report import build_report, format_summary
from tscnet.train.run import CARD_FILE, CONFIG_FILE

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
done = sorted(p.parent for p in runs.glob(f"**/{CARD_FILE}"))
started = [p.parent for p in runs.glob(f"**/{CONFIG_FILE}") if p.parent not in done]
print(f"{len(done)} finished runs, {len(started)} unfinished (a rerun of gpu.sh resumes them)")
for run in sorted(started):
    print("  unfinished:", run)
if not done:
    sys.exit("no finished run to report")
report = build_report(done, out)
print(format_summary(report.summary))
print(f"report: {report.path}")
EOF
fi
}

echo
echo "=== summary ($((SECONDS - START))s of ${TOTAL_SECONDS}s)"
for s in "${STATUS[@]}"; do
  echo "  $s"
done
