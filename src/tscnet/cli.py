"""The ``tscnet`` command: ``tscnet <command> [options]``; ``tscnet <command> -h`` for each one.

Each command is a module of :mod:`tscnet.commands` with ``NAME``, ``HELP``,
``configure(parser)`` and ``run(args) -> int``; the modules are found by discovery, listed in
the order of :data:`ORDER` first.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from typing import Optional, Sequence

ORDER = ["demo", "train", "eval", "fold", "ode", "stability", "report", "study"]

# Errors a user can fix: one line, exit status 2. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``tscnet train: error: ...``, exit status 2), like
    every other bad input: the usage block is one ``-h`` away, named in the line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tscnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tscnet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def command_modules() -> list:
    from . import commands

    found = [importlib.import_module(f"tscnet.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    found = [m for m in found if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(found, key=lambda m: (ORDER.index(m.NAME) if m.NAME in ORDER else len(ORDER), m.NAME))


def _version() -> str:
    from . import __version__

    return __version__


def _one_line_warning(command: str):
    """tscnet's own warnings as ``tscnet <command>: warning: ...``; other libraries' as usual."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}tscnet{os.sep}" not in str(filename):
            return default(message, category, filename, lineno, file, line)
        print(f"tscnet {command}: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import UserError

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args._run(args) or 0)
    except (UserError, *_USER_ERRORS) as error:
        if os.environ.get("TSCNET_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"tscnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tscnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
