"""Every relative link in the project's Markdown (README, BENCHMARKS, docs/, examples/, the committed reports)
names a file that exists and, with a ``#fragment``, a heading of that file, slugged as GitHub does."""
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md",
         *sorted((ROOT / "benchmarks" / "results").glob("*/report.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache  # a page is linked to many times
def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped (letters of any script kept), spaces to
    hyphens; the n-th repeat of an id gets ``-n``."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # no headings in code blocks
    seen: Counter = Counter()
    anchors = set()
    for title in re.findall(r"^#{1,6} +(.+?) *#* *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked (no network)
            continue
        name, _, fragment = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
            broken.append(f"{target}: no heading #{fragment} in {path.name}")
    assert not broken, "\n".join(broken)
