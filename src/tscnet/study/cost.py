"""How long a study's cells will take: the ``--dry-run`` estimates, ``progress: ... ~H h left`` and
``--max-hours``.

A cell's wall time is ``epochs × images per epoch / images per second × 1.35``. Images per second
of a model come from its finished runs; a model without any (the first ResNet-110 of a study whose
ResNet-56 runs have finished) is scaled from the finished model nearest in cost by the ratio of
forward FLOPs per image, since a CPU or GPU trains a plain ResNet at a roughly constant FLOP rate:

    speed(M) ≈ speed(R) · FLOPs(R) / FLOPs(M).

A cell that runs on GPUs (a Slurm job with ``gpus_per_node``) of a model with a stated throughput
(:data:`GPU_IMAGES_PER_S`: assumed figures, not measurements) is costed in GPU-hours instead
(:func:`gpu_cost`): ``epochs × train images / (images/s per GPU) + evaluated epochs × val images /
(EVAL_SPEEDUP × images/s per GPU)``, in hours; its job takes that divided by its GPUs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import UserError
from ..jobs.run_folder import RunFolder
from .results import read_metrics_or_empty

# Wall time of an epoch relative to its training time (``epoch_time`` in metrics.jsonl):
# evaluation, start-up and checkpoints, measured on the converged study (6.5 min per 20-epoch
# ResNet-20 run of 14.4 s training epochs: 1.35).
WALL_PER_TRAIN_TIME = 1.35
# A guess when no run of any model has finished: ResNet-20 on Fashion-MNIST, one CPU thread.
DEFAULT_MODEL, DEFAULT_DATA = "cifar_resnet20", "fashion-mnist"
#: Training images per second of that guess.
DEFAULT_IMAGES_PER_S = 300.0
DEFAULT_TRAIN_IMAGES = 50_000


@cache
def _flops(model: str, in_chans: int, image_size: int, options: tuple) -> float | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import create_model

    try:
        net = create_model(model, num_classes=10, in_chans=in_chans, **dict(options)).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(torch.zeros(1, in_chans, image_size, image_size))
    except Exception:  # an estimate is never worth failing a study for: no scaling then
        return None
    return float(counter.get_total_flops()) or None


def _flops_inputs(config: dict) -> tuple[int, int, tuple] | None:
    """``(in_chans, image_size, model options)``: what a model's FLOPs per image depend on in a recipe
    (its data's channels and image size, the model's ``norm``/``init``); ``None`` for unknown data."""
    from ..data import get_dataset_spec
    from ..train.run import model_options

    data = config.get("data", {})
    try:
        info = get_dataset_spec(data.get("name", "fashion-mnist")).info
    except UserError:
        return None
    in_chans = config.get("model", {}).get("in_chans") or info.in_chans
    image_size = data.get("image_size") or info.image_size
    options = model_options(config) if "model" in config else {}
    return in_chans, image_size, tuple(sorted(options.items()))


def flops_per_image(model: str, config: dict) -> float | None:
    """Forward FLOPs of the plain ``model`` on one image of the recipe's dataset (None if unknown)."""
    inputs = _flops_inputs(config)
    return None if inputs is None else _flops(model, *inputs)


