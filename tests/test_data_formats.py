"""Readers of the real file formats: IDX, CIFAR python/binary archives, image folders."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sample_dir, sample_images
from tscnet.data import (
    DataError, DataFormatError, DataNotFoundError, UnsafeDataError, build_dataset, check_data, create_loaders,
    create_test_loader, load_cifar, read_idx,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")


# ---- IDX -------------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_idx_real_arrays():
    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10  # the published class balance
    first = images[0].astype(np.float64)
    assert labels[0] == 9 and first.min() == 0 and 50 < first.mean() < 150 and first.max() == 255  # ankle boot
    # foolbox's Fashion-MNIST samples are the first 20 test images: pixel-exact match.
    samples, sample_labels = sample_images("fashionMNIST")
    np.testing.assert_array_equal(read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:20], samples)
    np.testing.assert_array_equal(read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:20], sample_labels)


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_plain_and_gzip(tmp_path, gz):
    images, _ = sample_images("mnist")
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(_idx_bytes(images)) if gz else _idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_bad_magic_and_truncation(tmp_path):
    images, _ = sample_images("mnist")
    (tmp_path / "png").write_bytes((sample_dir() / "mnist_00_7.png").read_bytes())
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(tmp_path / "png")
    (tmp_path / "short").write_bytes(_idx_bytes(images)[:-5])
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")


# ---- CIFAR fixtures in the official formats ---------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR pickles (cPickle, py2) do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2's numpy names the reconstructor numpy.core (GLOBAL is text, so a plain replace is valid).
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _records(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # HWC PNGs -> CHW rows of 3072


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _split(name: str):
    images, labels = sample_images(name)
    return (images[:15], labels[:15]), (images[15:], labels[15:])


def _python_members(name: str, dump=_py2_pickle) -> dict[str, bytes]:
    (tr_x, tr_y), (te_x, te_y) = _split(name)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    batch = lambda x, y: dump({b"batch_label": b"x", key: [int(v) for v in y], b"data": _records(x)})
    if name == "cifar10":
        folder = "cifar-10-batches-py"
        files = {f"data_batch_{i + 1}": batch(tr_x[3 * i:3 * i + 3], tr_y[3 * i:3 * i + 3]) for i in range(5)}
        files["test_batch"] = batch(te_x, te_y)
    else:
        folder = "cifar-100-python"
        files = {"train": batch(tr_x, tr_y), "test": batch(te_x, te_y)}
    return {f"{folder}/{f}": data for f, data in files.items()}


def _binary_members(name: str) -> dict[str, bytes]:
    (tr_x, tr_y), (te_x, te_y) = _split(name)
    if name == "cifar10":
        rec = lambda x, y: np.concatenate([y[:, None].astype(np.uint8), _records(x)], 1).tobytes()
        files = {f"data_batch_{i + 1}.bin": rec(tr_x[3 * i:3 * i + 3], tr_y[3 * i:3 * i + 3]) for i in range(5)}
        return {f"cifar-10-batches-bin/{f}": d for f, d in {**files, "test_batch.bin": rec(te_x, te_y)}.items()}
    # CIFAR-100: a coarse label byte before the fine one; the fine one must be used.
    rec = lambda x, y: np.concatenate([(y[:, None] // 5).astype(np.uint8), y[:, None].astype(np.uint8), _records(x)], 1).tobytes()
    return {"cifar-100-binary/train.bin": rec(tr_x, tr_y), "cifar-100-binary/test.bin": rec(te_x, te_y)}


_ARCHIVES = {
    ("cifar10", "python"): "cifar-10-python.tar.gz", ("cifar10", "binary"): "cifar-10-binary.tar.gz",
    ("cifar100", "python"): "cifar-100-python.tar.gz", ("cifar100", "binary"): "cifar-100-binary.tar.gz",
}


def _assert_matches_samples(root: Path, name: str) -> None:
    for split, (x, y) in zip(("train", "test"), _split(name)):
        images, labels = load_cifar(root, name, split)
        assert images.dtype == np.uint8 and images.shape == (len(x), 3, 32, 32)
        np.testing.assert_array_equal(images, x.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("name,fmt", list(_ARCHIVES))
def test_cifar_archive_pixel_exact(tmp_path, name, fmt):
    members = _python_members(name) if fmt == "python" else _binary_members(name)
    _tar(tmp_path / _ARCHIVES[name, fmt], members)
    _assert_matches_samples(tmp_path, name)


@pytest.mark.parametrize("name,fmt", list(_ARCHIVES))
def test_cifar_extracted_folder(tmp_path, name, fmt):
    # Python-3 pickles (str keys, protocol 4) are read too, e.g. from a re-saved copy.
    members = _python_members(name, lambda o: pickle.dumps({k.decode(): v for k, v in o.items()}, protocol=4)) \
        if fmt == "python" else _binary_members(name)
    for member, data in members.items():
        (tmp_path / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / member).write_bytes(data)
    _assert_matches_samples(tmp_path, name)
    _assert_matches_samples(tmp_path / next(iter(members)).split("/")[0], name)  # root = the folder itself


def test_cifar_registry_and_loader(tmp_path):
    _tar(tmp_path / "cifar-100-binary.tar.gz", _binary_members("cifar100"))
    train, test, info = create_loaders("cifar100", tmp_path, batch_size=4)
    assert (info.num_classes, info.in_chans, info.image_size, info.num_train, info.num_test) == (100, 3, 32, 15, 5)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert sum(len(y) for _, y in test) == 5


class _Reduce:
    """An object that pickles as ``func(*args)``: how hostile pickles run code when loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle wants the callable of a nested __reduce__ to be callable
        return self.func(*self.args)(*args)


