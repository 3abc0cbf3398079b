"""Datasets and fast loaders: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 archives, image folders.

Start with :func:`create_loaders` (:func:`create_test_loader` for evaluation alone); see :func:`list_datasets` for the names.
"""

from .arrays import ArrayDataset
from .cifar import RestrictedUnpickler, load_cifar, safe_unpickle
from .errors import DataError, DataFormatError, DataNotFoundError, UnknownDatasetError, UnsafeDataError
from .folder import IMAGENET_MEAN, IMAGENET_STD, EpochDataLoader, build_image_folder, imagenet_transform
from .idx import load_idx_split, read_idx
from .loader import TensorLoader, crop_flip, epoch_generator, subset_indices
from .registry import (
    DatasetInfo,
    DatasetSpec,
    build_dataset,
    check_data,
    create_loaders,
    create_test_loader,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)

__all__ = [
    "ArrayDataset",
    "RestrictedUnpickler",
    "load_cifar",
    "safe_unpickle",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "UnknownDatasetError",
    "UnsafeDataError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochDataLoader",
    "build_image_folder",
    "imagenet_transform",
    "load_idx_split",
    "read_idx",
    "TensorLoader",
    "crop_flip",
    "epoch_generator",
    "subset_indices",
    "DatasetInfo",
    "DatasetSpec",
    "build_dataset",
    "check_data",
    "create_loaders",
    "create_test_loader",
    "get_dataset_spec",
    "list_datasets",
    "register_dataset",
]
