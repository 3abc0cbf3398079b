"""Function sizes in the parts of the library that grew as state machines (``train/``, ``study/``):
no function over :data:`MAX_LINES` lines or :data:`MAX_PARAMS` parameters unless its docstring says
why (a sentence starting ``Why so long:`` or ``Why so many parameters:``). Measured with :mod:`ast`:
lines from ``def`` to the last line of the body, parameters without ``self``/``cls``."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tscnet"
PACKAGES = ("train", "study")
MAX_LINES, MAX_PARAMS = 60, 8


def sizes(root: Path):
    """``(path:line name, lines, params, docstring)`` of every function and method under ``root``."""
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                params = len([n for n in names if n not in ("self", "cls")])
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                yield where, lines, params, ast.get_docstring(node) or ""


def oversized(root: Path) -> list[str]:
    found = []
    for where, lines, params, doc in sizes(root):
        if lines > MAX_LINES and "Why so long:" not in doc:
            found.append(f"{where}: {lines} lines")
        if params > MAX_PARAMS and "Why so many parameters:" not in doc:
            found.append(f"{where}: {params} parameters")
    return found


def test_no_function_in_train_or_study_is_too_long_or_takes_too_many_parameters():
    found = [f for package in PACKAGES for f in oversized(SRC / package)]
    assert not found, "split these, or say why in the docstring (tests/test_function_sizes.py):\n" + "\n".join(found)


def test_the_measure_sees_long_functions_and_long_parameter_lists(tmp_path):
    pkg = tmp_path / "train"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (pkg / "a.py").write_text(
        f"def long():\n{body}\n"
        f"def many(self, a, b, c, d, e, f, g, h, i):\n    pass\n"
        f"def excused(a, b, c, d, e, f, g, h, i):\n    '''Why so many parameters: the recipe's keys.'''\n"
        f"class C:\n    def fine(self, a):\n        return a\n")
    assert oversized(pkg) == [f"train/a.py:1 long: {MAX_LINES + 1} lines", "train/a.py:63 many: 9 parameters"]
