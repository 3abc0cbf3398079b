"""The training engine: ``fit(config, out_dir)`` trains one model/policy pair and writes a run folder.

One CPU, one GPU or many (``torchrun --nproc_per_node=N -m tscnet.cli train ...``: DDP over gloo
on CPU, nccl on GPU; ``data.batch_size`` is the global batch; rank 0 writes). Each epoch ends with
an atomic checkpoint, so ``resume=True`` continues a killed run exactly (on CPU, bit for bit).
SIGTERM/SIGINT, or ``train.checkpoint_every``, write a mid-epoch checkpoint that ``resume`` continues
from the next step (:mod:`.preemption`); a signal during the evaluation stops it within a batch, and
``resume`` redoes it. ``train.log=tensorboard`` adds live monitoring (:mod:`.monitor`).

The host reads the device every 20 steps (and at the steps of ``train.loss_steps``): there it
checks the loss, and a run whose loss became NaN or infinite stops with the global step at which
it did (found from the last 20 losses, kept on the device), keeps its last finite checkpoint and
writes ``diverged.json``. ``platform.json`` records where the run ran (:mod:`.machine`).
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import DatasetInfo, create_loaders
from ..data.loader import BatchLoader
from ..errors import UserError
from ..formats import stamped
from ..jobs.run_folder import HOLDS_A_RUN, RunFolder
from ..stepping import step_sizes
from ..stepping.profile import profile_dict
from . import machine
from . import run as runfiles
from .config import dump_config, evaluated_epochs, validate_config
from .console import EpochLog
from .distributed import Context, cleanup, setup
from .metrics import MetricSums, evaluate
from .monitor import check_log_setting, open_monitor
from .optim import build_optimizer, build_scheduler
from .preemption import CheckpointClock, StopRequest, TrainingStopped, inject_signal


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept.

    ``details``: where (``step`` global from 1, ``epoch`` and ``batch`` from 1) and the ``loss``.
    """

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


DIVERGED_FILE = runfiles.DIVERGED_FILE
SYNC_EVERY = 20  #: steps between host reads of the device: the loss check, the bar, the loss window
EVAL_POLL_EVERY = 5  # evaluation batches between the ranks' agreement on a stop (torchrun only)


_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def _amp_dtype(setting: str | bool, device: torch.device) -> torch.dtype | None:
    """``auto`` is bf16 autocast on CUDA and full fp32 elsewhere."""
    if setting is False:  # YAML 1.1 reads an unquoted ``off`` (``amp: off``, ``--set train.amp=off``) as false
        setting = "off"
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if setting not in _AMP:
        raise UserError(f"train.amp must be one of auto, {', '.join(_AMP)}; got {setting!r}")
    return _AMP[setting]


def _use_channels_last(setting, model: nn.Module, device: torch.device) -> bool:
    """``auto``: channels_last for convolutional (4-D image) models on CUDA and on CPU.

    On CPU oneDNN's NHWC convolutions beat NCHW. Measured on the 2-core AMD EPYC of the dev
    machines (torch 2.14, Fashion-MNIST 28x28, batch 128, eager, interleaved, medians of 12 train
    steps): ResNet-20 fp32 1 thread 211 -> 178 ms (1.19x), 2 threads 113 -> 96 ms (1.18x); bf16
    autocast 1 thread 138 -> 125 ms (1.10x), 2 threads 88 -> 76 ms (1.15x); ResNet-56 fp32
    628 -> 527 ms (1.19x), bf16 379 -> 332 ms (1.14x). Whole ``tscnet train`` epochs (ResNet-20,
    4000 images, 2 threads, medians of 5 interleaved runs; ``python benchmarks/channels_last.py
    [--amp bf16]``, results in benchmarks/results/channels_last*.json): fp32 1017 -> 1324 img/s
    (1.30x), bf16 1557 -> 1801 img/s (1.16x).
    """
    if setting == "auto":
        return device.type in ("cuda", "cpu") and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if isinstance(setting, bool):
        return setting
    raise UserError(f"train.channels_last must be auto, true or false; got {setting!r}")


