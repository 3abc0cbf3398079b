"""CIFAR-10 / CIFAR-100 from the official archives, python (pickle) or binary, packed or extracted.

See https://www.cs.toronto.edu/~kriz/cifar.html. Archives are read in memory, never extracted,
and the pickles go through :class:`RestrictedUnpickler`: user archives are untrusted.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

import numpy as np

from ..errors import InvalidValue
from .errors import DataFormatError, DataNotFoundError, UnsafeDataError

__all__ = ["RestrictedUnpickler", "safe_unpickle", "load_cifar", "CIFAR_LAYOUTS"]

PathLike = str | Path
_RECORD = 3 * 32 * 32

# Resolve numpy's array reconstructor through ndarray's own reduce so we neither import the
# deprecated ``numpy.core`` shim (numpy 2 warns) nor depend on which module path numpy uses today.
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]

# Exactly the globals a CIFAR pickle needs: a dict of lists/str/bytes/ints and uint8 arrays.
# Pickles from Python 2 (the official files) name numpy.core; numpy 2 pickles name numpy._core.
_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{("builtins", t.__name__): t for t in (dict, list, str, bytes, int)},
    **{("__builtin__", t.__name__): t for t in (dict, list, str, int)},  # Python 2 spelling
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals of a CIFAR batch and refuses all others.

    Unpickling calls whatever global a pickle names (``os.system``, ``eval``, ...); allowing only
    numpy array reconstruction and plain containers means a hostile archive cannot run code.
    """

    def find_class(self, module: str, name: str) -> object:
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise UnsafeDataError(
                f"refusing to unpickle global '{module}.{name}': CIFAR data files never need it "
                "(the archive is corrupt or hostile)"
            ) from None


def safe_unpickle(data: bytes, source: str = "<bytes>") -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"`` as the py2 files need)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafeDataError as e:
        raise UnsafeDataError(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataFormatError(f"{source}: not a CIFAR python batch ({e})") from e


def _get(batch: dict, key: str, source: str) -> object:
    # Python 2 pickles loaded with encoding="bytes" have bytes keys; re-pickled files may have str.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataFormatError(f"{source}: CIFAR batch has no '{key}' entry (keys: {sorted(map(str, batch))})")


def decode_python_batch(raw: bytes, source: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images N×3×32×32 uint8, labels N int64)`` of one python-format batch file."""
    batch = safe_unpickle(raw, source)
    if not isinstance(batch, dict):
        raise DataFormatError(f"{source}: expected a dict, got {type(batch).__name__}")
    data = np.asarray(_get(batch, "data", source))
    labels = np.asarray(_get(batch, label_key, source), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _RECORD or len(data) != len(labels):
        raise DataFormatError(
            f"{source}: expected uint8 data N×{_RECORD} and N labels, got {data.dtype} {data.shape}, {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def decode_binary_batch(raw: bytes, source: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary records are ``label_bytes`` label bytes (CIFAR-100: coarse, fine) then 3072 CHW pixels."""
    size = label_bytes + _RECORD
    if not raw or len(raw) % size:
        raise DataFormatError(f"{source}: {len(raw)} bytes is not a whole number of {size}-byte CIFAR records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    # The last label byte is the class (CIFAR-100: the fine label).
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), records[:, label_bytes - 1].astype(np.int64)


@dataclass(frozen=True)
class CifarLayout:
    """Where one archive format keeps its batches and how to decode them."""

    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    decode: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]


def _py(label_key: str) -> Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]:
    return lambda raw, source: decode_python_batch(raw, source, label_key)


def _bin(label_bytes: int) -> Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]:
    return lambda raw, source: decode_binary_batch(raw, source, label_bytes)


# Per dataset, in order of preference (the python format is what torchvision downloads).
CIFAR_LAYOUTS: dict[str, tuple[CifarLayout, ...]] = {
    "cifar10": (
        CifarLayout(
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            ("test_batch",),
            _py("labels"),
        ),
        CifarLayout(
            "cifar-10-binary.tar.gz",
            "cifar-10-batches-bin",
            tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            ("test_batch.bin",),
            _bin(1),
        ),
    ),
    "cifar100": (
        CifarLayout("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), _py("fine_labels")),
        CifarLayout("cifar-100-binary.tar.gz", "cifar-100-binary", ("train.bin",), ("test.bin",), _bin(2)),
    ),
}


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeDataError(f"{archive}: refusing archive with unsafe member path {member.name!r}")


def read_tar_members(archive: Path, names: set[str]) -> dict[str, bytes]:
    """Read the regular files ``names`` from a (compressed) tar in one sequential pass, in memory."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: random access into a .tar.gz re-decompresses from the start
                _check_member(member, archive)
                if member.name not in names:
                    continue
                if not member.isfile():
                    raise UnsafeDataError(f"{archive}: member {member.name!r} is not a regular file (link or device)")
                found[member.name] = cast(IO[bytes], tar.extractfile(member)).read()  # a regular file: not None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataFormatError(f"{archive}: cannot read the archive ({e}); re-download it") from e
    missing = sorted(names - found.keys())
    if missing:
        raise DataFormatError(f"{archive}: missing member(s) {', '.join(missing)}")
    return found


def _read_layout(root: Path, layout: CifarLayout, files: tuple[str, ...]) -> dict[str, bytes] | None:
    """The raw batch files from the extracted folder or the archive under ``root``, or ``None``."""
    # ``root`` may contain the extracted folder or be it.
    for folder in (root / layout.folder, *([root] if root.name == layout.folder else [])):
        paths = [folder / f for f in files]
        if all(p.is_file() for p in paths):
            return {str(p): p.read_bytes() for p in paths}
    if (root / layout.archive).is_file():
        names = [f"{layout.folder}/{f}" for f in files]
        raws = read_tar_members(root / layout.archive, set(names))
        return {f"{root / layout.archive}:{n}": raws[n] for n in names}
    return None


def load_cifar(root: PathLike, name: str = "cifar10", split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images N×3×32×32 uint8, labels N int64)`` of CIFAR-10/100 from ``root``.

    ``root`` may hold the python or binary ``.tar.gz`` archive or its extracted folder, or be that
    extracted folder itself. Batches are concatenated in the official order.
    """
    if name not in CIFAR_LAYOUTS:
        raise InvalidValue(f"unknown CIFAR set {name!r}: expected one of {sorted(CIFAR_LAYOUTS)}")
    if split not in ("train", "test"):
        raise InvalidValue(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    layouts = CIFAR_LAYOUTS[name]
    for layout in layouts:
        raws = _read_layout(root, layout, layout.train if split == "train" else layout.test)
        if raws is not None:
            parts = [layout.decode(raw, source) for source, raw in raws.items()]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    expected = " or ".join(f"{layout.archive} (or {layout.folder}/)" for layout in layouts)
    raise DataNotFoundError(
        f"no {name} data in {root}: expected {expected}; download from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, pass --data-dir, or set data.download=true"
    )
