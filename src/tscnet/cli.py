"""The ``tscnet`` command: ``tscnet <command> [options]``; ``tscnet <command> -h`` for each one.

Each command is a module of :mod:`tscnet.commands` with ``NAME``, ``HELP``,
``configure(parser)`` and ``run(args) -> int``; the modules are found by discovery, listed in
the order of :data:`ORDER` first. A command module imports torch, timm and the like inside
``run()``, never at import time: building the parser imports every command module, and
``tscnet --help`` must not wait seconds for libraries it does not use.

A :class:`~tscnet.errors.UserError` (bad input) ends in one line, ``tscnet CMD: error: ...``, exit
status 2 (``--debug`` shows its traceback too). Any other exception is a bug: its traceback, then a
line naming the package it came from (tscnet, or the library whose code raised it) and where to
report it, exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence
from types import TracebackType

#: The commands listed first, in this order (in ``tscnet --help``); the others follow by name.
ORDER = ["demo", "train", "eval", "fold", "ode", "stability", "report", "study", "list"]

DESCRIPTION = (
    "Residual networks as Euler steps with step-size policies: train them, evaluate and fold them, "
    "analyse their stability, compare policies in studies."
)
EPILOG = (
    "Run 'tscnet COMMAND -h' for a command's options. Exit status: 0 done; 2 bad input (one line saying "
    "what to change); 1 a failed check (eval's fold check) or a bug in tscnet or a library it uses (a "
    "traceback and where to report it); 130 interrupted."
)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``tscnet train: error: ...``, exit status 2), like
    every other bad input: the usage block is one ``-h`` away, named in the line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tscnet`` parser with one subcommand per command module (imports no torch)."""
    parser = OneLineParser(prog="tscnet", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"tscnet {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a bad-input error too (like TSCNET_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def command_modules() -> list:
    """The modules of :mod:`tscnet.commands` that define a command, in :data:`ORDER`, then by name."""
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


def culprit(tb: TracebackType | None) -> str:
    """The top-level package whose code raised the exception of traceback ``tb``: that of the
    innermost frame outside the standard library (``tscnet``, ``timm``, ``torch``, ...).

    The standard library is skipped because it raises on what its caller passed (``json``,
    ``pathlib``): the bug is in the caller. ``tscnet`` when no frame tells.
    """
    frames = [frame for frame, _ in traceback.walk_tb(tb)]
    for frame in reversed(frames):
        package = str(frame.f_globals.get("__name__") or "").partition(".")[0]
        if package and package not in sys.stdlib_module_names and package != "__main__":
            return package
    return "tscnet"


def report_url() -> str | None:
    """Where to report a bug: the ``Issues`` (else ``Bug Tracker``, ``Source``) URL of tscnet's
    installed metadata (``[project.urls]`` of pyproject.toml), ``None`` without metadata."""
    from importlib import metadata

    try:
        entries = metadata.metadata("tscnet").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    urls = {label.strip().lower(): url.strip() for label, _, url in (e.partition(",") for e in entries)}
    return next((urls[k] for k in ("issues", "bug tracker", "source") if k in urls), None)


def _package_version(package: str) -> str:
    """`` VERSION`` of the installed distribution that provides ``package``, else ``""``."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(package) or [package]
        return f" {metadata.version(names[0])}"
    except (metadata.PackageNotFoundError, ValueError):
        return ""


def bug_message(command: str, error: BaseException) -> str:
    """The line after a bug's traceback: which package it is a bug in, and where to report it."""
    package = culprit(error.__traceback__)
    where = "a bug in tscnet" if package == "tscnet" else f"a bug in {package} or in how tscnet calls it"
    url = report_url()
    report = f"please report it at {url}" if url else "please report it to the tscnet maintainers"
    return (
        f"tscnet {command}: {type(error).__name__} is {where} ({package}{_package_version(package)}), "
        f"not a problem with your input; {report} with the traceback above and the command line"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tscnet`` on ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    from .errors import UserError

    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("TSCNET_DEBUG"))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args._run(args) or 0)
    except UserError as error:
        if debug:
            traceback.print_exc()
        print(f"tscnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tscnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, here or in a library: the traceback is what a report needs
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:  # a path the user gave, always
            if debug:
                traceback.print_exc()
            print(
                f"tscnet {args.command}: error: a path is longer than the file system allows: {error.filename}",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        print(bug_message(args.command, error), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
