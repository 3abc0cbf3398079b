"""Reader for IDX files, the format of MNIST and Fashion-MNIST (plain or gzipped).

Layout: two zero bytes, a dtype code, the number of dimensions ``d``, ``d`` big-endian int32
sizes, then the data in C order, big-endian. See http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from ..errors import InvalidValue
from .errors import DataFormatError, DataNotFoundError

__all__ = ["read_idx", "find_idx_file", "load_idx_split"]

PathLike = str | Path

# IDX dtype codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# File stems per split; torchvision and the original site use the same names.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    # Detect gzip by content, not by name: Debian and torchvision differ in what they leave behind.
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DataFormatError(f"{path}: cannot decompress ({e}); re-download the file") from e


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array in native byte order.

    Raises :class:`DataFormatError` on a wrong magic number or a size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data; the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy: frombuffer views are read-only


def find_idx_file(folders: Sequence[Path], stem: str) -> Path | None:
    """First ``<folder>/<stem>`` or ``<folder>/<stem>.gz`` that exists, else ``None``."""
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_split(
    folders: Sequence[Path],
    split: str,
    image_shape: tuple[int, int] = (28, 28),
    num_samples: int | None = None,
    name: str = "IDX data",
    hint: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images N×H×W uint8, labels N int64)`` of an MNIST-style split from the first folder holding it.

    ``num_samples`` (e.g. 60000 / 10000) is checked against the decompressed arrays; Debian
    re-compresses the files, so checksums of the ``.gz`` files would not match upstream.
    """
    if split not in _IDX_STEMS:
        raise InvalidValue(f"split must be one of {sorted(_IDX_STEMS)}, got {split!r}")
    paths = [find_idx_file(folders, stem) for stem in _IDX_STEMS[split]]
    if None in paths:
        where = ", ".join(str(f) for f in folders) or "<no folder>"
        missing = _IDX_STEMS[split][paths.index(None)]
        raise DataNotFoundError(f"{name}: {missing}[.gz] not found in {where}{'; ' + hint if hint else ''}")
    images, labels = (read_idx(p) for p in cast(list[Path], paths))  # no None: checked above
    expected = (num_samples if num_samples is not None else len(labels), *image_shape)
    if images.dtype != np.uint8 or images.shape != expected:
        raise DataFormatError(
            f"{paths[0]}: expected uint8 images of shape {expected}, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != expected[0]:
        raise DataFormatError(f"{paths[1]}: expected {expected[0]} labels, got shape {labels.shape}")
    return images, labels.astype(np.int64)
