"""The training engine: ``fit(config, out_dir)`` trains one model/policy pair and writes a run folder.

One CPU, one GPU or many (``torchrun --nproc_per_node=N -m tscnet.cli train ...``: DDP over gloo
on CPU, nccl on GPU; ``data.batch_size`` is the global batch; rank 0 writes). Each epoch ends with
an atomic checkpoint, so ``resume=True`` continues a killed run exactly (on CPU, bit for bit).
SIGTERM/SIGINT, or ``train.checkpoint_every``, write a mid-epoch checkpoint that ``resume`` continues
from the next step (:mod:`.preemption`); ``train.log=tensorboard`` adds live monitoring (:mod:`.monitor`).
"""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import create_loaders
from ..errors import UserError
from ..stepping import step_sizes
from ..stepping.profile import PROFILE_FILE, profile_dict
from . import run as runfiles
from .config import dump_config, validate_config
from .distributed import Context, cleanup, setup
from .metrics import MetricSums, evaluate
from .monitor import check_log_setting, open_monitor
from .optim import build_optimizer, build_scheduler
from .preemption import CheckpointClock, StopRequest, TrainingStopped, inject_signal


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def _amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
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


def _compile_backend(setting) -> Optional[str]:
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
        raise UserError(f"train.compile must be true (inductor), false or a torch.compile backend ({names}); "
                        f"got {setting!r}")
    return backend


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _prepare_out_dir(out_dir: Path, config: dict, resume: bool) -> None:
    if resume:
        runfiles.require_run(out_dir)
        return
    if (out_dir / runfiles.CONFIG_FILE).exists():
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_write_bytes(out_dir / runfiles.CONFIG_FILE, dump_config(config).encode())


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    runfiles.atomic_write_bytes(out_dir / runfiles.METRICS_FILE, text.encode())


def _train_epoch(model, loader, optimizer, scheduler, scaler: torch.amp.GradScaler, ctx: Context, amp_dtype,
                 channels_last: bool, label_smoothing: float, desc: str, progress: bool, *, start: "EpochProgress",
                 stop: StopRequest, clock: CheckpointClock, save_midway, monitor=None) -> Optional[dict]:
    """Train one epoch from ``start`` (batch 0, or where a mid-epoch checkpoint left it).

    Returns the epoch's metrics, or ``None`` when a signal stopped it mid-way (after
    ``save_midway(progress)`` wrote the checkpoint).
    """
    model.train()
    sums = MetricSums(ctx.device)
    if start.sums is not None:
        sums.load_state(start.sums)
    bar = tqdm(total=len(loader), initial=start.batch, desc=desc, unit="batch",
               disable=not (progress and ctx.is_main), dynamic_ncols=True, leave=False)
    begin, seen = time.perf_counter() - start.elapsed, start.seen
    for i, (images, target) in enumerate(loader, start=start.batch):
        images = images.to(ctx.device, non_blocking=True)
        target = target.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        # fp16 only: the loss is scaled so small gradients do not underflow; a step whose
        # gradients overflow is skipped and the scale halved. The schedule advances regardless
        # (it counts iterations). Disabled, the scaler is a pass-through.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums.update(logits.float(), target, loss)
        seen += target.numel() * ctx.world_size
        # Syncing costs on a GPU: check for divergence and refresh the bar every 20 batches.
        if i % 20 == 19 or i + 1 == len(loader):
            if not sums.loss_is_finite():
                bar.close()
                raise TrainingDiverged(f"loss became {float(loss):.4g} in {desc}, batch {i + 1}")
            m = sums.compute()
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['top1']:.1f}%",
                            img_s=f"{seen / (time.perf_counter() - begin):.0f}", refresh=False)
            if monitor is not None:
                monitor.step(scheduler.last_epoch, m["loss"], m["top1"], scheduler.get_last_lr()[0])
        bar.update(1)
        inject_signal("step", scheduler.last_epoch)
        # Under torchrun agreeing is a collective, and on a GPU its host sync would stall the
        # queue every step: there, ranks agree at the bar's sync points only.
        if ctx.world_size == 1 or ctx.device.type != "cuda" or i % 20 == 19:
            stopping, due = stop.poll(ctx.device, clock.due(scheduler.last_epoch))
        else:
            stopping = due = False
        if i + 1 < len(loader) and (stopping or due):
            save_midway(EpochProgress(i + 1, _gathered(sums, ctx), seen, time.perf_counter() - begin))
            if stopping:
                bar.close()
                return None
    bar.close()
    elapsed = time.perf_counter() - begin
    sums.reduce()
    m = sums.compute()
    return {"train_loss": m["loss"], "train_acc": m["top1"], "epoch_time": elapsed, "images_per_s": seen / elapsed}


