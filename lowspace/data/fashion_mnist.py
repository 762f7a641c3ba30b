"""Fashion-MNIST from its IDX files (the Debian package ``dataset-fashion-mnist`` or any directory).

The IDX format: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32, then the values in C order. Files may be gzip-compressed (``.gz``).
"""
from __future__ import annotations

import gzip
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageData, TensorSplit

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "LOWSPACE_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
# Per-pixel mean / std of the 60k training images (scaled to [0, 1]).
MEAN = (0.2860,)
STD = (0.3530,)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; a corrupt file raises DataError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as err:  # includes gzip.BadGzipFile
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: corrupt or truncated: header says {dims} ({expected} bytes of data), "
                        f"found {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_file(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz`` (also the ``train-images.idx3-ubyte`` spelling)."""
    names = [stem, stem + ".gz"]
    alt = stem.replace("-idx", ".idx")
    names += [alt, alt + ".gz"]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {root / (stem + '.gz')} not found (also looked for {stem}); "
                    f"install the Debian package dataset-fashion-mnist, or give the directory holding the "
                    f"four IDX files (root=..., or ${ROOT_ENV})")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def is_fashion_mnist_dir(path: Path) -> bool:
    """Whether ``path`` holds the Fashion-MNIST training images."""
    try:
        find_file(Path(path), FILES["train_images"])
        return True
    except DataError:
        return False


@lru_cache(maxsize=4)
def _load_arrays(root: str) -> tuple[np.ndarray, ...]:
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"Fashion-MNIST directory {base} does not exist; install the Debian package "
                        f"dataset-fashion-mnist or give the directory holding the IDX files")
    arrays = []
    for key in ("train_images", "train_labels", "val_images", "val_labels"):
        path = find_file(base, FILES[key])
        arr = read_idx(path)
        want_dim = 3 if key.endswith("images") else 1
        if arr.ndim != want_dim or arr.dtype != np.uint8:
            raise DataError(f"{path}: expected a {want_dim}-d uint8 IDX array, found {arr.ndim}-d {arr.dtype}")
        if key.endswith("labels") and arr.size and int(arr.max()) >= len(CLASSES):
            raise DataError(f"{path}: label {int(arr.max())} outside 0..{len(CLASSES) - 1}")
        arrays.append((path, arr))
    for (ip, images), (lp, labels) in (arrays[0:2], arrays[2:4]):
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{ip} holds {images.shape[0]} images but {lp} holds {labels.shape[0]} labels")
    return tuple(a for _, a in arrays)


def load_fashion_mnist(root: str | Path | None = None) -> ImageData:
    """Fashion-MNIST as uint8 tensors (60k train / 10k test as val, 1x28x28, 10 classes), on the CPU.

    ``root``: directory of the IDX files (default ``$LOWSPACE_FASHION_MNIST`` or
    ``/usr/share/datasets/fashion-mnist``). Decoded arrays are cached per process.
    """
    base = Path(root) if root is not None else default_root()
    train_x, train_y, val_x, val_y = _load_arrays(str(base.resolve()))
    # from_numpy of the read-only buffer would share it; copy once into torch-owned memory
    train = TensorSplit(torch.from_numpy(train_x.copy()).unsqueeze(1), torch.from_numpy(train_y.astype(np.int64)))
    val = TensorSplit(torch.from_numpy(val_x.copy()).unsqueeze(1), torch.from_numpy(val_y.astype(np.int64)))
    return ImageData("fashion_mnist", CLASSES, train, val, in_chans=1, mean=MEAN, std=STD,
                     native_resolution=int(train_x.shape[1]), info=dict(root=str(base)))