@dataclass
class CostModel:
    """Estimated wall seconds of a cell: ``epochs × images per epoch / images per second × 1.35``.

    Images per second per model come from finished runs of that model (``images_per_s`` in their
    ``metrics.jsonl``, in the results and scratch folders), and are replaced by wall times measured
    in this invocation as runs finish. A model without finished runs is scaled by FLOPs from the
    finished model nearest in FLOPs (both on the cell's data: the runs are taken to be of the same
    data), else from :data:`DEFAULT_IMAGES_PER_S` for ResNet-20 on Fashion-MNIST (``source`` says which).
    """

    speed: dict[str, float] = field(default_factory=dict)  # model -> training images per second
    images: dict[str, float] = field(default_factory=dict)  # model -> training images per epoch seen
    measured: dict[str, list[float]] = field(default_factory=dict)  # model -> wall seconds per epoch
    _speeds: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _speeds_of: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # the speed they are of

    @classmethod
    def from_folders(cls, folders: list[Path]) -> CostModel:
        speeds: dict[str, list[float]] = {}
        images: dict[str, list[float]] = {}
        seen: set[Path] = set()
        for folder in folders:
            if not Path(folder).is_dir():
                continue
            for card_file in Path(folder).rglob(RunFolder.CARD):
                if card_file.resolve() in seen or card_file.parent.name.startswith("."):
                    continue  # a copy left half-way by a killed collect (.seed0.*) is no second run
                seen.add(card_file.resolve())
                try:
                    model = json.loads(card_file.read_text())["model"]
                    rows = [r for r in read_metrics_or_empty(card_file.parent) if r.get("images_per_s")]
                except (OSError, ValueError, KeyError, TypeError, UserError):  # no estimate from a damaged run
                    continue
                if rows:
                    speeds.setdefault(model, []).append(statistics.median(r["images_per_s"] for r in rows))
                    images.setdefault(model, []).append(
                        statistics.median(r["images_per_s"] * r["epoch_time"] for r in rows if r.get("epoch_time"))
                    )
        return cls(
            {m: statistics.median(v) for m, v in speeds.items()},
            {m: statistics.median(v) for m, v in images.items() if v},
        )

    def workload(self, model: str, config: dict) -> tuple:
        """Everything an estimate reads of a cell: ``(model, epochs, train_subset, FLOPs inputs)``. Cells
        of equal workloads get equal estimates (:meth:`seconds_of`): a study's seeds and arms mostly do."""
        data = config.get("data", {})
        return model, int(config.get("train", {}).get("epochs", 1)), data.get("train_subset"), _flops_inputs(config)

    def images_per_second(self, model: str, config: dict) -> tuple[float, str]:
        """``(training images per second, where the estimate comes from)``."""
        return self._images_per_second(model, _flops_inputs(config))

    def _images_per_second(self, model: str, inputs: tuple | None) -> tuple[float, str]:
        # Remembered per model and FLOPs inputs: a progress line estimates every queued cell, and a
        # model without runs costs a FLOPs lookup per finished model (speed only changes by assignment).
        if self._speeds_of != self.speed:
            self._speeds, self._speeds_of = {}, dict(self.speed)
        key = (model, inputs)
        if key not in self._speeds:
            self._speeds[key] = self._estimate_speed(model, inputs)
        return self._speeds[key]

    def _estimate_speed(self, model: str, inputs: tuple | None) -> tuple[float, str]:
        if model in self.speed:
            return self.speed[model], "finished runs of the model"
        flops = None if inputs is None else _flops(model, *inputs)
        known = {m: f for m in self.speed if (f := None if inputs is None else _flops(m, *inputs))}
        if flops and known:
            nearest = min(known, key=lambda m: abs(math.log(known[m] / flops)))
            return self.speed[nearest] * known[nearest] / flops, f"finished runs of {nearest}, scaled by FLOPs"
        default = flops_per_image(DEFAULT_MODEL, {"data": {"name": DEFAULT_DATA}})
        if flops and default:
            return (
                DEFAULT_IMAGES_PER_S * default / flops,
                f"default guess, {DEFAULT_IMAGES_PER_S:g} img/s for {DEFAULT_MODEL} on {DEFAULT_DATA}, scaled by FLOPs",
            )
        return DEFAULT_IMAGES_PER_S, f"default guess, {DEFAULT_IMAGES_PER_S:g} img/s"

    def epoch_seconds(self, model: str, config: dict) -> tuple[float, str]:
        """``(estimated wall seconds per epoch, where the estimate comes from)``."""
        return self._epoch_seconds(model, config.get("data", {}).get("train_subset"), _flops_inputs(config))

    def _epoch_seconds(self, model: str, subset: int | None, inputs: tuple | None) -> tuple[float, str]:
        if self.measured.get(model):
            return statistics.median(self.measured[model]), "measured here"
        images = subset or self.images.get(model, DEFAULT_TRAIN_IMAGES)
        speed, source = self._images_per_second(model, inputs)
        return images / speed * WALL_PER_TRAIN_TIME, source

    def seconds(self, model: str, config: dict, done_epochs: int = 0) -> tuple[float, str]:
        """``(estimated wall seconds of the epochs after ``done_epochs``, where the estimate comes from)``."""
        return self.seconds_of(self.workload(model, config), done_epochs)

    def seconds_of(self, workload: tuple, done_epochs: int = 0) -> tuple[float, str]:
        """:meth:`seconds` of a cell of this :meth:`workload`."""
        model, epochs, subset, inputs = workload
        per_epoch, source = self._epoch_seconds(model, subset, inputs)
        return per_epoch * max(0, epochs - done_epochs), source

    def record(self, model: str, seconds: float, epochs: int) -> None:
        if epochs > 0:
            self.measured.setdefault(model, []).append(seconds / epochs)


