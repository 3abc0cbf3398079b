"""Dataset registry: one :class:`DatasetSpec` per name, and the two entry points
:func:`build_dataset` and :func:`create_loaders`."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from ..errors import InvalidValue
from .arrays import ArrayDataset
from .cifar import load_cifar
from .errors import DataError, DataFormatError, DataNotFoundError, UnknownDatasetError
from .folder import IMAGENET_MEAN, IMAGENET_STD, build_image_folder, create_folder_loader
from .idx import load_idx_split
from .loader import BatchLoader, TensorLoader, subset_indices

__all__ = [
    "DatasetInfo",
    "DatasetSpec",
    "check_data",
    "register_dataset",
    "list_datasets",
    "get_dataset_spec",
    "build_dataset",
    "create_loaders",
]

PathLike = str | Path
# (root or None, split, download, image_size) -> ArrayDataset or a torchvision dataset.
Builder = Callable[[Path | None, str, bool, int], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training run need to know about a dataset (also readable as ``info["key"]``)."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int = 0
    num_test: int = 0

    def __getitem__(self, key: str) -> object:
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its statistics, default augmentation and how to build it."""

    info: DatasetInfo
    build: Builder
    pad: int = 0  # zero padding of the random crop (tensor loader)
    flip: bool = False  # random horizontal flip (off for digits: a flipped 2 is no 2)
    in_memory: bool = True  # ArrayDataset -> TensorLoader; otherwise a worker DataLoader


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` under ``spec.info.name`` (replacing any previous entry)."""
    _REGISTRY[spec.info.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (case, ``_``/``-`` and common aliases tolerated)."""
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}{hint}; valid names: {', '.join(list_datasets())}")
    return _REGISTRY[key]


# ---- builders ------------------------------------------------------------------------------


def _require_dir(root: Path | None, name: str, how: str) -> Path:
    if root is None:
        raise DataNotFoundError(f"no data directory for {name}: {how}")
    try:
        found = root.is_dir()
    except OSError as error:  # a name longer than the file system takes (ENAMETOOLONG), ...: not a folder here
        raise DataNotFoundError(
            f"{name} data directory {root} cannot be a folder here ({error.strerror}): {how}"
        ) from None
    if not found:
        raise DataNotFoundError(f"{name} data directory {root} does not exist: {how}")
    return root


def _idx_builder(name: str, tv_name: str, default_dir: str | None, how: str) -> Builder:
    """MNIST-style IDX files in ``root`` or in torchvision's ``root/<tv_name>/raw`` layout."""

    def load(root: Path | None, split: str) -> ArrayDataset:
        root = _require_dir(root, name, how)
        n = 60000 if split == "train" else 10000  # checked on the decompressed arrays
        return ArrayDataset(*load_idx_split([root, root / tv_name / "raw"], split, (28, 28), n, name, how))

    def build(root: Path | None, split: str, download: bool, image_size: int) -> Dataset:
        try:
            return load(root or (Path(default_dir) if default_dir else None), split)
        except DataNotFoundError:
            if not download:
                raise
        if root is None:
            raise DataError(f"data.download=true needs a data_dir to download {name} into (--data-dir)")
        import torchvision.datasets as tvd  # downloads into root/<tv_name>/raw (all four files, checksummed)

        try:
            getattr(tvd, tv_name)(str(root), train=split == "train", download=True)
        except (RuntimeError, OSError) as error:  # no network, a mirror down, a folder we cannot write
            reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise DataError(
                f"could not download {name} into {root / tv_name / 'raw'}: {reason}; without network "
                f"access, copy its four IDX files into {root} (or another folder given as --data-dir)"
            ) from None
        return load(root, split)

    return build


def _cifar_builder(name: str) -> Builder:
    how = "pass --data-dir with the python or binary archive from https://www.cs.toronto.edu/~kriz/cifar.html, or set data.download=true to fetch it there"

    def build(root: Path | None, split: str, download: bool, image_size: int) -> Dataset:
        try:
            return ArrayDataset(*load_cifar(_require_dir(root, name, how), name, split))
        except DataNotFoundError:
            if not (download and root):
                raise
        root.mkdir(parents=True, exist_ok=True)
        _download_cifar(name, root)
        return ArrayDataset(*load_cifar(root, name, split))

    return build


def _download_cifar(name: str, root: Path) -> None:
    """Fetch the official python archive with torchvision's (checksummed) downloader."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_url

    tv = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    # Only download: torchvision's own loading unpickles without restrictions.
    download_url(tv.url, str(root), tv.filename, tv.tgz_md5)


def _folder_builder(root: Path | None, split: str, download: bool, image_size: int) -> Dataset:
    how = "pass --data-dir with an ImageNet-style root/train/<class>/ and root/val/<class>/ layout"
    return build_image_folder(_require_dir(root, "imagefolder", how), split, image_size)


_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

register_dataset(
    DatasetSpec(
        DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)),
        _idx_builder(
            "fashion-mnist",
            "FashionMNIST",
            "/usr/share/datasets/fashion-mnist",
            "apt-get install dataset-fashion-mnist, pass --data-dir with its four IDX files, or fetch them "
            "with --set data.download=true --data-dir (a folder to download into)",
        ),
        pad=2,
        flip=True,
    )
)
register_dataset(
    DatasetSpec(
        DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)),
        _idx_builder(
            "mnist",
            "MNIST",
            None,
            "pass --data-dir with the MNIST IDX files (or set data.download=true to fetch them there)",
        ),
        pad=2,
        flip=False,
    )
)
register_dataset(
    DatasetSpec(DatasetInfo("cifar10", 10, 3, 32, *_CIFAR10_STATS), _cifar_builder("cifar10"), pad=4, flip=True)
)
register_dataset(
    DatasetSpec(DatasetInfo("cifar100", 100, 3, 32, *_CIFAR100_STATS), _cifar_builder("cifar100"), pad=4, flip=True)
)
register_dataset(
    DatasetSpec(
        DatasetInfo("imagefolder", 0, 3, 224, IMAGENET_MEAN, IMAGENET_STD),
        _folder_builder,
        in_memory=False,
    )
)

# ---- entry points --------------------------------------------------------------------------


def build_dataset(
    name: str,
    data_dir: PathLike | None = None,
    split: str = "train",
    download: bool = False,
    image_size: int | None = None,
) -> Dataset:
    """One split (``"train"`` or ``"test"``) of dataset ``name``.

    In-memory sets return an :class:`ArrayDataset` (uint8 images); ``imagefolder`` returns a
    ``torchvision.datasets.ImageFolder`` with the split's ImageNet transform.
    """
    spec = get_dataset_spec(name)
    if split not in ("train", "test"):
        raise InvalidValue(f"split must be 'train' or 'test', got {split!r}")
    if spec.in_memory and image_size not in (None, spec.info.image_size):
        raise DataError(
            f"{spec.info.name} images are {spec.info.image_size}x{spec.info.image_size}; image_size only applies to imagefolder"
        )
    root = Path(data_dir).expanduser() if data_dir is not None else None
    dataset = spec.build(root, split, download, image_size or spec.info.image_size)
    if isinstance(dataset, ArrayDataset):
        _check_labels(dataset, spec.info, root)
    return dataset


def _check_labels(dataset: ArrayDataset, info: DatasetInfo, root: Path | None) -> None:
    shape = (info.in_chans, info.image_size, info.image_size)
    if tuple(dataset.images.shape[1:]) != shape:
        raise DataFormatError(f"{info.name} in {root}: expected images {shape}, got {tuple(dataset.images.shape[1:])}")
    if len(dataset) and not 0 <= int(dataset.labels.min()) <= int(dataset.labels.max()) < info.num_classes:
        raise DataFormatError(f"{info.name} in {root}: labels outside [0, {info.num_classes})")


def check_data(
    name: str,
    data_dir: PathLike | None = None,
    *,
    image_size: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = False,
) -> DatasetInfo:
    """Read both splits of ``name`` as :func:`create_loaders` does and check the subsets fit; the
    info, or the run's one-line :class:`DataError`. For commands that start many runs: a problem
    with the data is told once, before any of them starts (and with ``download``, CIFAR or MNIST is
    fetched once, not by every run at the same time)."""
    return _read_splits(get_dataset_spec(name), data_dir, download, image_size, train_subset, test_subset)[2]


def _read_splits(
    spec: DatasetSpec,
    data_dir: PathLike | None,
    download: bool,
    image_size: int | None,
    train_subset: int | None,
    test_subset: int | None,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    train = build_dataset(spec.info.name, data_dir, "train", download, image_size)
    test = build_dataset(spec.info.name, data_dir, "test", False, image_size)
    train = _subset(train, train_subset, "train_subset")
    test = _subset(test, test_subset, "test_subset")
    info = replace(spec.info, num_train=_len(train), num_test=_len(test))
    if not spec.in_memory:
        info = _folder_info(info, train, test, image_size or info.image_size)
    return train, test, info


@contextlib.contextmanager
def _rank_zero_first(enabled: bool, rank: int) -> Iterator[None]:
    """When ``enabled``, rank 0 runs the block while the other ranks wait at a barrier, then they run it.

    Why: every rank of a ``torchrun`` job downloading the same archive at once can corrupt it. If
    rank 0 fails, it exits with its error and ``torchrun`` stops the waiting ranks."""
    if enabled and rank != 0:
        dist.barrier()
    yield
    if enabled and rank == 0:
        dist.barrier()


def create_loaders(
    name: str,
    data_dir: PathLike | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    train_subset: int | None = None,
    augment: bool = True,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 4,
    *,
    eval_batch_size: int | None = None,
    drop_last: bool = False,
    download: bool = False,
    image_size: int | None = None,
    test_subset: int | None = None,
) -> tuple[BatchLoader, BatchLoader, DatasetInfo]:
    """``(train_loader, test_loader, info)`` for dataset ``name``.

    In-memory sets get :class:`TensorLoader` s on ``device`` (``workers`` unused); ``imagefolder``
    gets worker ``DataLoader`` s. Training batches are shuffled per ``(seed, epoch)`` and, with
    ``augment``, randomly cropped/flipped; ``train_subset`` keeps the first N of a fixed seeded
    permutation; ``test_subset`` likewise for the test split (quick runs only: reported errors are
    then on that subset). The test loader never augments or shuffles and keeps every sample. With
    ``world_size > 1`` both loaders are sharded for ``rank``, and a ``download`` is done by rank 0
    alone, before any rank reads.
    """
    spec = get_dataset_spec(name)
    with _rank_zero_first(download and world_size > 1, rank):  # the others read what rank 0 fetched
        train, test, info = _read_splits(spec, data_dir, download and rank == 0, image_size, train_subset, test_subset)
    eval_batch_size = eval_batch_size or batch_size
    shard = _Shard(rank=rank, world_size=world_size)
    if spec.in_memory:
        common: dict[str, Any] = dict(mean=info.mean, std=info.std, seed=seed, device=device, **shard)
        pad, flip = (spec.pad, spec.flip) if augment else (0, False)
        arrays = cast(ArrayDataset, train)  # what in-memory specs build (and _subset keeps)
        train_loader = TensorLoader(
            arrays.images, arrays.labels, batch_size, shuffle=True, pad=pad, flip=flip, drop_last=drop_last, **common
        )
        return train_loader, _test_loader(spec, info, test, eval_batch_size, device, seed, shard, workers), info
    if not augment:
        _base(train).transform = _base(test).transform
    common = dict(workers=workers, seed=seed, device=device, **shard)
    folder_loader = create_folder_loader(train, batch_size, True, drop_last=drop_last, **common)
    return folder_loader, _test_loader(spec, info, test, eval_batch_size, device, seed, shard, workers), info


def create_test_loader(
    name: str,
    data_dir: PathLike | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    test_subset: int | None = None,
    image_size: int | None = None,
    workers: int = 4,
) -> tuple[BatchLoader, DatasetInfo]:
    """``(test_loader, info)`` for dataset ``name``, reading the test split only.

    The loader is the one :func:`create_loaders` returns second (no augmentation, no shuffling,
    every sample kept); for evaluation and analysis, where the training split is not needed.
    """
    spec = get_dataset_spec(name)
    test = _subset(build_dataset(spec.info.name, data_dir, "test", False, image_size), test_subset, "test_subset")
    info = replace(spec.info, num_train=0, num_test=_len(test))
    if not spec.in_memory:
        info = replace(info, num_classes=len(_base(test).classes), image_size=image_size or info.image_size)
    return _test_loader(spec, info, test, batch_size, device, 0, _Shard(rank=0, world_size=1), workers), info


class _Shard(TypedDict):
    """This process's part of a DDP job, as a loader's keyword arguments."""

    rank: int
    world_size: int


def _test_loader(
    spec: DatasetSpec,
    info: DatasetInfo,
    test: Dataset,
    batch_size: int,
    device: str | torch.device,
    seed: int,
    shard: _Shard,
    workers: int,
) -> BatchLoader:
    if spec.in_memory:
        arrays = cast(ArrayDataset, test)  # what in-memory specs build (and _subset keeps)
        return TensorLoader(
            arrays.images,
            arrays.labels,
            batch_size,
            shuffle=False,
            equal_shards=False,
            mean=info.mean,
            std=info.std,
            seed=seed,
            device=device,
            **shard,
        )
    return create_folder_loader(test, batch_size, False, workers=workers, seed=seed, device=device, **shard)


def _base(dataset: Dataset) -> Any:
    """The dataset under a :class:`Subset` (an ``ImageFolder``: ``Any``, torchvision is untyped)."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def _subset(dataset: Dataset, size: int | None, option: str) -> Dataset:
    if size is None:
        return dataset
    if not 0 < size <= _len(dataset):
        raise DataError(f"{option} must be in [1, {_len(dataset)}], got {size}")
    index = subset_indices(_len(dataset), size)
    return dataset.subset(index) if isinstance(dataset, ArrayDataset) else Subset(dataset, index.tolist())


def _len(dataset: Dataset) -> int:
    """``len(dataset)``: every split built here has one, though ``Dataset`` does not declare ``__len__``."""
    return len(cast(Sized, dataset))


def _folder_info(info: DatasetInfo, train: Dataset, test: Dataset, image_size: int) -> DatasetInfo:
    classes, test_classes = _base(train).classes, _base(test).classes
    if test_classes != classes:
        raise DataFormatError(
            f"imagefolder: train has {len(classes)} classes but val has {len(test_classes)} (or different names); they must match"
        )
    return replace(info, num_classes=len(classes), image_size=image_size)
