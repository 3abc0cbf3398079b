"""``tscnet study SPEC``: plan, run and report a policy comparison (models × arms × grid × seeds)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

NAME = "study"
HELP = "compare step policies: run a study spec's cells (skipping finished ones) and write its report"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="study spec: a YAML file or a name in tscnet/configs/studies/")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the cells in run order with their state and estimated cost; run nothing",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the results")
    parser.add_argument(
        "--results",
        type=Path,
        help="results folder (default benchmarks/results/<name> in the tscnet checkout, else ./study-results/<name>)",
    )
    parser.add_argument("--runs", type=Path, help="scratch run folders (default runs/<name of the results folder>)")
    parser.add_argument("--executor", help="where cells run: local (default) or slurm")
    parser.add_argument("--workers", type=int, help="cells at once (default: the spec's executor.workers, else 2)")
    parser.add_argument("--threads", type=int, help="CPU threads per cell (default: the spec's, else 1)")
    slurm = parser.add_argument_group("Slurm (with --executor slurm; over the spec's slurm: section)")
    slurm.add_argument("--partition", help="the partition of every cell's job")
    slurm.add_argument("--time", help="each job's time limit: HH:MM:SS, D-HH:MM:SS or minutes")
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs per job (more than 1: torchrun under srun)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per job (default: --threads)")
    slurm.add_argument("--nodes", type=int, help="nodes per job (more than 1: torchrun on each, DDP across them)")
    parser.add_argument(
        "--max-hours", type=float, help="start no cell after this many hours (nor one that would end later)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every cell, after the spec's set (repeatable)",
    )
    parser.add_argument("--models", nargs="+", help="only these models of the spec")
    parser.add_argument("--policies", nargs="+", help="only these arms of the spec (an ablation's source is added)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds of the spec")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="only the grid points with these values of KEY, e.g. --grid optim.lr=0.1,0.3 (repeatable)",
    )


def executor_options(spec, args: argparse.Namespace) -> tuple[str, dict]:
    """``(kind, options)``: the spec's ``executor:`` (and for Slurm its ``slurm:``) with the flags on top."""
    options = dict(spec.executor)
    kind = args.executor or options.pop("kind", "local")
    options.pop("kind", None)
    if kind == "slurm":
        options = {**spec.slurm, **options}
    options.setdefault("workers", 2)
    options.setdefault("threads", 1)
    for flag in ("workers", "threads"):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                from ..errors import UserError

                raise UserError(f"--{flag} must be at least 1, got {value}")
            options[flag] = value
    for flag in ("partition", "time", "gpus_per_node", "cpus_per_task", "nodes"):
        value = getattr(args, flag, None)
        if value is not None:
            if kind != "slurm":
                from ..errors import UserError

                raise UserError(f"--{flag.replace('_', '-')} is a Slurm option: add --executor slurm")
            options[flag] = value
    return kind, options


def dry_run(spec, cells, layout, extra: tuple[str, ...], capacity: int, gpus: int = 0) -> None:
    """Print each cell's state and estimated cost, and the totals (training time; wall time at ``capacity``
    cells at once). Cells that run as jobs of ``gpus`` GPUs, of a model with a stated throughput
    (:func:`~tscnet.study.cost.gpu_cost`), are costed in GPU-hours instead: per cell, in all, and the
    wall hours of the study at ``capacity`` jobs at once."""
    from ..study.cost import CostModel, format_hours, gpu_cost
    from ..study.results import check_configs, check_recipe
    from ..study.scheduler import cell_state, planned_configs

    check_configs(spec, cells, extra)
    check_recipe(spec, cells, layout, extra)
    cost = CostModel.from_folders([layout.results, layout.runs, layout.results.parent])
    width = max(len(str(c)) for c in cells)
    total, sources = 0.0, set()
    counts: dict[str, int] = {}  # cell state -> number of cells
    gpu_hours: dict[str, float] = {}  # model -> GPU-hours of its cells to run
    job_hours, stated = 0.0, {}  # wall hours of those jobs one after another; model -> images/s per GPU
    configs = planned_configs(spec, cells, extra)  # the recipe read once per model, arm and grid point
    print(f"study {spec.name}: {len(cells)} cells; results {layout.results}; scratch runs {layout.runs}")
    for cell in cells:
        state = cell_state(spec, cell, layout)
        counts[state] = counts.get(state, 0) + 1
        config = configs[cell]
        todo = state in ("to run", "resumable", "waiting for its source")
        on_gpus = gpu_cost(cell.model, config, gpus)
        if on_gpus is not None:
            estimate = f"~{on_gpus.gpu_hours:.1f} GPU-h, {on_gpus.wall_hours:.2f} h on {gpus} GPUs"
            if todo:
                gpu_hours[cell.model] = gpu_hours.get(cell.model, 0.0) + on_gpus.gpu_hours
                job_hours += on_gpus.wall_hours
                stated[cell.model] = on_gpus.images_per_s
        else:
            seconds, source = cost.seconds(cell.model, config)
            estimate = "~" + format_hours(seconds)
            if todo:
                total += seconds
                sources.add(source)
        print(f"{state:<26} {str(cell):<{width}}  {estimate if todo else ''}")
    print(
        "; ".join(f"{n} {state}" for state, n in counts.items())
        + (
            f"; ~{format_hours(total)} of training, ~{format_hours(total / capacity)} at {capacity} at a time "
            f"(estimated from {', '.join(sorted(sources))})"
            if total
            else ""
        )
    )
    if gpu_hours:
        per_model = ", ".join(f"{model} {hours:.1f}" for model, hours in gpu_hours.items())
        figures = ", ".join(f"{model} {speed:g}" for model, speed in stated.items())
        print(
            f"GPU-hours: ~{sum(gpu_hours.values()):.1f} GPU-h to run ({per_model}); ~{job_hours:.1f} h of "
            f"{gpus}-GPU jobs, ~{job_hours / capacity:.1f} h wall at {capacity} jobs at a time (from stated "
            f"training images/s per GPU, {figures}: assumptions, tscnet.study.cost.GPU_IMAGES_PER_S)"
        )


