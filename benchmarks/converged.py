"""The converged study: every step policy against its peers at a budget where networks converge.

An alias of ``python benchmarks/study.py converged [flags]`` (the spec is
``tscnet/configs/studies/converged.yaml``: recipe ``fashion_mnist_converged``, ResNet-20 at 5 seeds
and ResNet-56 at 3, 11 arms including the ablations ``profile-of:tsc`` and ``fixed-of:tsc``; 88
runs). Every flag of ``benchmarks/study.py`` works here (``--commit``, ``--max-hours H``,
``--models``, ``--policies``, ``--seeds``, ``--workers``, ``--threads``, ``--set``, ``--results``,
``--runs``, ``--dry-run``, ``--report-only``). For another recipe or data set write a spec (see
docs/study.md), or keep this one and give ``--set`` and its own ``--results`` folder, e.g.

    python benchmarks/converged.py --set data.name=cifar10 --set data.data_dir=~/data/cifar \\
        --results benchmarks/results/converged_cifar10 --models cifar_resnet20 --seeds 0 1 2
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

# benchmarks/ is not a package: load benchmarks/study.py from its file.
_spec = importlib.util.spec_from_file_location("benchmarks_study", Path(__file__).resolve().parent / "study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
    return study.main(["converged", *argv])


if __name__ == "__main__":
    sys.exit(main())
