"""The studies' numbers quoted in BENCHMARKS.md and the README are the committed reports' (converged, norm-free)."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "converged"


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:] if end < 0 else text[start:end]


@pytest.mark.parametrize("title", ["### ResNet-20, 5 seeds", "### ResNet-56, 3 seeds"])
def test_benchmarks_tables_of_the_converged_study_are_the_reports(title):
    report = (RESULTS / "report.md").read_text()
    section = _section((ROOT / "BENCHMARKS.md").read_text(), title)
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 13  # 11 policies and 2 ablations
    for row in rows:
        assert row in report.splitlines(), row


@pytest.mark.parametrize("model", ["cifar_resnet20", "cifar_resnet56"])
def test_readme_results_of_the_converged_study_are_the_reports(model):
    summary = json.loads((RESULTS / "summary.json").read_text())["models"][model]["rows"]

    def fmt(x):
        return f"{x:+.2f}".replace("-", "−")

    known = {(f"{r['mean']:.2f}", f"{r['std']:.2f}",
              "—" if r["vs_none"] is None else f"{fmt(r['vs_none']['diff'])} [{fmt(r['vs_none']['ci95'][0])}, "
                                                f"{fmt(r['vs_none']['ci95'][1])}]") for r in summary}
    section = _section((ROOT / "README.md").read_text(), f"| {model} | error % | vs `none`, pp |")
    section = section.split("\n\n")[0]
    table = re.findall(r"^\| .* \| (\d+\.\d\d) ± (\d+\.\d\d) \| \**([^|*]+?)\** \|$", section, re.M)
    assert len(table) == len(section.splitlines()) - 2 >= 6
    for row in table:
        assert row in known, row


@pytest.mark.parametrize("model, intro", [
    ("cifar_resnet20", "Norm-free ResNet-20, final-epoch test error %"),
    ("cifar_resnet56", "Norm-free ResNet-56, complete"),
])
def test_benchmarks_tables_of_the_norm_free_study_are_the_reports(model, intro):
    """Each policy × lr cell of BENCHMARKS' norm-free tables is the report's (the labels may differ:
    BENCHMARKS names the arms for a reader, the report by their spec names; the order is the spec's)."""
    report = (ROOT / "benchmarks" / "results" / "stability_normfree" / "report.md").read_text()
    blocks = _section(report, f"## {model}: final test error against `optim.lr`").split("\n\n")
    matrix = next(b for b in blocks if b.startswith("| policy |"))  # the first table: policy × lr
    want = [line.split(" | ")[1:] for line in matrix.splitlines()[2:]]
    text = (ROOT / "BENCHMARKS.md").read_text()
    table = text[text.index(intro):].split("\n\n")[1]
    got = [line.split(" | ")[1:] for line in table.splitlines()[2:]]
    assert len(want) == 10 and got == want
