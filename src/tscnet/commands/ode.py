"""``tscnet ode``: the poster's ODE figure — explicit Euler at fixed steps vs adaptive RKF45."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

NAME = "ode"
HELP = "Euler vs RKF45 on Y' = -4Y: why the step size matters (writes ode.png and ode.json)"


# The poster's settings, as in tscnet.analysis.ode_plot (EULER_STEPS, RKF_TOL; tests/test_cli_help.py
# keeps them equal): written out, because importing that package here would import torch for `tscnet -h`.
DEFAULT_H = "0.05 0.4 0.5"
DEFAULT_TOL = "1e-4"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument(
        "--h", type=float, nargs="+", metavar="H", help=f"fixed Euler step sizes (default: the poster's {DEFAULT_H})"
    )
    parser.add_argument("--tol", type=float, help=f"RKF45 tolerance Tol (default: the poster's {DEFAULT_TOL})")
    parser.add_argument("--safety", type=float, default=0.9, help="RKF45 safety factor k (default 0.9)")
    parser.add_argument("--order", type=int, default=4, help="order p in the exponent 1/(p+1) (default 4)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace ode.png and ode.json in --out (refused by default)"
    )


def _trajectory(result, setting: str) -> dict:
    y = result.y[:, 0]
    flips = int((y[1:] * y[:-1] < 0).sum())  # an oscillating solution changes sign every step
    return {
        "method": result.method,
        "setting": setting,
        "t": result.t.tolist(),
        "y": y.tolist(),
        "h": result.h.tolist(),
        "sign_changes": flips,
    }


def run(args: argparse.Namespace) -> int:
    from ..analysis.ode_plot import (
        EULER_STEPS,
        LAMBDA,
        RKF_TOL,
        T_END,
        format_table,
        poster_figure,
        poster_runs,
    )
    from ..errors import UserError
    from ..formats import stamped
    from .common import check_out_folder

    args.h = list(EULER_STEPS) if args.h is None else args.h
    args.tol = RKF_TOL if args.tol is None else args.tol

    for h in args.h:
        if not (math.isfinite(h) and h > 0):
            raise UserError(f"--h must be positive finite step sizes, got {h:g}")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise UserError(f"--tol must be a positive finite tolerance, got {args.tol:g}")
    if not 0 < args.safety <= 1:  # also refuses nan
        raise UserError(f"--safety must be in (0, 1], got {args.safety:g}")
    if args.order < 1:
        raise UserError(f"--order must be >= 1, got {args.order}")
    out = check_out_folder(Path(args.out), writes=("ode.png", "ode.json"), overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    options = {"safety": args.safety, "order": args.order}
    rows = poster_figure(out / "ode.png", args.h, args.tol, **options)
    runs = poster_runs(args.h, args.tol, **options)
    settings = [f"h={h:g}" for h in args.h] + [f"tol={args.tol:g}"]
    (out / "ode.json").write_text(
        json.dumps(
            stamped(
                {
                    "equation": f"Y' = -{LAMBDA:g} Y, Y(0) = 1, t in [0, {T_END:g}]",
                    "rkf45": {"tol": args.tol, **options},
                    "table": rows,
                    "trajectories": [_trajectory(r, s) for r, s in zip(runs, settings)],
                }
            ),
            indent=2,
        )
        + "\n"
    )
    print(format_table(rows))
    for h, r in zip(args.h, runs):
        factor = 1 - LAMBDA * h
        limit = math.isclose(abs(factor), 1.0, abs_tol=1e-12)
        kind = (
            "on the stability limit: oscillates without decay"
            if limit
            else "unstable: grows"
            if abs(factor) > 1
            else "oscillates while decaying"
            if factor < 0
            else "decays monotonically"
        )
        print(
            f"Euler h={h:g}: Y multiplied by 1 - {LAMBDA:g}h = {factor:+.3g} per step ({kind}; "
            f"{_trajectory(r, '')['sign_changes']} sign changes)"
        )
    print(f"wrote {out / 'ode.png'} and {out / 'ode.json'}")
    return 0
