"""``tscnet --help`` for a newcomer: quick (no torch, timm, torchvision or matplotlib imported to build
the parser), every option explained, plain text; and ``import tscnet`` stays lazy but complete."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from tscnet.cli import build_parser

HEAVY = ("torch", "timm", "torchvision", "matplotlib")


def _loaded_after(code: str) -> dict:
    """The heavy top-level packages and the tscnet modules loaded after ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    return {"heavy": sorted({m.partition(".")[0] for m in modules} & set(HEAVY)),
            "tscnet": [m for m in modules if m.partition(".")[0] == "tscnet"]}


def test_building_the_parser_imports_no_heavy_library():
    loaded = _loaded_after("import tscnet.cli\ntscnet.cli.build_parser()")
    assert loaded["heavy"] == [], f"tscnet --help imports {loaded['heavy']} (import them inside run())"
    assert "tscnet.commands.list" in loaded["tscnet"]  # every command module was imported


def test_import_tscnet_is_lazy_but_its_names_are_all_there():
    assert _loaded_after("import tscnet")["heavy"] == []
    loaded = _loaded_after("import tscnet\nassert callable(tscnet.create_model) and callable(tscnet.attach_steps)")
    assert "torch" in loaded["heavy"] and "tscnet.stepping" in loaded["tscnet"]
    import tscnet

    assert set(tscnet.__all__) <= set(dir(tscnet))
    for name in tscnet.__all__:
        assert getattr(tscnet, name).__name__ == name
    assert callable(tscnet.stepping.policy_name)  # a subpackage by attribute, as when it was imported eagerly
    from tscnet import fold_steps  # noqa: F401
    try:
        tscnet.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("tscnet.no_such_name did not raise AttributeError")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{"tscnet": parser, "tscnet train": ..., ...}``: the parser and every subcommand's, recursively."""
    found = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(_commands(sub))
    return found


def test_every_option_of_every_command_has_help():
    commands = _commands(build_parser())
    assert {"tscnet train", "tscnet list", "tscnet study"} <= set(commands)
    missing = [f"{prog} {'/'.join(a.option_strings) or a.dest}" for prog, parser in commands.items()
               for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())]
    assert not missing, f"options without help=: {missing}"


def test_top_level_help_is_plain_text_and_names_debug():
    text = build_parser().format_help()
    assert "``" not in text and ":mod:" not in text and ":data:" not in text
    assert "--debug" in text and "Exit status" in text


def test_ode_help_states_the_defaults_the_command_uses():
    """`tscnet ode -h` writes the poster's settings out (importing them would import torch): they must agree."""
    from tscnet.analysis.ode_plot import EULER_STEPS, RKF_TOL
    from tscnet.commands import ode

    assert [float(h) for h in ode.DEFAULT_H.split()] == list(EULER_STEPS)
    assert float(ode.DEFAULT_TOL) == RKF_TOL
