"""``tscnet stability``: the stability bound against measured amplification, per run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

NAME = "stability"
HELP = "bound vs measured perturbation amplification and gradient flow of trained runs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one dataset)")
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument("--images", type=int, default=32, help="first N test images of the runs' dataset (default 32)")
    parser.add_argument("--directions", type=int, default=8, help="random directions per image (default 8)")
    parser.add_argument("--eps", type=float, default=1e-3, help="perturbation size relative to ‖y_0‖ (default 1e-3)")
    parser.add_argument("--power-iters", type=int, default=20, help="power iterations for the worst direction")
    parser.add_argument(
        "--norm",
        choices=("power", "fft"),
        default="power",
        help="conv norms: power iteration on the true operator (default), or the FFT upper bound (fast)",
    )
    parser.add_argument("--no-gradient-flow", action="store_true", help="skip gradient_flow.png")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier stability study in --out (refused by default)"
    )


def run(args: argparse.Namespace) -> int:
    from ..analysis.stability import (
        STABILITY_FILES,
        format_stability_table,
        stability_study,
    )
    from ..errors import UserError
    from ..jobs.run_folder import RunFolder
    from .common import check_out_folder

    for flag, value in (
        ("--images", args.images),
        ("--directions", args.directions),
        ("--power-iters", args.power_iters),
    ):
        if value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if not (math.isfinite(args.eps) and args.eps > 0):
        raise UserError(f"--eps must be a positive finite number, got {args.eps:g}")
    check_out_folder(Path(args.out), writes=STABILITY_FILES, overwrite=args.overwrite)  # before the minutes
    study = stability_study(
        [Path(r) for r in args.runs],
        Path(args.out),
        images=args.images,
        directions=args.directions,
        method=args.norm,
        gradient_flow_plot=not args.no_gradient_flow,
        eps=args.eps,
        power_iters=args.power_iters,
    )
    print(format_stability_table(study.rows))
    for row in study.rows:
        if row["weights"] != RunFolder.CHECKPOINT:
            print(f"note: {row['run']} has no checkpoint.pt; its stepped model was rebuilt from {row['weights']}")
    print("wrote " + ", ".join(str(p) for p in study.files.values()))
    return 0