@dataclass
class EpochProgress:
    """How far an epoch got: batches done, every rank's running metric sums, images, seconds."""

    batch: int = 0
    sums: Optional[torch.Tensor] = None  # this rank's MetricSums.state() (all ranks' in a checkpoint)
    seen: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return {"batch": self.batch, "sums": self.sums, "seen": self.seen, "elapsed": self.elapsed}

    @classmethod
    def for_rank(cls, saved: Optional[dict], rank: int) -> "EpochProgress":
        if not saved:
            return cls()
        return cls(int(saved["batch"]), saved["sums"][rank], int(saved["seen"]), float(saved["elapsed"]))


def _gathered(sums: MetricSums, ctx: Context) -> torch.Tensor:
    """Every rank's metric sums, one row per rank (each rank resumes its own)."""
    state = sums.state().to(ctx.device)
    if ctx.world_size == 1:
        return state.cpu().unsqueeze(0)
    rows = [torch.empty_like(state) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(rows, state)
    return torch.stack(rows).cpu()


def _checkpoint(model: nn.Module, optimizer, scheduler, scaler, epoch: int, history: list[dict], config: dict,
                progress: Optional[EpochProgress] = None) -> dict:
    """``epoch`` epochs done; ``progress``: how far the next one got (a mid-epoch checkpoint)."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # {} unless train.amp is fp16
        "epoch": epoch, "history": history, "config": config, "model_name": config["model"]["name"],
        "steps": str(config["model"]["steps"]), "torch_rng": torch.get_rng_state(),
        "progress": None if progress is None else progress.to_dict(),
    }


def _finish(out_dir: Path, model: nn.Module, config: dict, history: list[dict], processes: int = 1) -> None:
    try:
        folded = runfiles.save_folded(model, out_dir / runfiles.FOLDED_FILE,
                                      {"model": config["model"]["name"], "steps": config["model"]["steps"]})
    except ValueError as error:  # a gate that mixes channels (ECA): the trained run stays complete, unfolded
        folded = None
        warnings.warn(f"no {runfiles.FOLDED_FILE}: {error}; {runfiles.CHECKPOINT_FILE} holds the trained model "
                      f"with its steps", stacklevel=2)
    card = {
        "model": config["model"]["name"], "steps": str(config["model"]["steps"]),
        "data": config["data"]["name"], "num_classes": config["model"]["num_classes"],
        "in_chans": config["model"]["in_chans"], "epochs": len(history),
        "final": {k: history[-1][k] for k in ("test_top1", "test_top5", "test_error", "test_loss",
                                              "train_loss", "evolution_time")},
        "params_train": sum(p.numel() for p in model.parameters()),
        "params_folded": None if folded is None else sum(p.numel() for p in folded.parameters()),
        "folded_weights": None if folded is None else runfiles.FOLDED_FILE, "step_profile": PROFILE_FILE, "commit": _git_commit(),
        "processes": processes,  # > 1: every epoch ended with the ranks' weights checked equal
    }
    # The final Δt of every block and channel, full float precision: `profile:RUN` trains with it frozen.
    profile = profile_dict(step_sizes(model), config["model"]["name"], str(config["model"]["steps"]))
    runfiles.atomic_write_bytes(out_dir / PROFILE_FILE, (json.dumps(profile) + "\n").encode())
    runfiles.atomic_write_bytes(out_dir / runfiles.CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())


def fit(config: dict, out_dir, resume: bool = False) -> list[dict]:
    """Train ``config`` into run folder ``out_dir``; returns the per-epoch metrics."""
    out_dir = Path(out_dir)
    if resume:
        config = runfiles.read_config(runfiles.require_run(out_dir))
    validate_config(config)  # a dict built in Python gets the CLI's range checks, before anything is written
    ctx = setup(config["train"]["device"])
    try:
        return _fit(config, out_dir, resume, ctx)
    finally:
        cleanup(ctx)


def _fit(config: dict, out_dir: Path, resume: bool, ctx: Context) -> list[dict]:
    tc, dc = config["train"], config["data"]
    torch.manual_seed(tc["seed"])
    if dc["batch_size"] % ctx.world_size:
        raise UserError(f"data.batch_size {dc['batch_size']} is not divisible by the {ctx.world_size} processes")
    train_loader, test_loader, info = create_loaders(
        dc["name"], dc["data_dir"], batch_size=dc["batch_size"] // ctx.world_size, device=ctx.device,
        seed=tc["seed"], train_subset=dc["train_subset"], augment=dc["augment"], rank=ctx.rank,
        world_size=ctx.world_size, workers=dc["workers"], eval_batch_size=dc["eval_batch_size"],
        image_size=dc["image_size"], test_subset=dc["test_subset"])
    config["model"]["num_classes"] = config["model"]["num_classes"] or info.num_classes
    config["model"]["in_chans"] = config["model"]["in_chans"] or info.in_chans
    model = runfiles.build_model_from_config(config).to(ctx.device)
    amp_dtype = _amp_dtype(tc["amp"], ctx.device)
    channels_last = _use_channels_last(tc["channels_last"], model, ctx.device)
    backend = _compile_backend(tc["compile"])
    clock = CheckpointClock(tc["checkpoint_every"])
    check_log_setting(tc["log"])
    if ctx.is_main:  # after every setting is checked: a refused config leaves no run folder behind
        _prepare_out_dir(out_dir, config, resume)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    epochs = int(tc["epochs"])
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["sched"], epochs, len(train_loader))
    # bf16 has fp32's exponent range and needs no loss scaling; fp16 does.
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    history: list[dict] = []
    start_epoch, progress = 0, EpochProgress()
    ckpt_path = out_dir / runfiles.CHECKPOINT_FILE
    if resume and ckpt_path.exists():
        ckpt = runfiles.load_checkpoint(ckpt_path, map_location=ctx.device)
        runfiles.check_checkpoint_matches(ckpt, config, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        progress = EpochProgress.for_rank(ckpt.get("progress"), ctx.rank)  # a mid-epoch checkpoint
        if ctx.is_main:  # drop lines of an epoch that was cut off after its metrics were written
            _write_metrics(out_dir, history)
    train_model = ctx.wrap(model)
    if backend is not None:
        train_model = torch.compile(train_model, backend=backend)
    monitor = open_monitor(tc["log"], out_dir, ctx.is_main)
    with StopRequest() as stop, monitor or contextlib.nullcontext():
        for epoch in range(start_epoch, epochs):
            train_loader.set_epoch(epoch, progress.batch)
            row = {"epoch": epoch + 1}

            def save_midway(now: EpochProgress, done: int = epoch) -> None:
                if ctx.is_main:
                    runfiles.atomic_save(_checkpoint(model, optimizer, scheduler, scaler, done, history, config, now),
                                         ckpt_path)

            try:
                with warnings.catch_warnings():
                    if scaler.is_enabled():  # the scaler skipped the first step (overflow): expected, not a bug
                        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                    trained = _train_epoch(train_model, train_loader, optimizer, scheduler, scaler, ctx, amp_dtype,
                                           channels_last, config["optim"]["label_smoothing"],
                                           f"epoch {epoch + 1}/{epochs}", tc["progress"], start=progress, stop=stop,
                                           clock=clock, save_midway=save_midway, monitor=monitor)
                progress = EpochProgress()
                if trained is None:
                    raise TrainingStopped(_stopped(stop, f"during epoch {epoch + 1}", ckpt_path, out_dir))
                row.update(trained)
                inject_signal("eval", epoch + 1)
                row.update(evaluate(train_model, test_loader, ctx.device, amp_dtype, channels_last))
                if not math.isfinite(row["test_loss"]):
                    raise TrainingDiverged(f"test loss became {row['test_loss']} after epoch {epoch + 1}")
            except TrainingDiverged as error:
                kept = (f"the last good checkpoint (epoch {history[-1]['epoch']}) is kept in {ckpt_path}" if history
                        else "no checkpoint was written")
                raise TrainingDiverged(f"{error}; {kept}; lower optim.lr or add sched.warmup_epochs") from None
            ctx.check_in_sync(model, epoch + 1)
            dt_mean = [float(s.mean()) for s in step_sizes(model)]
            row.update(lr=scheduler.get_last_lr()[0], evolution_time=sum(dt_mean), dt_mean=dt_mean)  # T = Σ_d mean_c Δt_d
            history.append(row)
            inject_signal("save", epoch + 1)
            if ctx.is_main:
                state = _checkpoint(model, optimizer, scheduler, scaler, epoch + 1, history, config)
                runfiles.atomic_save(state, ckpt_path)
                _write_metrics(out_dir, history)
                tqdm.write(_epoch_line(row, epochs))
            if monitor is not None:
                monitor.epoch(row, step_sizes(model))
            if epoch + 1 < epochs and stop.requested(ctx.device):  # a signal during evaluation or the checkpoint
                raise TrainingStopped(_stopped(stop, f"after epoch {epoch + 1}", ckpt_path, out_dir))
    if ctx.is_main and history:
        _finish(out_dir, model, config, history, ctx.world_size)
    return history


def _stopped(stop: StopRequest, where: str, ckpt_path: Path, out_dir: Path) -> str:
    return (f"stopped by {stop.name} {where}; the checkpoint {ckpt_path} holds every finished step; "
            f"continue with: tscnet train --resume --out {out_dir}")


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:5.2f}%  "
            f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:5.2f}%  T {row['evolution_time']:.2f}  "
            f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['epoch_time']:.1f}s")