def _touch_payloads(marker: Path) -> dict[str, object]:
    """Pickled objects that each create ``marker`` when unpickled, through different globals."""
    import builtins
    import functools
    import subprocess

    code = f"open({str(marker)!r}, 'w').close()"
    os_module = _Reduce(builtins.__import__, "os")
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.eval": _Reduce(builtins.eval, code),
        "builtins.exec": _Reduce(builtins.exec, code),
        "builtins.open": _Reduce(builtins.open, str(marker), "w"),
        "getattr(__import__('os'), 'system')": _Reduce(_Reduce(builtins.getattr, os_module, "system"), f"touch {marker}"),
        "functools.partial": _Reduce(_Reduce(functools.partial, os.system, f"touch {marker}")),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
        "nested pickle.loads": _Reduce(pickle.loads, pickle.dumps(_Reduce(os.system, f"touch {marker}"))),
    }


@pytest.mark.parametrize("payload", list(_touch_payloads(Path("x"))))
def test_hostile_pickles_are_refused(payload, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _touch_payloads(marker)[payload], "labels": [0]}, protocol=4)
    members = _python_members("cifar10")
    members["cifar-10-batches-py/data_batch_1"] = evil
    _tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(UnsafeDataError, match=r"refusing to unpickle global"):
        load_cifar(tmp_path, "cifar10", "train")
    assert not marker.exists()
    try:  # the same bytes do run code when unpickled normally: the test can fail
        pickle.loads(evil)
    except Exception:
        pass  # some payloads fail after their side effect (e.g. a file object is not a valid batch)
    assert marker.exists()


def test_unsafe_tar_members_are_refused(tmp_path):
    members = _python_members("cifar10")
    _tar(tmp_path / "cifar-10-python.tar.gz", {"../escape": b"x", **members})
    with pytest.raises(UnsafeDataError, match="unsafe member path"):
        load_cifar(tmp_path, "cifar10", "train")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeDataError, match="not a regular file"):
        load_cifar(tmp_path, "cifar10", "test")


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_cifar(tmp_path, "cifar10", "train")
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-binary.tar.gz" in msg and str(tmp_path) in msg


