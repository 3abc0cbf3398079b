"""Shared test helpers: two run folders that ended in the same state; a small real file system."""
import contextlib
import subprocess
from pathlib import Path

import pytest
import torch

from tscnet.train import read_metrics


def assert_same_run(a, b) -> None:
    """Bit-identical final weights and identical metrics (timings aside) in run folders ``a`` and ``b``."""
    sa, sb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (a, b))
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s")} for r in rows]
    assert strip(read_metrics(a)) == strip(read_metrics(b))


@contextlib.contextmanager
def tmpfs(mount: Path, size: int):
    """A real file system of ``size`` bytes (a tmpfs) mounted at ``mount`` while in the block: a disk that
    fills up. Skips the test where mounting is not allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size)}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
