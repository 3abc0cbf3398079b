"""The import graph of ``src/tscnet``: no cycle between its subpackages, and no import upward in
:data:`LAYERS` (docs/design.md, "Layers").

Every module is parsed with :mod:`ast` (nothing is imported): every ``import`` and ``from ... import``
anywhere in it, function-local ones and those under ``if TYPE_CHECKING:`` included, relative ones
resolved, and ``importlib.import_module("...")`` with a literal name. A module's subpackage is the
first name below ``tscnet`` (``tscnet.train.engine`` → ``train``; the top-level modules
``errors.py``, ``registry.py``, ``hub.py``, ``cli.py`` are their own); ``tscnet/__init__.py`` is
``__init__``. Imports inside one subpackage are free.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tscnet"

#: The layers, lowest first. A module may import from a strictly lower layer only (nor from
#: another subpackage of its own layer). Each entry: the subpackages of one layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "registry"),  # UserError and friends; the name -> object registry behind extension points
    ("formats",),            # the format version of every file tscnet writes
    ("stepping",),           # step sites, policies, controllers, attach, fold
    ("models",),             # CIFAR ResNets, minis; create_model over ours, timm's and torchvision's
    ("data",),               # dataset formats and the tensor-resident loader
    ("jobs",),               # commands run as jobs: Task, executors (local, slurm), run_tasks, signals
    ("train",),              # recipes, the engine, the run folder, stopping a run on a signal
    ("analysis",),           # spectral norms, stability, gradient flow, ODE toy, run reports
    ("study",),              # study specs, plans, the study scheduler, sweeps, results, statistics, report
    ("hub",),                # folded models as timm model folders
    ("__init__",),           # tscnet/__init__.py: re-exports of anything below the commands
    ("commands",),           # one module per `tscnet` command
    ("cli",),                # the `tscnet` entry point
)


@dataclass(frozen=True)
class Import:
    module: str    # the importing module, e.g. "tscnet.study.sweep"
    path: Path
    line: int
    target: str    # the imported module, e.g. "tscnet.jobs.executors"


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name → (file, is a package's ``__init__``) for every ``.py`` file under ``src``."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imports(src: Path) -> list[Import]:
    """Every import of a module under ``src`` (the package ``src.name``) by another such module."""
    known = modules(src)
    root = src.name
    found = []
    for name, (path, package) in known.items():
        here = name if package else name.rpartition(".")[0]  # what ``from . import`` is relative to
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from P import m``: the module P.m where there is one, else a name of P
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                           for alias in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
                targets = [node.args[0].value]
            found += [Import(name, path, node.lineno, target) for target in targets
                      if target == root or target.startswith(root + ".")]
    return found


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of() -> dict[str, int]:
    return {name: i for i, layer in enumerate(LAYERS) for name in layer}


def cross_imports(src: Path = SRC) -> list[Import]:
    return [i for i in imports(src) if subpackage(i.module) != subpackage(i.target)]


def describe(i: Import) -> str:
    return f"{i.path.relative_to(SRC.parents[1])}:{i.line}: {i.module} imports {i.target}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_subpackage_has_a_layer():
    names = {subpackage(name) for name in modules(SRC)}
    missing = sorted(names - set(layer_of()))
    assert not missing, f"subpackages not in LAYERS (tests/test_architecture.py): {missing}; add each to its layer"
    assert len(layer_of()) == sum(map(len, LAYERS)), "a subpackage is in two layers"


def test_no_cycle_between_subpackages():
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], Import] = {}
    for i in cross_imports():
        a, b = subpackage(i.module), subpackage(i.target)
        edges[a].add(b)
        where.setdefault((a, b), i)
    problems = []
    for component in cycles(edges):
        arrows = [describe(where[a, b]) for a in component for b in sorted(edges[a]) if b in component]
        problems.append(f"cycle between {', '.join(component)}:\n  " + "\n  ".join(arrows))
    assert not problems, "\n".join(problems)


def test_no_import_goes_upward():
    layers = layer_of()
    upward = []
    for i in cross_imports():
        a, b = subpackage(i.module), subpackage(i.target)
        if a in layers and b in layers and layers[b] >= layers[a]:
            upward.append(f"{describe(i)} ({a}, layer {layers[a]} → {b}, layer {layers[b]})")
    assert not upward, ("imports not to a lower layer (LAYERS in tests/test_architecture.py):\n"
                        + "\n".join(sorted(upward)))


def test_the_scan_sees_function_local_relative_and_dynamic_imports(tmp_path):
    """The scanner itself, on a small package: what it must find, it finds (the function-local
    imports of the study that train/sweep.py hid before the jobs layer, among others)."""
    pkg = tmp_path / "tscnet"
    (pkg / "train").mkdir(parents=True)
    (pkg / "study").mkdir()
    for init in (pkg / "__init__.py", pkg / "train" / "__init__.py", pkg / "study" / "__init__.py"):
        init.write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "study" / "plan.py").write_text("")
    (pkg / "train" / "sweep.py").write_text(
        "import importlib\n"
        "from .. import errors\n"
        "def run():\n"
        "    from ..study.plan import Cell\n"
        "    from ..study import plan\n"
        "    import tscnet.study\n"
        "    importlib.import_module('tscnet.study.plan')\n")
    found = {(i.module, i.line, i.target) for i in imports(pkg)}
    assert found == {("tscnet.train.sweep", 2, "tscnet.errors"), ("tscnet.train.sweep", 4, "tscnet.study.plan"),
                     ("tscnet.train.sweep", 5, "tscnet.study.plan"), ("tscnet.train.sweep", 6, "tscnet.study"),
                     ("tscnet.train.sweep", 7, "tscnet.study.plan")}
