"""Launch counts of one training step per policy and model: ``python benchmarks/overhead.py --ops-only``.

What counts (top-level ``aten::`` ops, and CUDA kernels) is defined in :mod:`tscnet.analysis.opcount`.

    python benchmarks/opcount.py --models cifar_resnet56 resnet50 [--policies none tsc ...] [--out FILE.json]
"""
from __future__ import annotations

import sys

from overhead import main  # benchmarks/overhead.py, next to this script

if __name__ == "__main__":
    main(["--ops-only", *sys.argv[1:]])
