#!/usr/bin/env bash
# GPU benchmarks for one H100/H200 (about 9 minutes): the overhead benchmark at realistic batch
# sizes with bf16 autocast and channels_last, then as much of the Fashion-MNIST accuracy grid as
# fits in 8 minutes. Prints everything; writes JSON under $OUT_DIR (default benchmarks/results/gpu).
#
#   DATA_DIR=/path/to/fashion-mnist bash benchmarks/gpu.sh
#
# The GPU machine has no network: carry the four Fashion-MNIST .gz files (DATA_DIR) with the repo.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
GRID_SECONDS=${GRID_SECONDS:-480}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/card.csv"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
python benchmarks/overhead.py --device cuda --bf16 --channels-last --model cifar_resnet56 --batch-size 512 \
  --rounds 10 --steps 5 --out "$OUT_DIR/overhead_cifar_resnet56_b512.json"
python benchmarks/overhead.py --device cuda --bf16 --channels-last --model resnet50 --batch-size 256 \
  --rounds 6 --steps 5 --out "$OUT_DIR/overhead_resnet50_b256.json"
# Full Fashion-MNIST (60k), same recipe as the CPU grid otherwise; one run at a time on the GPU.
timeout "$GRID_SECONDS" python benchmarks/accuracy.py --runs "$OUT_DIR/grid" --out "$OUT_DIR/accuracy" \
  --workers 1 --threads 8 --set train.device=cuda --set data.data_dir="$DATA_DIR" --set data.train_subset=null
echo "grid exit status $? (124: stopped at ${GRID_SECONDS}s; rerun to resume)"