def _compile_backend(setting) -> str | None:
    """``train.compile``: false (eager), true (the default ``inductor`` backend) or a backend name.

    ``aot_eager`` traces forward and backward like ``inductor`` (the same graphs, graph breaks and
    recompiles) but runs them with eager kernels, with no C++/Triton code generation: it compiles
    in seconds on a CPU (``cifar_resnet8``: ~1.5 s against ~16 s per graph for ``inductor``), so
    it checks a model is compile-safe where ``inductor`` would be too slow to try.
    """
    if setting is False or setting is None:
        return None
    backend = "inductor" if setting is True else str(setting)
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        names = ", ".join(sorted({*torch._dynamo.list_backends(), "aot_eager", "eager"}))
        raise UserError(
            f"train.compile must be true (inductor), false or a torch.compile backend ({names}); got {setting!r}"
        )
    return backend


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _prepare_out_dir(out_dir: Path, config: dict, resume: bool) -> None:
    if resume:
        runfiles.require_run(out_dir)
        return
    if (out_dir / runfiles.CONFIG_FILE).exists():
        raise UserError(f"{out_dir} {HOLDS_A_RUN}; pass --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_write_bytes(out_dir / runfiles.CONFIG_FILE, dump_config(config).encode())


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    runfiles.atomic_write_bytes(out_dir / runfiles.METRICS_FILE, text.encode())


class RecentLosses:
    """The training loss of the last :data:`SYNC_EVERY` steps, on the device: one slot written per
    step (no host sync). Read at the sync points when the loss sum turned non-finite (which step
    did it first), and at the steps of ``train.loss_steps`` (the mean of the 20 steps ending there).
    Saved with every checkpoint, since a window can span epochs and a resume."""

    def __init__(self, device: torch.device, saved: torch.Tensor | None = None) -> None:
        self.values = (
            torch.full((SYNC_EVERY,), math.nan, device=device)
            if saved is None
            else saved.to(device=device, dtype=torch.float32)
        )

    def record(self, step: int, loss: torch.Tensor) -> None:
        self.values[(step - 1) % SYNC_EVERY] = loss.detach()

    def mean(self, step: int, ctx: Context) -> float | None:
        """The mean loss of steps ``max(1, step - 19) .. step`` over all ranks (None if not finite)."""
        n = min(step, SYNC_EVERY)
        total = self.values[:n].double().sum()  # slots 0..n-1 are exactly those steps
        if ctx.world_size > 1:
            torch.distributed.all_reduce(total)
        value = float(total) / (n * ctx.world_size)
        return value if math.isfinite(value) else None

    def first(self, step: int) -> float | None:
        """This rank's loss at step 1 while ``step`` (the latest step recorded) has not yet overwritten
        its slot, else None: the loss at initialisation, which the divergence message reads."""
        return float(self.values[0]) if step <= SYNC_EVERY else None

    def first_bad(self, after: int, upto: int, ctx: Context, finite: bool) -> tuple[int, float] | None:
        """``(step, loss)`` of the first step in ``after+1 .. upto`` (at most 20 steps) whose loss was
        not finite on some rank, with that step's mean loss over the ranks; None if every loss was
        finite. ``finite``: this rank's running sum is (all ranks call this together)."""
        values = None if finite else self.values.tolist()
        bad = next(
            (
                s
                for s in range(after + 1, upto + 1)
                if values is not None and not math.isfinite(values[(s - 1) % SYNC_EVERY])
            ),
            None,
        )
        if ctx.world_size > 1:  # the ranks agree on the step and average its loss
            agreed = torch.tensor([upto + 1 if bad is None else bad], device=self.values.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            bad = None if int(agreed) > upto else int(agreed)
            if bad is None:
                return None
            loss = self.values[(bad - 1) % SYNC_EVERY].double().clone()
            torch.distributed.all_reduce(loss)
            return bad, float(loss) / ctx.world_size
        if bad is None:
            if not finite:  # the float64 sum overflowed on finite losses: call it the last step
                return upto, math.inf
            return None
        return bad, cast(list[float], values)[(bad - 1) % SYNC_EVERY]  # not None: a bad step was read from it


@dataclass
class EpochProgress:
    """How far an epoch got: batches done, every rank's running metric sums, images, seconds."""

    batch: int = 0
    sums: torch.Tensor | None = None  # this rank's MetricSums.state() (all ranks' in a checkpoint)
    seen: int = 0
    elapsed: float = 0.0
    loss_at_step: dict = field(default_factory=dict)  # the epoch's train.loss_steps values so far
    trained: dict | None = None  # the epoch's training metrics: trained whole, stopped in its evaluation

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "sums": self.sums,
            "seen": self.seen,
            "elapsed": self.elapsed,
            "loss_at_step": self.loss_at_step,
            "trained": self.trained,
        }

    @classmethod
    def for_rank(cls, saved: dict | None, rank: int) -> EpochProgress:
        if not saved:
            return cls()
        sums = None if saved["sums"] is None else saved["sums"][rank]
        return cls(
            int(saved["batch"]),
            sums,
            int(saved["seen"]),
            float(saved["elapsed"]),
            dict(saved.get("loss_at_step") or {}),
            saved.get("trained"),
        )


def _finite(model: nn.Module, optimizer, ctx: Context) -> bool:
    """Whether every weight, buffer and optimizer state is finite (on every rank; one host sync)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    tensors += [
        t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.is_floating_point()
    ]
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float() if tensors else torch.ones(())
    ok = ok.to(ctx.device).reshape(1)
    if ctx.world_size > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok)


def _gathered(sums: MetricSums, ctx: Context) -> torch.Tensor:
    """Every rank's metric sums, one row per rank (each rank resumes its own)."""
    return _rows(sums.state(), ctx)


def _rows(state: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Every rank's ``state``, one row per rank, on the CPU (a collective under torchrun)."""
    state = state.to(ctx.device)
    if ctx.world_size == 1:
        return state.cpu().unsqueeze(0)
    rows = [torch.empty_like(state) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(rows, state)
    return torch.stack(rows).cpu()


def _finish(
    out_dir: Path,
    model: nn.Module,
    config: dict,
    history: list[dict],
    processes: int = 1,
    platforms: list | None = None,
) -> None:
    try:
        folded = runfiles.save_folded(
            model, out_dir / runfiles.FOLDED_FILE, {"model": config["model"]["name"], "steps": config["model"]["steps"]}
        )
    except ValueError as error:  # a gate that mixes channels (ECA): the trained run stays complete, unfolded
        folded = None
        warnings.warn(
            f"no {runfiles.FOLDED_FILE}: {error}; {runfiles.CHECKPOINT_FILE} holds the trained model with its steps",
            stacklevel=2,
        )
    card = stamped(
        {
            "model": config["model"]["name"],
            "steps": str(config["model"]["steps"]),
            "data": config["data"]["name"],
            "num_classes": config["model"]["num_classes"],
            "in_chans": config["model"]["in_chans"],
            "epochs": len(history),
            "final": {
                k: history[-1][k]
                for k in ("test_top1", "test_top5", "test_error", "test_loss", "train_loss", "evolution_time")
            },
            "params_train": sum(p.numel() for p in model.parameters()),
            "params_folded": None if folded is None else sum(p.numel() for p in folded.parameters()),
            "folded_weights": None if folded is None else runfiles.FOLDED_FILE,
            "step_profile": RunFolder.STEPS,
            "commit": _git_commit(),
            "processes": processes,  # > 1: every epoch ended with the ranks' weights checked equal
            "platform": platforms or [],  # where it ran: platform.json (tscnet.train.machine)
        }
    )
    # The final Δt of every block and channel, full float precision: `profile:RUN` trains with it frozen.
    profile = profile_dict(step_sizes(model), config["model"]["name"], str(config["model"]["steps"]))
    runfiles.atomic_write_bytes(RunFolder(out_dir).steps_file, (json.dumps(profile) + "\n").encode())
    runfiles.atomic_write_bytes(out_dir / runfiles.CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())


def _loaders(config: dict, ctx: Context) -> tuple[BatchLoader, BatchLoader, DatasetInfo]:
    """``(train, test, info)`` of the config's ``data:`` section, sharded for this rank (``data.batch_size`` is global)."""
    dc = config["data"]
    if dc["batch_size"] % ctx.world_size:
        raise UserError(f"data.batch_size {dc['batch_size']} is not divisible by the {ctx.world_size} processes")
    return create_loaders(
        dc["name"],
        dc["data_dir"],
        batch_size=dc["batch_size"] // ctx.world_size,
        device=ctx.device,
        seed=config["train"]["seed"],
        train_subset=dc["train_subset"],
        augment=dc["augment"],
        rank=ctx.rank,
        world_size=ctx.world_size,
        workers=dc["workers"],
        eval_batch_size=dc["eval_batch_size"],
        image_size=dc["image_size"],
        test_subset=dc["test_subset"],
        download=dc["download"],
    )


def fit(config: dict, out_dir, resume: bool = False) -> list[dict]:
    """Train ``config`` into run folder ``out_dir``; returns the per-epoch metrics.

    The run folder is locked while it trains (:class:`tscnet.jobs.run_folder.RunFolder`): a second
    process training into it (a second study, a manual ``--resume`` beside a requeued job) is
    refused in one line naming the holder; a lock whose process is gone is taken over with a warning.
    """
    out_dir = Path(out_dir)
    if resume:
        config = runfiles.read_config(runfiles.require_run(out_dir))
    validate_config(config)  # a dict built in Python gets the CLI's range checks, before anything is written
    ctx = setup(config["train"]["device"])
    try:
        if ctx.rank != 0:  # one lock per run: the first process holds it for all of them
            return Trainer(config, out_dir, resume, ctx).run()
        with RunFolder(out_dir).lock(say=lambda message: warnings.warn(message, stacklevel=2)):
            return Trainer(config, out_dir, resume, ctx).run()
    finally:
        cleanup(ctx)


@dataclass
class _Epoch:
    """The running state of one training epoch: metric sums, the loss windows so far, the bar, images
    seen and since when, and the last global step whose loss was checked finite."""

    sums: MetricSums
    loss_at: dict
    log: EpochLog
    begin: float
    seen: int
    checked: int
    epoch: int  # from 0
    first_step: int  # global steps before the epoch
    desc: str


class Trainer:
    """One training run: its data, model, optimizer, schedule and run folder, and how far it got.

    Built from a validated config (``resume``: continuing the checkpoint in ``out_dir``); :meth:`run`
    trains the epochs left and returns the per-epoch metrics. The order in which the constructor
    builds things (loaders, model, optimizer, ...) is the order that draws from the seeded random
    generator: changing it changes the run.
    """

    def __init__(self, config: dict, out_dir: Path, resume: bool, ctx: Context) -> None:
        tc = config["train"]
        self.config, self.out_dir, self.ctx = config, out_dir, ctx
        torch.manual_seed(tc["seed"])
        self.train_loader, self.test_loader, info = _loaders(config, ctx)
        config["model"]["num_classes"] = config["model"]["num_classes"] or info.num_classes
        config["model"]["in_chans"] = config["model"]["in_chans"] or info.in_chans
        model = runfiles.build_model_from_config(config).to(ctx.device)
        self.amp_dtype = _amp_dtype(tc["amp"], ctx.device)
        self.channels_last = _use_channels_last(tc["channels_last"], model, ctx.device)
        backend = _compile_backend(tc["compile"])
        self.clock = CheckpointClock(tc["checkpoint_every"])
        check_log_setting(tc["log"])
        if ctx.is_main:  # after every setting is checked: a refused config leaves no run folder behind
            _prepare_out_dir(out_dir, config, resume)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.epochs = int(tc["epochs"])
        self.optimizer = build_optimizer(model, config["optim"])
        self.scheduler = build_scheduler(self.optimizer, config["sched"], self.epochs, len(self.train_loader))
        # bf16 has fp32's exponent range and needs no loss scaling; fp16 does.
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.history: list[dict] = []
        self.start_epoch, self.progress = 0, EpochProgress()
        self.ckpt_path = out_dir / runfiles.CHECKPOINT_FILE
        self.recent = RecentLosses(ctx.device)
        self.kept = "no checkpoint was written"  # what a divergence leaves behind
        if resume and self.ckpt_path.exists():
            self._load_checkpoint()
        self.steps_per_epoch = len(self.train_loader)
        self.platforms: list[dict] = []
        if ctx.is_main:
            self.platforms = machine.record(
                out_dir,
                machine.describe(ctx.device, ctx.world_size),
                self.start_epoch * self.steps_per_epoch + self.progress.batch,
                self.start_epoch,
            )
        self.loss_steps = set(tc["loss_steps"])
        self.eval_epochs = evaluated_epochs(config)
        self.eval_batches = _fewest(len(self.test_loader), ctx)
        self.train_model = ctx.wrap(model)
        if backend is not None:
            self.train_model = cast(nn.Module, torch.compile(self.train_model, backend=backend))  # an OptimizedModule
        self.monitor = open_monitor(tc["log"], out_dir, ctx.is_main)
        self.stop: StopRequest | None = None

    def _load_checkpoint(self) -> None:
        """Continue from the run folder's checkpoint: weights, optimizer, schedule, scaler, RNG, progress."""
        ctx = self.ctx
        ckpt = runfiles.load_checkpoint(self.ckpt_path, map_location=ctx.device)
        runfiles.check_checkpoint_matches(ckpt, self.config, self.ckpt_path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        self.start_epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])
        self.progress = EpochProgress.for_rank(ckpt.get("progress"), ctx.rank)  # a mid-epoch checkpoint
        if ckpt.get("recent_losses") is not None:  # else a checkpoint from before: windows across it are null
            self.recent = RecentLosses(ctx.device, ckpt["recent_losses"][ctx.rank])
        self.kept = _kept(self.ckpt_path, self.start_epoch, self.progress.batch)
        if ctx.is_main:  # drop lines of an epoch that was cut off after its metrics were written
            _write_metrics(self.out_dir, self.history)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        """Train the epochs left; returns the per-epoch metrics (the run folder is written as it goes)."""
        with StopRequest() as stop, self.monitor or contextlib.nullcontext():
            self.stop = stop
            for epoch in range(self.start_epoch, self.epochs):
                self.run_epoch(epoch)
        if self.ctx.is_main and self.history:
            _finish(self.out_dir, self.model, self.config, self.history, self.ctx.world_size, self.platforms)
        return self.history

    def run_epoch(self, epoch: int) -> None:
        """Train epoch ``epoch`` (from 0), evaluate it if due, then checkpoint it and record its metrics."""
        self.train_loader.set_epoch(epoch, self.progress.batch)
        row = {"epoch": epoch + 1}
        try:
            trained = self._trained(epoch)
            row.update(trained)
            tested = self._tested(epoch, trained)
            row.update(tested)
            if tested and not math.isfinite(row["test_loss"]):
                step = (epoch + 1) * self.steps_per_epoch
                raise TrainingDiverged(
                    f"test loss became {row['test_loss']:.4g} after epoch {epoch + 1}/{self.epochs} (step {step})",
                    {
                        "step": step,
                        "batch": self.steps_per_epoch,
                        "loss": row["test_loss"],
                        "loss_at_step": trained["loss_at_step"],
                    },
                )
        except TrainingDiverged as error:
            _diverged(
                self.out_dir, error, epoch + 1, self.history, self.kept, self.ctx, self.config["model"]["num_classes"]
            )
        self._end_epoch(epoch, row)

    def _trained(self, epoch: int) -> dict:
        """Epoch ``epoch``'s training metrics: trained now, or (stopped during its evaluation) from the checkpoint."""
        trained: dict | None
        if self.progress.trained is not None:  # stopped during this epoch's evaluation: trained already
            trained = self.progress.trained
        else:
            with warnings.catch_warnings():
                if self.scaler.is_enabled():  # the scaler skipped the first step (overflow): expected, not a bug
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                trained = self.train_epoch(epoch, self.progress)
        self.progress = EpochProgress()
        if trained is None:
            raise TrainingStopped(self._stopped(f"during epoch {epoch + 1}"))
        return trained

    def _tested(self, epoch: int, trained: dict) -> dict:
        """Epoch ``epoch``'s test metrics (``{}`` when ``train.eval_epochs`` skips it)."""
        if epoch + 1 not in self.eval_epochs:  # its row has no test_*
            return {}
        inject_signal("eval", epoch + 1)
        tested = evaluate(
            self.train_model,
            self.test_loader,
            self.ctx.device,
            self.amp_dtype,
            self.channels_last,
            stop=lambda k: self._eval_stop(epoch, k),
        )
        if tested is None:  # a signal: keep the trained epoch, redo its evaluation on resume
            self.save_midway(epoch, EpochProgress(self.steps_per_epoch, None, 0, 0.0, trained["loss_at_step"], trained))
            raise TrainingStopped(self._stopped(f"during the evaluation of epoch {epoch + 1}"))
        return tested

    def _end_epoch(self, epoch: int, row: dict) -> None:
        """Record epoch ``epoch``: its Δt and T, the checkpoint, the metrics line; stop for a signal."""
        ctx, model = self.ctx, self.model
        ctx.check_in_sync(model, epoch + 1)
        dt_mean = [float(s.mean()) for s in step_sizes(model)]
        row.update(
            lr=self.scheduler.get_last_lr()[0], evolution_time=sum(dt_mean), dt_mean=dt_mean
        )  # T = Σ_d mean_c Δt_d
        self.history.append(row)
        inject_signal("save", epoch + 1)
        rows = _rows(self.recent.values, ctx)
        if ctx.is_main:
            runfiles.atomic_save(self._checkpoint(epoch + 1, rows), self.ckpt_path)
            _write_metrics(self.out_dir, self.history)
            tqdm.write(_epoch_line(row, self.epochs))
        self.kept = _kept(self.ckpt_path, epoch + 1)
        if self.monitor is not None:
            self.monitor.epoch(row, step_sizes(model))
        if epoch + 1 < self.epochs and self._stop_request.requested(ctx.device):  # a signal during the checkpoint
            raise TrainingStopped(self._stopped(f"after epoch {epoch + 1}"))

    def save_midway(self, epoch: int, now: EpochProgress) -> None:
        """A checkpoint inside epoch ``epoch + 1`` (every rank calls it: the loss windows are gathered)."""
        rows = _rows(self.recent.values, self.ctx)
        if self.ctx.is_main:
            runfiles.atomic_save(self._checkpoint(epoch, rows, now), self.ckpt_path)
        self.kept = _kept(self.ckpt_path, epoch, now.batch)

    def _checkpoint(self, epoch: int, recent: torch.Tensor, progress: EpochProgress | None = None) -> dict:
        """The checkpoint after ``epoch`` epochs; ``progress``: how far the next one got (a mid-epoch
        checkpoint); ``recent``: every rank's last 20 losses (:class:`RecentLosses`, one row per rank)."""
        config = self.config
        return stamped(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),  # {} unless train.amp is fp16
                "epoch": epoch,
                "history": self.history,
                "config": config,
                "model_name": config["model"]["name"],
                "steps": str(config["model"]["steps"]),
                "torch_rng": torch.get_rng_state(),
                "progress": None if progress is None else progress.to_dict(),
                "recent_losses": recent,
            }
        )

    def _eval_stop(self, epoch: int, k: int) -> bool:
        """After ``k`` evaluation batches: stop for a signal? (ranks agree every few batches)"""
        inject_signal("eval", f"{epoch + 1}.{k}")
        if self.ctx.world_size == 1:
            return self._stop_request.signum is not None
        return k % EVAL_POLL_EVERY == 0 and k <= self.eval_batches and self._stop_request.requested(self.ctx.device)

    @property
    def _stop_request(self) -> StopRequest:
        """The signal catcher :meth:`run` installed (``self.stop``; the epoch's methods run inside it)."""
        return cast(StopRequest, self.stop)

    def _stopped(self, where: str) -> str:
        return _stopped(self._stop_request, where, self.ckpt_path, self.out_dir)

    # -- one epoch -----------------------------------------------------------------------------

    def train_epoch(self, epoch: int, start: EpochProgress) -> dict | None:
        """Train epoch ``epoch`` from ``start`` (batch 0, or where a mid-epoch checkpoint left it).

        Returns the epoch's metrics, or ``None`` when a signal stopped it mid-way (after a mid-epoch
        checkpoint). Raises :class:`TrainingDiverged` at the first sync point after the loss became
        non-finite.
        """
        ctx, loader = self.ctx, self.train_loader
        self.train_model.train()
        sums = MetricSums(ctx.device)
        if start.sums is not None:
            sums.load_state(start.sums)
        first_step = epoch * self.steps_per_epoch
        desc = f"epoch {epoch + 1}/{self.epochs}"
        state = _Epoch(
            sums,
            dict(start.loss_at_step),
            EpochLog(len(loader), start.batch, desc, self.config["train"]["progress"] and ctx.is_main),
            time.perf_counter() - start.elapsed,
            start.seen,
            first_step + start.batch,
            epoch,
            first_step,
            desc,
        )
        for i, (images, target) in enumerate(loader, start=start.batch):
            if not self._train_step(state, i, images, target):
                state.log.close()
                return None
        state.log.close()
        elapsed = time.perf_counter() - state.begin
        sums.reduce()
        m = sums.compute()
        return {
            "train_loss": m["loss"],
            "train_acc": m["top1"],
            "epoch_time": elapsed,
            "images_per_s": state.seen / elapsed,
            "loss_at_step": state.loss_at,
        }

    def _train_step(self, state: _Epoch, i: int, images: torch.Tensor, target: torch.Tensor) -> bool:
        """One optimizer step on batch ``i`` of the epoch; ``False`` when a signal stops the epoch here."""
        ctx, scheduler, loader = self.ctx, self.scheduler, self.train_loader
        step = state.first_step + i + 1
        images = images.to(ctx.device, non_blocking=True)
        target = target.to(ctx.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_model(images)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.config["optim"]["label_smoothing"])
        self.optimizer.zero_grad(set_to_none=True)
        # fp16 only: the loss is scaled so small gradients do not underflow; a step whose
        # gradients overflow is skipped and the scale halved. The schedule advances regardless
        # (it counts iterations). Disabled, the scaler is a pass-through.
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        scheduler.step()
        state.sums.update(logits.float(), target, loss)
        self.recent.record(step, loss)
        state.seen += target.numel() * ctx.world_size
        if step in self.loss_steps:  # a host read at these steps only
            state.loss_at[str(step)] = self.recent.mean(step, ctx)
        # Syncing costs on a GPU: check for divergence and refresh the bar every 20 batches.
        if i % SYNC_EVERY == SYNC_EVERY - 1 or i + 1 == len(loader):
            self._check_finite(state, step)
            m = state.sums.compute()
            state.log.sync(i + 1, m["loss"], m["top1"], state.seen, time.perf_counter() - state.begin)
            if self.monitor is not None:
                self.monitor.step(scheduler.last_epoch, m["loss"], m["top1"], scheduler.get_last_lr()[0])
        state.log.advance()
        inject_signal("step", scheduler.last_epoch)
        # Under torchrun agreeing is a collective, and on a GPU its host sync would stall the
        # queue every step: there, ranks agree at the bar's sync points only.
        if ctx.world_size == 1 or ctx.device.type != "cuda" or i % SYNC_EVERY == SYNC_EVERY - 1:
            stopping, due = self._stop_request.poll(ctx.device, self.clock.due(scheduler.last_epoch))
        else:
            stopping = due = False
        if i + 1 < len(loader) and (stopping or due):
            return self._save_midway_step(state, i, step, loss, stopping)
        return True

    def _save_midway_step(self, state: _Epoch, i: int, step: int, loss: torch.Tensor, stopping: bool) -> bool:
        """The mid-epoch checkpoint after batch ``i`` (global ``step``), for a signal (``stopping``) or
        ``train.checkpoint_every``; ``False``: the epoch stops here."""
        if state.checked != step:
            self._check_finite(state, step)
        # A checkpoint holds finite weights only: a step can blow them up with a finite loss (the
        # next loss is then NaN, and the run stops there, keeping the previous checkpoint).
        if not _finite(self.model, self.optimizer, self.ctx):
            if not stopping:
                return True
            state.log.close()
            raise TrainingDiverged(
                f"the weights became non-finite at step {step} ({state.desc}, batch {i + 1}) "
                f"with loss {float(loss):.4g}",
                {"step": step, "batch": i + 1, "loss": float(loss), "loss_at_step": state.loss_at},
            )
        self.save_midway(
            state.epoch,
            EpochProgress(
                i + 1, _gathered(state.sums, self.ctx), state.seen, time.perf_counter() - state.begin, state.loss_at
            ),
        )
        return not stopping

    def _check_finite(self, state: _Epoch, step: int) -> None:
        """Raise if a loss since the last check was not finite (a host sync; every rank calls it)."""
        bad = self.recent.first_bad(state.checked, step, self.ctx, state.sums.loss_is_finite())
        if bad is not None:
            state.log.close()
            at, loss = bad
            details = {"step": at, "batch": at - state.first_step, "loss": loss, "loss_at_step": state.loss_at}
            if (first := self.recent.first(step)) is not None:
                details["first_loss"] = first
            raise TrainingDiverged(
                f"loss became {loss:.4g} at step {at} ({state.desc}, batch {at - state.first_step})", details
            )
        state.checked = step