def format_hours(seconds: float) -> str:
    """``42 min`` under an hour, else ``3.5 h``."""
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# GPU-hours from a stated throughput (cells that run as multi-GPU jobs, e.g. the imagenet_paper study)

#: Training images per second per GPU, ASSUMED (nothing here has run on a GPU yet): an A100-class GPU,
#: bf16 autocast and channels_last (``train.amp`` and ``train.channels_last`` ``auto`` on CUDA), a full
#: GPU (batch >= 256 per GPU) and data loading that keeps up. resnet50: 2600, timm's ``benchmark.py``
#: on an A100 with AMP and channels_last (https://github.com/huggingface/pytorch-image-models/issues/1491); the other two
#: scaled by their speed relative to resnet50 in timm's training benchmark (RTX 3090, AMP, NHWC:
#: resnet50 1218, resnext50_32x4d 1001, seresnet50 972 img/s; results/benchmark-train-amp-nhwc-pt112-
#: cu113-rtx3090.csv). Optimistic for the ImageNet recipes' global batch 256 on 8 GPUs (32 per GPU)
#: and for a step policy's overhead (tsc: 1.14x the ops of none on resnet50, BENCHMARKS.md). Replace
#: with a measured figure: ``benchmarks/gpu.sh`` measures resnet50's images/s at batch 256.
GPU_IMAGES_PER_S: dict[str, float] = {"resnet50": 2600.0, "resnext50_32x4d": 2140.0, "seresnet50": 2070.0}
#: Evaluation images per second relative to training: a training step is a forward and a backward pass,
#: about 3x the FLOPs of the forward pass that evaluates.
EVAL_SPEEDUP = 3.0
#: The image folder a GPU estimate takes ``data.name=imagefolder`` to be: ImageNet-1k (ILSVRC-2012).
IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES = 1_281_167, 50_000


@dataclass(frozen=True)
class GpuCost:
    """A cell's cost on GPUs from a stated throughput (see :func:`gpu_cost`)."""

    gpu_hours: float  #: GPU-hours of the whole run (training and every evaluation)
    gpus: int  #: GPUs of its job
    images_per_s: float  #: the stated training images per second per GPU it assumes

    @property
    def wall_hours(self) -> float:
        """The hours the job runs, its GPU-hours shared by its GPUs (DDP taken to scale linearly)."""
        return self.gpu_hours / self.gpus


def split_sizes(config: dict) -> tuple[int, int] | None:
    """``(training images, evaluation images)`` of a recipe: its subsets, else ImageNet-1k's for an
    image folder; ``None`` for other data without subsets (no stated size)."""
    data = config.get("data", {})
    if data.get("train_subset") and data.get("test_subset"):
        return int(data["train_subset"]), int(data["test_subset"])
    if str(data.get("name", "")).lower().replace("-", "").replace("_", "") != "imagefolder":
        return None
    return int(data.get("train_subset") or IMAGENET_TRAIN_IMAGES), int(data.get("test_subset") or IMAGENET_VAL_IMAGES)


def gpu_cost(model: str, config: dict, gpus: int, images_per_s: dict[str, float] | None = None) -> GpuCost | None:
    """GPU-hours of one cell on ``gpus`` GPUs from the stated training throughput of ``model``
    (``images_per_s``, default :data:`GPU_IMAGES_PER_S`):

        (epochs × train images / S + evaluated epochs × eval images / (EVAL_SPEEDUP × S)) / 3600,

    S the images per second per GPU. ``None`` without GPUs, without a stated figure for the model, or
    for data of no known size (:func:`split_sizes`)."""
    from ..train.config import evaluated_epochs

    speed = (GPU_IMAGES_PER_S if images_per_s is None else images_per_s).get(model)
    sizes = split_sizes(config)
    if gpus < 1 or not speed or sizes is None:
        return None
    train, val = sizes
    epochs = int(config.get("train", {}).get("epochs", 1))
    evaluations = len(
        evaluated_epochs({"train": {"epochs": epochs, "eval_epochs": config.get("train", {}).get("eval_epochs")}})
    )
    seconds = epochs * train / speed + evaluations * val / (EVAL_SPEEDUP * speed)
    return GpuCost(seconds / 3600.0, gpus, float(speed))
