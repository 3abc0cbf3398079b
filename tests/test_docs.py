"""The API reference: every public name has a docstring, and the documentation site builds with
warnings as errors (docs/conf.py: Sphinx, MyST, autodoc + napoleon; ``nitpicky``).

Public: a name in ``__all__`` of :data:`PACKAGES`, and every function or class defined at the top
of one of their modules without a leading underscore. Functions and classes need a docstring; a
constant or an alias (``register_gate = GATE_FOLDERS.register``) in ``__all__`` needs a ``#:``
comment, which is what autodoc documents it with. Sources are parsed with :mod:`ast` (a dataclass
without a docstring still has a ``__doc__``: its signature).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["tscnet", "tscnet.stepping", "tscnet.study", "tscnet.train",
            "tscnet.models", "tscnet.data", "tscnet.jobs", "tscnet.analysis"]  # every package docs/api/ documents
NOT_ON_API_PAGES = {"tscnet.commands"}  # one module per CLI command: `tscnet COMMAND -h` documents them


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text())


def _top_level(module) -> dict[str, ast.AST]:
    """Name -> the def, class or assignment that binds it at the top of ``module``'s source."""
    nodes: dict[str, ast.AST] = {}
    for node in _tree(module.__file__).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nodes[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        nodes[name.id] = node
    return nodes


def _has_doc_comment(module, node: ast.AST) -> bool:
    """A ``#:`` comment on the lines right above the assignment, or after it on its first line."""
    lines = Path(module.__file__).read_text().splitlines()
    return lines[node.lineno - 2].lstrip().startswith("#:") or "#:" in lines[node.lineno - 1]


def _modules(package: str) -> list:
    pkg = importlib.import_module(package)
    if package == "tscnet":  # the top level: its own names only (the subpackages are listed on their own)
        return [pkg]
    return [pkg] + [importlib.import_module(info.name)
                    for info in pkgutil.walk_packages(pkg.__path__, package + ".")]


def _undocumented(package: str) -> list[str]:
    missing = []
    pkg = importlib.import_module(package)
    for name in getattr(pkg, "__all__", []):
        obj = getattr(pkg, name)
        home = sys.modules[obj.__module__] if inspect.isfunction(obj) or inspect.isclass(obj) else None
        if home is None:  # a constant or an alias: the (sub)module that assigns it
            home = next((m for m in _modules(package) if name in _top_level(m) and vars(m).get(name) is obj), None)
        node = _top_level(home).get(name) if home is not None else None
        if node is None:
            missing.append(f"{package}.{name}: not found where it is defined")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            if not _has_doc_comment(home, node):
                missing.append(f"{package}.{name}: no '#:' comment above {home.__name__}.{name} = ...")
        elif not ast.get_docstring(node):
            missing.append(f"{package}.{name}: no docstring ({home.__name__}.{name})")
    if package != "tscnet":
        for module in _modules(package):
            for name, node in _top_level(module).items():
                if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not name.startswith("_")
                        and not ast.get_docstring(node)):
                    missing.append(f"{module.__name__}.{name}: no docstring ({Path(module.__file__).relative_to(ROOT)}:{node.lineno})")
    return sorted(set(missing))


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_have_docstrings(package):
    missing = _undocumented(package)
    assert not missing, "public names without a docstring (the API reference would leave them out):\n" + "\n".join(missing)


def test_every_module_is_on_an_api_page():
    """docs/api/*.rst names every module of tscnet and of its documented packages (a new module gets a section)."""
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.rst"))
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", pages, re.MULTILINE))
    top = importlib.import_module("tscnet")
    missing = [info.name for info in pkgutil.iter_modules(top.__path__, "tscnet.") if info.name not in documented]
    for package in re.findall(r"^\.\. automodule:: (tscnet\.\w+)$", pages, re.MULTILINE):
        pkg = importlib.import_module(package)
        if hasattr(pkg, "__path__") and package not in NOT_ON_API_PAGES:
            missing += [info.name for info in pkgutil.walk_packages(pkg.__path__, package + ".")
                        if info.name not in documented]
    assert not missing, f"modules on no page of docs/api/ (add an automodule section): {sorted(set(missing))}"


# The Sphinx build takes ~45 s (35-60 s on 2 busy cores, ~15 s of CPU): it imports every module, torch and timm included.
@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0 and not problems, f"the docs build (sphinx -W -n) failed:\n{output[-6000:]}"
    assert (tmp_path / "html" / "api" / "stepping.html").is_file()