def _fewest(n: int, ctx: Context) -> int:
    """The smallest ``n`` over the ranks (evaluation shards may differ by a batch)."""
    if ctx.world_size == 1:
        return n
    fewest = torch.tensor([n], device=ctx.device)
    torch.distributed.all_reduce(fewest, op=torch.distributed.ReduceOp.MIN)
    return int(fewest)


def _kept(ckpt_path: Path, epochs_done: int, batch: int = 0) -> str:
    where = f"epoch {epochs_done}" if not batch else f"epoch {epochs_done + 1}, batch {batch}"
    return f"the last good checkpoint ({where}) is kept in {ckpt_path}"


def _divergence_hint(first_loss: float | None, num_classes: int) -> str:
    """What to try next. A first loss far above chance (ln C) means the output at initialisation is
    already huge, e.g. a norm-free ResNet-56 with Δt ≡ 1 (~10³): the damage is done before a lower
    lr or a warm-up acts (BENCHMARKS.md, "Why vanilla cannot start at depth 56")."""
    chance = math.log(num_classes)
    if first_loss is None or (math.isfinite(first_loss) and first_loss <= 10 * chance):
        return "lower optim.lr or add sched.warmup_epochs"
    return (
        f"the loss at step 1 was already {first_loss:.4g} (chance: ln {num_classes} = {chance:.2f}), so the "
        "output at initialisation is too large for a lower optim.lr or a warm-up to help: start from smaller "
        "steps (e.g. model.steps=depth:0.5) or normalise the branches"
    )


