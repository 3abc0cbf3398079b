"""Where a run ran: ``RUN/platform.json``, written as the run starts and on every resume.

Training is bit-exact on one machine, not across CPU types, BLAS builds or GPUs: the same recipe
re-run on another CPU matches in distribution, not digit for digit. Every run therefore records
its platform (torch, CUDA and cuDNN versions, the CPU model or GPU name, the intra-op thread
count, the number of processes, the host and Python), and a resumed run that moved to another
machine appends the new one, so a report can say which cells ran where::

    [{"torch": "2.14.1", "cuda": null, "cudnn": null, "device_type": "cpu",
      "device": "AMD EPYC 7B13", "threads": 1, "world_size": 1, "hostname": "node17",
      "python": "3.11.2", "from_step": 0, "from_epoch": 0}, ...]

``from_step`` / ``from_epoch`` are the global steps and whole epochs done when that platform took
over. The model card repeats the list under ``"platform"``.
"""

from __future__ import annotations

import json
import platform
import socket
from pathlib import Path

import torch

from ..errors import UserError
from ..formats import check_format, stamped
from ..jobs.run_folder import RunFolder
from . import run as runfiles

PLATFORM_FILE = RunFolder.PLATFORM
_WHERE = ("from_step", "from_epoch")  # not part of the platform itself


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device, world_size: int = 1) -> dict:
    """This process's platform, as recorded in ``platform.json``."""
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": cudnn,
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
    }


def read_platforms(run_dir: Path) -> list[dict]:
    """The platforms a run ran on, first to last (empty for a run from before they were recorded)."""
    path = Path(run_dir) / PLATFORM_FILE
    if not path.is_file():
        return []
    try:
        platforms = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); delete it to record the platform afresh") from None
    if isinstance(platforms, dict):  # {"format_version": 1, "platforms": [...]}; a bare list before versions
        check_format(platforms, path)
        platforms = platforms.get("platforms")
    if not isinstance(platforms, list) or not all(isinstance(p, dict) for p in platforms):
        raise UserError(f"{path} must hold a list of platforms, got {type(platforms).__name__}")
    return platforms


def record(run_dir: Path, here: dict, step: int, epoch: int) -> list[dict]:
    """Add ``here`` to the run's ``platform.json`` unless the run is already on it; returns the list."""
    platforms = read_platforms(run_dir)
    last: dict | None = platforms[-1] if platforms else None
    if last is None or {k: v for k, v in last.items() if k not in _WHERE} != here:
        platforms.append({**here, "from_step": step, "from_epoch": epoch})
        text = json.dumps(stamped({"platforms": platforms}), indent=2) + "\n"
        runfiles.atomic_write_bytes(Path(run_dir) / PLATFORM_FILE, text.encode())
    return platforms
