"""Shared test helpers: the real sample images shipped by foolbox (80 CIFAR-10/100, Fashion-MNIST and ImageNet
photos and digits, each file named ``<set>_<index>_<label>``)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (``-n auto``, the README's command: one worker per core) each worker gets
    one thread: two OpenMP threads per worker would spin-wait for each other (see :func:`one_thread`).
    The CLI subprocesses the tests start inherit the setting."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny ops (power iterations, tiny batches): with the
    2 cores shared by other processes, two OpenMP threads spin-wait for each other and run up to
    50x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_dir() -> Path:
    """Folder of foolbox's real CIFAR-10/100, Fashion-MNIST and ImageNet sample images.

    foolbox is installed with ``--no-deps`` only for its data, so it is located, never imported.
    """
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox (sample images) is not installed: pip install --no-deps foolbox==3.3.4")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_images(name: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N×H×W[×C], labels int64 N)`` of one sample set, e.g. ``"cifar10"``.

    Files are named ``<set>_<index>_<label>.<ext>``. ImageNet samples differ in size: pass
    ``size`` to resize them (bilinear) to ``size``×``size``.
    """
    from PIL import Image

    files = sorted(p for p in sample_dir().iterdir() if p.name.split("_")[0] == name)
    if not files:
        raise FileNotFoundError(f"no sample images named {name}_* in {sample_dir()}")
    opened = [Image.open(p).convert("RGB") if name == "imagenet" else Image.open(p) for p in files]
    if size is not None:
        opened = [im.resize((size, size), Image.BILINEAR) for im in opened]
    images = [np.asarray(im) for im in opened]
    labels = [int(p.stem.split("_")[-1]) for p in files]
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def sample_batch(name: str, size: int | None = None) -> torch.Tensor:
    """Sample images as a float NCHW batch in [0, 1], optionally resized to ``size``×``size``."""
    images, _ = sample_images(name, size)
    x = torch.from_numpy(images).float() / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous()
