"""Process context: one device, or one rank of a ``torchrun`` job (DDP: gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass
class Context:
    """This process's place in a run: its device, its rank and the number of processes (1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_in_sync(self, model: nn.Module, epoch: int) -> None:
        """Raise if the ranks' weights differ: DDP keeps them equal by averaging every gradient, so
        a difference means gradients were not synchronised (a wrapping or unused-parameter bug)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            sums = [
                sum(p.double().sum() for p in model.parameters()),
                sum(p.double().square().sum() for p in model.parameters()),
            ]
            mine = torch.stack(cast(list[torch.Tensor], sums)).to(self.device)  # tensors: a model has parameters
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        if any(not torch.equal(other, every[0]) for other in every[1:]):
            raise UserError(
                f"the {self.world_size} processes hold different weights after epoch {epoch}: "
                "gradients were not synchronised"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP when there are several processes (the step policy trains inside it)."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device ``name`` means (``auto``: CUDA where available, else the CPU; a bare ``cuda``: GPU
    ``local_rank``).

    Raises:
        UserError: an unknown name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():  # else a traceback at the first .to(device)
            raise UserError(
                f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def setup(device_name: str) -> Context:
    """Join the ``torchrun`` process group if its environment is set, and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size == 1:
        return Context(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(device, dist.get_rank(), world_size)


def cleanup(ctx: Context) -> None:
    """Leave the process group that :func:`setup` joined (nothing for a single process)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
