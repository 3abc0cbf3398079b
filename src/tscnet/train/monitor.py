"""Live monitoring of a run: TensorBoard event files (``train.log: tensorboard``, off by default).

Written by rank 0 into ``RUN/tensorboard/``: the running training loss and top-1 and the learning
rate every 20 steps; per epoch the train and test losses and accuracies, the evolution time T and
the Δt of every block as a histogram (its channels) — what people open while a long run goes::

    tensorboard --logdir runs/

Needs the optional ``tensorboard`` package (``pip install 'tscnet[tensorboard]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError

LOG_DIR = "tensorboard"
SETTINGS = ("none", "tensorboard")


class TensorBoardLog:
    """Scalars and Δt histograms of one run, in ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / LOG_DIR))

    def step(self, step: int, loss: float, top1: float, lr: float | torch.Tensor) -> None:
        self.writer.add_scalar("train/running_loss", loss, step)
        self.writer.add_scalar("train/running_top1", top1, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict, steps: Sequence[torch.Tensor]) -> None:
        epoch = row["epoch"]
        for key in (
            "train_loss",
            "train_acc",
            "test_loss",
            "test_top1",
            "test_top5",
            "test_error",
            "evolution_time",
            "lr",
            "images_per_s",
        ):
            if key in row:  # test_* are absent from epochs that train.eval_epochs skips
                self.writer.add_scalar(f"epoch/{key}", row[key], epoch)
        for d, dt in enumerate(steps):
            self.writer.add_histogram(f"dt/block{d:02d}", dt.detach().float().cpu(), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:  # also when a signal or a divergence stops the run
        self.close()


def check_log_setting(setting) -> bool:
    """Whether ``train.log`` asks for TensorBoard; a bad value or a missing package is a UserError."""
    if setting in (None, False, "none"):
        return False
    if setting not in SETTINGS:
        raise UserError(f"train.log must be one of {', '.join(SETTINGS)}; got {setting!r}")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "train.log=tensorboard needs the tensorboard package: "
            "pip install 'tscnet[tensorboard]' (or pip install tensorboard)"
        ) from None
    return True


def open_monitor(setting, run_dir: Path, is_main: bool) -> TensorBoardLog | None:
    """The run's monitor for ``train.log`` (``None``: off, or not rank 0)."""
    return TensorBoardLog(run_dir) if check_log_setting(setting) and is_main else None
