"""Policy comparisons as a library: a study spec → cells → runs (through an executor) → report.

::

    from tscnet.study import load_spec, plan_cells, default_layout, create_executor, run_study, build_study_report

    spec = load_spec("converged")                    # tscnet/configs/studies/converged.yaml, or a path
    layout = default_layout(spec)                    # results, scratch runs, working directory
    cells = plan_cells(spec)                         # seed-major, ablation sources first
    run_study(spec, cells, layout, create_executor("local", workers=2, threads=1))
    build_study_report(spec, layout.results)               # report.md, summary.json, PNGs

``tscnet study SPEC`` is this, with ``--dry-run`` and ``--report-only``.
"""

# The statistics, shared with ``tscnet report``, live in the analysis layer: re-exported, as before they moved.
from ..analysis.stats import holm, paired, welch

# The job layer's executors, re-exported: ``from tscnet.study import create_executor`` is the documented API.
from ..jobs.executors import Executor, Task, create_executor, register_executor
from .plan import Cell, Layout, default_layout, plan_cells
from .report import build_study_report
from .scheduler import CellResult, run_study
from .spec import Arm, StudySpec, load_spec

__all__ = [
    "Arm",
    "Cell",
    "CellResult",
    "Executor",
    "Layout",
    "StudySpec",
    "Task",
    "build_study_report",
    "create_executor",
    "default_layout",
    "holm",
    "load_spec",
    "paired",
    "plan_cells",
    "register_executor",
    "run_study",
    "welch",
]