def parse_grid_filter(items: list[str]) -> dict[str, list]:
    """``["optim.lr=0.1,0.3"]`` → ``{"optim.lr": [0.1, 0.3]}`` (each value read as YAML: numbers are numbers)."""
    import yaml

    from ..errors import UserError

    grid: dict[str, list] = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise UserError(f"--grid must be KEY=V1,V2,... such as optim.lr=0.1,0.3; got {item!r}")
        try:
            grid.setdefault(key.strip(), []).extend(_grid_value(v) for v in values.split(","))
        except yaml.YAMLError:
            raise UserError(f"--grid {item!r}: a value is not a number or a word") from None
    return grid


def _grid_value(text: str):
    """A number where ``text`` is one (also ``1e-2``, which YAML 1.1 reads as a string), else its YAML value."""
    import yaml

    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def execute(
    args: argparse.Namespace,
    on_result: Callable | None = None,
    on_report: Callable[[list[Path], int], None] | None = None,
) -> int:
    """The command, with hooks: ``on_result(CellResult)`` after each collected cell, ``on_report(files,
    n_runs)`` after the report is written (``benchmarks/study.py --commit`` commits there)."""
    from ..errors import UserError
    from ..study import build_study_report, create_executor, default_layout, load_spec, plan_cells, run_study
    from ..study.report import load_results
    from ..study.results import check_cell_data, is_collected

    spec = load_spec(args.spec)
    layout = default_layout(spec, args.results, args.runs)
    extra = tuple(args.set)
    if args.report_only and args.dry_run:
        raise UserError("--dry-run and --report-only exclude each other")
    if args.max_hours is not None and not args.max_hours > 0:
        raise UserError(f"--max-hours must be a positive number of hours, got {args.max_hours:g}")
    counts: dict = {}
    if not args.report_only:
        cells = plan_cells(spec, args.models, args.policies, args.seeds, parse_grid_filter(args.grid))
        kind, options = executor_options(spec, args)
        if args.dry_run:
            gpus = int(options.get("gpus_per_node") or 0) * int(options.get("nodes") or 1) if kind == "slurm" else 0
            dry_run(spec, cells, layout, extra, int(options.get("workers", 1)), gpus)
        if kind == "local":  # a cluster's nodes may see other folders than this machine
            check_cell_data(
                spec,
                [c for c in cells if not is_collected(layout.result_dir(c))],
                layout.workdir,
                extra,
                download=not args.dry_run,
            )  # a dry run fetches nothing
        if args.dry_run:
            return 0
        executor = create_executor(kind, **options)  # bad executor options: refused before any folder is made
        layout.check_claim()  # another study's scratch runs: refused before anything runs
        counts = run_study(
            spec,
            cells,
            layout,
            executor,
            extra=extra,
            threads=int(options.get("threads", 1)),
            max_hours=args.max_hours,
            on_result=on_result,
        )
    elif not layout.results.is_dir():
        raise UserError(f"--report-only: no results folder {layout.results}")
    found = load_results(layout.results)
    if found:
        try:
            report = build_study_report(spec, layout.results)
        except OSError as error:  # a full disk, a read-only folder: the collected results are untouched
            raise UserError(
                f"cannot write the report into {layout.results}: {error.strerror or error}; the "
                "collected results are intact: free the space and run again with --report-only"
            ) from None
        print(f"report: {report.path}")
        if on_report is not None:
            on_report(report.files, len(found))
    elif args.report_only:
        raise UserError(f"--report-only: no collected cells under {layout.results}")
    return 1 if counts.get("failed") or counts.get("signal") else 0


def run(args: argparse.Namespace) -> int:
    return execute(args)