def _diverged(
    out_dir: Path, error: TrainingDiverged, epoch: int, history: list[dict], kept: str, ctx: Context, num_classes: int
) -> None:
    """Write ``diverged.json`` and raise the one-line divergence error."""
    details = error.details
    message = f"training diverged: {error}; {kept}; {_divergence_hint(details.get('first_loss'), num_classes)}"
    if ctx.is_main:
        loss_at = {k: v for row in history for k, v in row.get("loss_at_step", {}).items()}
        loss_at.update(details.get("loss_at_step", {}))
        loss = details.get("loss", math.nan)
        record = {
            "step": details.get("step"),
            "epoch": epoch,
            "batch": details.get("batch"),
            "loss": loss if math.isfinite(loss) else str(loss),  # strict JSON has no NaN: "nan", "inf"
            "message": message,
            "loss_at_step": loss_at,
        }
        if "first_loss" in details:
            first = details["first_loss"]
            record["first_loss"] = first if math.isfinite(first) else str(first)
        runfiles.atomic_write_bytes(out_dir / DIVERGED_FILE, (json.dumps(stamped(record), indent=2) + "\n").encode())
    raise TrainingDiverged(message, {**details, "epoch": epoch}) from None


def _stopped(stop: StopRequest, where: str, ckpt_path: Path, out_dir: Path) -> str:
    return (
        f"stopped by {stop.name} {where}; the checkpoint {ckpt_path} holds every finished step; "
        f"continue with: tscnet train --resume --out {out_dir}"
    )


def _epoch_line(row: dict, epochs: int) -> str:
    tested = (
        f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:5.2f}%"
        if "test_loss" in row
        else "test not evaluated (train.eval_epochs)"
    )
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:5.2f}%  "
        f"{tested}  T {row['evolution_time']:.2f}  "
        f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['epoch_time']:.1f}s"
    )
