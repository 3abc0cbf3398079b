"""``tscnet report``: a Markdown report (curves, learned steps, summary table) of runs of one dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "Markdown report with figures and a final-epoch error table (mean ± std over seeds) of runs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one dataset)")
    parser.add_argument("--out", required=True, help="output folder for report.md, summary.json and the PNGs")
    parser.add_argument("--stability", help="a stability.json to include (default: OUT/stability.json if present)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier report in --out (refused by default)"
    )


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import REPORT_FILES, build_runs_report, format_summary
    from .common import check_out_folder

    check_out_folder(Path(args.out), writes=REPORT_FILES, overwrite=args.overwrite)
    report = build_runs_report(
        [Path(r) for r in args.runs], Path(args.out), Path(args.stability) if args.stability else None
    )
    print(format_summary(report.summary))
    print(
        f"wrote {report.path}, {report.path.parent / 'summary.json'}, "
        + ", ".join(p.name for p in report.files.values())
    )
    return 0