# ---- ImageFolder -----------------------------------------------------------------------------


def _imagefolder(root: Path) -> list[Path]:
    """The real ImageNet sample images as root/train/<class>/ and root/val/<class>/ (links); the files."""
    files = sorted(sample_dir().glob("imagenet_*.jpg"))
    for split in ("train", "val"):
        for f in files:
            (root / split / f.stem.split("_")[-1]).mkdir(parents=True, exist_ok=True)
            (root / split / f.stem.split("_")[-1] / f.name).symlink_to(f)
    return files


def test_imagefolder_real_jpgs(tmp_path):
    files = _imagefolder(tmp_path)
    train, test, info = create_loaders("imagefolder", tmp_path, batch_size=8, workers=1)
    classes = sorted({f.stem.split("_")[-1] for f in files})
    assert info.num_classes == len(classes) and info.image_size == 224 and info.num_test == 20
    x, y = next(iter(train))
    assert x.shape == (8, 3, 224, 224) and x.dtype == torch.float32 and y.max() < len(classes)
    x, y = next(iter(test))  # in order: compare labels with the file names
    assert x.shape == (8, 3, 224, 224)
    dataset = build_dataset("imagefolder", tmp_path, "test")
    assert [dataset.classes[t] for t in y] == [Path(p).stem.split("_")[-1] for p, _ in dataset.samples[:8]]
    assert abs(float(x.mean())) < 1.5 and 0.3 < float(x.std()) < 2.0  # ImageNet-normalised
    (tmp_path / "train").rename(tmp_path / "unused")  # the test loader alone never reads train/
    alone, alone_info = create_test_loader("imagefolder", tmp_path, batch_size=8, workers=1)
    x_alone, y_alone = next(iter(alone))
    assert torch.equal(x_alone, x) and torch.equal(y_alone, y)
    assert (alone_info.num_classes, alone_info.num_test, alone_info.image_size) == (len(classes), 20, 224)


def test_a_folder_loader_without_workers_resumes_mid_epoch_exactly(tmp_path):
    """With ``data.workers=0`` the crops run in the trainer's process. They draw from the loader's own
    ``(seed, epoch)`` stream, not the global RNG: the batches after a resume point are the unbroken
    epoch's whatever the global RNG holds then, and the trainer's RNG (dropout, DropPath) is not moved."""
    _imagefolder(tmp_path)
    loaders = lambda: create_loaders("imagefolder", tmp_path, batch_size=4, workers=0, image_size=32)[0]
    train = loaders()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    unbroken, next_epoch = list(train), list(train)
    assert torch.equal(torch.get_rng_state(), state)  # the crops took nothing from the global RNG
    assert not torch.equal(torch.cat([x for x, _ in unbroken]), torch.cat([x for x, _ in next_epoch]))
    resumed = loaders()
    torch.manual_seed(123)  # where a resumed trainer's global RNG is: not where the unbroken one's was
    resumed.set_epoch(0, start_batch=2)
    pairs = list(zip(unbroken[2:], resumed, strict=True))
    assert len(pairs) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_check_data_reads_both_splits_as_a_run_does(tmp_path):
    """What a study or the demo checks once before starting runs: the run's info, or its one-line error."""
    files = _imagefolder(tmp_path)
    info = check_data("imagefolder", tmp_path, image_size=64, train_subset=12)
    assert (info.num_train, info.num_test, info.image_size) == (12, 20, 64)
    assert info.num_classes == len({f.stem.split("_")[-1] for f in files})
    with pytest.raises(DataError, match=r"^test_subset must be in \[1, 20\], got 21$"):
        check_data("imagefolder", tmp_path, test_subset=21)
    odd = next((tmp_path / "val").iterdir())
    odd.rename(odd.with_name("zz-not-a-training-class"))
    with pytest.raises(DataFormatError, match="train has .* classes but val has"):
        check_data("imagefolder", tmp_path)
