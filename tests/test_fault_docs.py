"""The table of faults in docs/study.md names, for each fault, tests that exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_faults_table_names_exists():
    page = (ROOT / "docs" / "study.md").read_text()
    table = page.split("## Faults and what happens")[1].split("\n## ")[0]
    named = re.findall(r"\[`(\w+\.py)::(\w+)`\]\(\.\./tests/(\w+\.py)\)", table)
    assert len(named) >= 14
    for module, test, linked in named:
        assert module == linked, (module, linked)
        assert re.search(rf"^def {test}\(", (ROOT / "tests" / module).read_text(), re.M), f"{module}::{test}"
