"""Bugs and mistakes tell apart on the command line: a bad input is one line and exit status 2, a bug
(in tscnet or in a library it calls) keeps its traceback, names the package it came from and where
to report it, and exits with status 1. ``--debug`` (or ``TSCNET_DEBUG``) shows a bad input's traceback too.

Bugs are injected by breaking a dependency or a tscnet internal a command calls (no mock stands in
for the code under test)."""
from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from tscnet.cli import culprit, main
from tscnet.errors import InvalidType, InvalidValue, NotFound, UnknownName, UserError

REPO = Path(__file__).resolve().parents[1]


def issues_url() -> str:
    """The ``Issues`` URL of pyproject.toml's [project.urls]."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Issues"]


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``tscnet ARGV`` run in this process."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def test_user_errors_are_the_builtin_types_python_callers_catch():
    for cls, builtin in ((InvalidValue, ValueError), (InvalidType, TypeError), (NotFound, FileNotFoundError),
                         (UnknownName, KeyError)):
        error = cls("the message says what to change")
        assert isinstance(error, UserError) and isinstance(error, builtin)
        assert str(error) == "the message says what to change"  # KeyError's str() would quote it
    import tscnet

    with pytest.raises(ValueError, match="unknown step policy 'bogus'") as caught:
        tscnet.parse_policy("bogus")
    assert isinstance(caught.value, UserError)
    with pytest.raises(TypeError) as caught:
        tscnet.parse_policy(3)
    assert isinstance(caught.value, UserError)


def test_a_bug_in_a_dependency_is_a_traceback_naming_it_and_where_to_report_it(monkeypatch, capsys):
    import timm.models._registry

    monkeypatch.setattr(timm.models._registry, "_deprecated_models", None)  # timm's registry, broken
    code, err = cli(["list", "models"], capsys)
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and "AttributeError" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tscnet list: AttributeError is a bug in timm or in how tscnet calls it (timm "), last
    assert issues_url() in last and "not a problem with your input" in last


def test_a_bug_in_tscnet_is_a_traceback_naming_tscnet(monkeypatch, capsys):
    # importlib.resources.files answering a str: the `/` in tscnet's list command raises a plain TypeError,
    # which the CLI used to print as if the user had typed something wrong.
    monkeypatch.setattr(resources, "files", str)
    code, err = cli(["list", "recipes"], capsys)
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and "TypeError: unsupported operand" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tscnet list: TypeError is a bug in tscnet (tscnet "), last
    assert issues_url() in last


def test_a_plain_value_error_under_tscnet_is_a_bug_not_a_bad_input(monkeypatch, tmp_path, capsys):
    # A recipe in the package that is not UTF-8: read_text() raises UnicodeDecodeError (a ValueError) in
    # the standard library, called by tscnet's code; no flag of the user's can fix that.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broken.yaml").write_bytes(b"# \xff\xfe not UTF-8\n")
    monkeypatch.setattr(resources, "files", lambda package: tmp_path)
    code, err = cli(["list", "recipes"], capsys)
    assert code == 1 and "UnicodeDecodeError" in err, err
    assert err.strip().splitlines()[-1].startswith("tscnet list: UnicodeDecodeError is a bug in tscnet ("), err


def test_a_bad_flag_and_a_bad_value_stay_one_line_with_status_2(capsys):
    code, err = cli(["list", "bogus"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("tscnet list: error: argument WHAT: invalid choice")
    code, err = cli(["ode", "--h", "0"], capsys)
    assert (code, err) == (2, "tscnet ode: error: --h must be positive finite step sizes, got 0\n")


def test_a_bad_input_inside_the_library_is_one_line(tmp_path, capsys):
    """A UserError subclass raised deep in tscnet (the policy parser, the model registry) ends in one line."""
    code, err = cli(["train", "--steps", "tsc:hidden=-1", "--model", "cifar_resnet8", "--epochs", "1",
                     "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "hidden must be a positive size, got -1" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_bad_input(how, monkeypatch, capsys):
    argv = ["ode", "--h", "0"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("TSCNET_DEBUG", "1")
    code, err = cli(argv, capsys)
    assert code == 2
    assert err.startswith("Traceback (most recent call last)") and "tscnet.errors.UserError" in err
    assert err.strip().splitlines()[-1] == "tscnet ode: error: --h must be positive finite step sizes, got 0"


def test_culprit_is_the_innermost_package_outside_the_standard_library():
    with pytest.raises(RuntimeError) as caught:
        torch.nn.Linear(2, 3)(torch.zeros(4, 5))  # raised under torch.nn's forward
    assert culprit(caught.value.__traceback__) == "torch"
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads("{")  # json is the standard library: the caller (this module) is to blame
    assert culprit(caught.value.__traceback__) == __name__.partition(".")[0]
    assert culprit(None) == "tscnet"
    assert sys.stdlib_module_names  # what culprit() relies on (Python 3.10+)
