"""A study's report from its results folder only: ``report.md``, ``summary.json`` and PNG figures.

Per model (and per grid point, with a grid): final-epoch test error mean ± sample std and per seed,
T, convergence (mean over seeds of ``|err_E − err_{E−3}|``), Welch 95 % intervals of each arm's
difference to the baseline and to the best peer, ablations against their source (paired by seed
and Welch), and the p-values of the comparisons with the baseline Holm-adjusted over that family.
A failed run counts at chance error (100 − 100 / classes %): one that diverged (a non-finite loss) is
marked †, one that finished at chance level (did not learn) ‡. Where cells recorded
their platform (``platform.json`` or the model card), the report says which cells ran where.

One module per job: :mod:`~tscnet.study.report.load` reads the collected cells,
:mod:`~tscnet.study.report.summary` computes each group's statistics (with
:mod:`tscnet.analysis.stats`, which ``tscnet report`` uses too), :mod:`~tscnet.study.report.tables`
writes them as Markdown, :mod:`~tscnet.study.report.grid` reads a one-key grid (a learning-rate
sweep), :mod:`~tscnet.study.report.figures` draws, :mod:`~tscnet.study.report.preamble` writes the
text above the tables and :mod:`~tscnet.study.report.build` puts the report together.
"""

from .build import StudyReport, build_study_report
from .figures import group_figures, plot_sweep
from .grid import format_sweep, format_sweep_matrix, sweep_analysis
from .load import Result, load_results, platform_label
from .summary import baseline_key, summarize_group
from .tables import format_ablations, format_holm, format_table

__all__ = [
    "StudyReport",
    "Result",
    "baseline_key",
    "build_study_report",
    "format_ablations",
    "format_holm",
    "format_sweep",
    "format_sweep_matrix",
    "format_table",
    "group_figures",
    "load_results",
    "platform_label",
    "plot_sweep",
    "summarize_group",
    "sweep_analysis",
]
