"""ImageNet-style image folders (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``)."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets, transforms

from ..errors import InvalidValue
from .errors import DataFormatError, DataNotFoundError
from .loader import epoch_seed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_transform",
    "build_image_folder",
    "EpochDataLoader",
    "create_folder_loader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  #: ImageNet's per-channel (RGB) mean, of pixel values in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)  #: ImageNet's per-channel (RGB) standard deviation
# Folder names per split: ImageNet's own "val", and "test" for sets that ship one.
_SPLIT_DIRS = {"train": ("train",), "test": ("val", "test")}


def imagenet_transform(
    train: bool,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> transforms.Compose:
    """The standard ImageNet recipe: RandomResizedCrop+flip for training, resize to 8/7 then center crop for eval."""
    if train:
        head = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        # 256/224: the resize ratio of the usual single-crop evaluation.
        head = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*head, transforms.ToTensor(), transforms.Normalize(mean, std)])


def build_image_folder(root: str | Path, split: str = "train", image_size: int = 224) -> datasets.ImageFolder:
    """``torchvision.datasets.ImageFolder`` of ``root/<train|val>`` with the matching ImageNet transform."""
    root = Path(root)
    if split not in _SPLIT_DIRS:
        raise InvalidValue(f"split must be one of {sorted(_SPLIT_DIRS)}, got {split!r}")
    folder = next((root / d for d in _SPLIT_DIRS[split] if (root / d).is_dir()), None)
    if folder is None:
        raise DataNotFoundError(
            f"no {'/'.join(_SPLIT_DIRS[split])} folder in {root}: expected an ImageNet-style "
            f"{root}/{_SPLIT_DIRS[split][0]}/<class>/<image> layout (pass --data-dir)"
        )
    try:
        return datasets.ImageFolder(str(folder), transform=imagenet_transform(split == "train", image_size))
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images
        raise DataFormatError(f"{folder}: not an image folder ({e})") from e


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` whose epochs are seeded like :class:`~tscnet.data.loader.TensorLoader`'s.

    Each iteration reseeds the shuffling generator (which also seeds the workers' augmentation)
    from ``(seed, epoch)`` and forwards the epoch to a ``DistributedSampler``. Epochs advance by
    themselves; :meth:`set_epoch` resumes at a given one.
    """

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)  # type: ignore[misc]  # args never hold a generator
        self.seed, self.epoch, self._next_epoch, self._start_batch = seed, 0, 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration produce epoch ``epoch`` from batch ``start_batch``."""
        self._next_epoch, self._start_batch = epoch, start_batch

    def __iter__(self):
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        start, self._start_batch = self._start_batch, 0
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)
        # Skipped batches are still read (workers' augmentation streams stay as in an unbroken epoch).
        batches = itertools.islice(super().__iter__(), start, None)
        return batches if self.num_workers > 0 else self._own_rng(batches)

    def _own_rng(self, batches: Iterator) -> Iterator:
        """Without workers the transforms run in this process: they draw from the loader's own
        ``(seed, epoch)`` stream, as a worker's would, instead of the global RNG. Otherwise re-reading
        the batches a resume skips would advance the trainer's RNG and the crops would depend on it."""
        state = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream=1)).get_state()
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                batch = next(batches, None)
                state = torch.get_rng_state()
            if batch is None:
                return
            yield batch


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: SIGTERM and SIGINT go to the trainer, not to its workers.

    Slurm's preemption, requeue and time-limit SIGTERM reach every process of the job, and Ctrl-C
    the whole process group: a worker that died of it would fail the trainer's next batch instead of
    letting it write its mid-epoch checkpoint. The trainer shuts its workers down when it exits.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def create_folder_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> EpochDataLoader:
    """A worker-backed loader: shuffled (training) or in order (eval), sharded across DDP ranks.

    Training shards drop the remainder so every rank runs the same number of steps; eval shards
    are ``rank::world_size`` without padding, so each sample counts once when metrics are summed.
    """
    sampler: Iterable[int] | None = None
    if world_size > 1:
        if train:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        else:
            sampler = range(rank, len(cast(Sized, dataset)), world_size)  # an ImageFolder or a Subset: sized
    return EpochDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last and train,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        seed=seed,
    )
