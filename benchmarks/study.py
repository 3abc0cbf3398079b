"""``tscnet study`` for this repository's benchmarks, plus ``--commit``: each result committed as it lands.

Everything ``tscnet study SPEC`` takes (see ``tscnet study -h``), and ``--commit``: each finished
cell's results folder is committed on its own as soon as the cell ends (``git commit -- <folder>``:
nothing else staged in the repository goes into that commit), and the report at the end; without
it nothing is committed. The library never calls git; this wrapper does, through the study's
result hook.

    python benchmarks/study.py converged --commit                 # rerun the converged study
    python benchmarks/study.py SPEC --dry-run                     # plan, states, estimated cost
    nohup python benchmarks/study.py SPEC --commit > study.log 2>&1 &   # kill -INT PID stops it cleanly
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tscnet.cli import OneLineParser
from tscnet.commands import study as command
from tscnet.errors import UserError


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def git_commit(paths: list[Path], message: str, attempts: int = 5) -> bool:
    """Commit exactly ``paths`` (``git add`` + ``git commit -- paths``) in their repository; another git
    process holding ``index.lock`` is waited for (``attempts`` tries, 2 s apart).

    True when they are committed afterwards, also when there was nothing new to commit."""
    cwd = paths[0]
    while not cwd.is_dir():
        cwd = cwd.parent
    for attempt in range(attempts):
        add = _git(["add", "--", *map(str, paths)], cwd)
        if add.returncode == 0 and _git(["diff", "--cached", "--quiet", "--", *map(str, paths)], cwd).returncode == 0:
            return True  # already committed as they are (e.g. a report rebuilt from unchanged runs)
        done = add.returncode == 0 and _git(["commit", "-q", "-m", message, "--", *map(str, paths)], cwd)
        if done and done.returncode == 0:
            return True
        error = (add.stderr if add.returncode else done.stderr + done.stdout).strip()
        if "index.lock" not in error or attempt + 1 == attempts:
            print(f"WARNING: git commit of {', '.join(map(str, paths))} failed: {error}", flush=True)
            return False
        time.sleep(2.0)
    return False


def commit_label(spec: str, results: Optional[Path]) -> str:
    """The commit messages' subject: the spec, and the results folder where it is not the spec's own
    (``stability_normfree (stability_fixup_batch128)``), so a side run is not taken for the study."""
    folder = Path(results).name if results else spec
    return spec if folder == spec else f"{spec} ({folder})"


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineParser(prog="benchmarks/study.py", description=__doc__.splitlines()[0])
    command.configure(parser)
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished cell's results folder as it lands, and the report")
    args = parser.parse_args(argv)
    hooks = {}
    if args.commit:
        name = commit_label(Path(args.spec).stem, args.results)

        def on_result(result) -> None:
            what = "diverged" if result.diverged else f"error {result.error:.2f} %"
            git_commit([result.folder], f"{name}: {result.cell} ({what})")

        def on_report(files: list[Path], runs: int) -> None:
            git_commit(files, f"{name}: report ({runs} runs)")

        hooks = {"on_result": on_result, "on_report": on_report}
    try:
        return command.execute(args, **hooks)
    except UserError as error:
        print(f"benchmarks/study.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
