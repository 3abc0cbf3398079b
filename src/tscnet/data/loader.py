"""A tensor-resident loader for small in-memory image sets (MNIST, Fashion-MNIST, CIFAR).

The whole uint8 set lives as one tensor on the target device. Per epoch, one generator seeded
by ``(seed, epoch)`` draws the permutation and every sample's augmentation at once, so epoch
``e`` is the same wherever training resumes and on every DDP rank. Batches are cropped, flipped
and normalised as whole-batch tensor ops: no per-sample Python, no worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidValue

__all__ = ["BatchLoader", "TensorLoader", "epoch_seed", "epoch_generator", "crop_flip", "subset_indices"]

Device = str | torch.device


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """One 64-bit seed for ``(seed, epoch)``; SeedSequence mixes the pair so nearby pairs don't collide.
    ``stream`` > 0 gives independent seeds for other uses of the same epoch (0: the shuffle's)."""
    entropy = [seed, epoch, stream] if stream else [seed, epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch)``: the same numbers on every device and rank."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def subset_indices(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """The first ``size`` of a fixed seeded permutation of ``range(n)``: a class-mixed subset.

    The seed is fixed (not the run's seed) so runs with different seeds train on the same subset.
    """
    if not 0 < size <= n:
        raise InvalidValue(f"subset size must be in [1, {n}], got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def crop_flip(
    images: torch.Tensor,
    index: torch.Tensor,
    offsets: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    pad: int = 0,
) -> torch.Tensor:
    """``images[index]`` (N×C×H×W) with per-sample zero-padded random crops and horizontal flips.

    Equivalent to ``RandomCrop(H, padding=pad)`` then ``RandomHorizontalFlip`` on each sample,
    done for the whole batch at once: pad the batch, turn every sample's crop window and flip
    into flat source indices, and ``gather`` once (measured ~2× faster on CPU than 4-way advanced
    indexing or masking out-of-range pixels). ``offsets`` (B×2, rows then columns) lie in ``[0, 2·pad]``.
    """
    if offsets is None:
        pad = 0
    batch = images[index]
    if flip is None and pad == 0:
        return batch
    b, c, h, w = batch.shape
    if pad:
        batch = F.pad(batch, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    dev = batch.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    if pad:
        offsets = cast(torch.Tensor, offsets)  # pad > 0 only with offsets (set to 0 above otherwise)
        rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
    flat = torch.arange(c, device=dev).view(1, c, 1, 1) * (hp * wp) + rows.view(b, 1, h, 1) * wp + cols.view(b, 1, 1, w)
    return batch.view(b, -1).gather(1, flat.view(b, -1)).view(b, c, h, w)


class BatchLoader(Protocol):
    """What :func:`~tscnet.data.registry.create_loaders` returns (a :class:`TensorLoader` or a worker
    ``DataLoader``) and the trainer uses: ``(x, y)`` batches, ``len()`` batches per epoch, seeded epochs."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch`` from batch ``start_batch`` (e.g. when resuming)."""
        ...


class TensorLoader:
    """Iterate ``(x float32 N×C×H×W normalised, y int64)`` batches from an in-memory uint8 set.

    Args:
        images: uint8 N×C×H×W (or N×H×W for gray) tensor or array; moved once to ``device``.
        labels: N class indices.
        batch_size: samples per batch on this rank.
        mean, std: per-channel statistics in [0, 1] pixel units.
        shuffle: permute every epoch (training); ``False`` keeps the stored order (evaluation).
        pad: zero padding of the random crop (0 disables cropping), e.g. 4 for 32×32, 2 for 28×28.
        flip: random horizontal flips.
        drop_last: drop this rank's last incomplete batch.
        seed: base seed; epoch ``e`` is drawn from ``(seed, e)``.
        rank, world_size: DDP sharding; rank ``r`` takes positions ``r, r + W, ...`` of the epoch's
            permutation.
        equal_shards: cut the epoch to a multiple of ``world_size`` so every rank gets the same
            number of samples and batches (needed for training: DDP would hang on an extra batch).
            ``False`` keeps every sample exactly once, as evaluation needs (sum metrics across ranks).
        device: where the data lives and batches are produced.

    Epochs advance by themselves (0, 1, 2, ... for consecutive iterations); call
    :meth:`set_epoch` to resume at a given epoch.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        shuffle: bool = True,
        pad: int = 0,
        flip: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        equal_shards: bool = True,
        device: Device = "cpu",
    ) -> None:
        images = torch.as_tensor(images)
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise InvalidValue(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        c = self.images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} channel values, got {len(mean)}/{len(std)}")
        # (x/255 - mean)/std == x*scale + shift: one multiply-add on the float batch.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) / std_t
        self.batch_size, self.shuffle, self.pad, self.flip = batch_size, shuffle, pad, flip
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        self.equal_shards = equal_shards
        self.epoch = 0
        self._next_epoch = 0
        self._start_batch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = len(self.images)
        if self.equal_shards:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch`` from batch ``start_batch`` (e.g. when resuming)."""
        self._next_epoch, self._start_batch = epoch, start_batch

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's ``(indices, crop offsets, flips)`` for ``epoch``, on the loader's device.

        All random numbers of the epoch are drawn up front for the whole set, before sharding,
        so they depend only on ``(seed, epoch)`` and never on rank, batch size or resume point.
        """
        n = len(self.images)
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g) if self.pad else None
        flips = torch.randint(0, 2, (n,), generator=g).bool() if self.flip else None
        stop = n - n % self.world_size if self.equal_shards else n
        shard = slice(self.rank, stop, self.world_size)
        plan = tuple(None if t is None else t[shard].to(self.device) for t in (order, offsets, flips))
        return cast(tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], plan)  # order is never None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        start, self._start_batch = self._start_batch, 0
        index, offsets, flips = self.epoch_plan(self.epoch)
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = index[sl]
            x = crop_flip(
                self.images,
                idx,
                None if offsets is None else offsets[sl],
                None if flips is None else flips[sl],
                self.pad,
            )
            yield torch.addcmul(self._shift, x.float(), self._scale), self.labels[idx]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={len(self.images)}, shape={tuple(self.images.shape[1:])}, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, pad={self.pad}, flip={self.flip}, "
            f"rank={self.rank}/{self.world_size}, device={self.device})"
        )
