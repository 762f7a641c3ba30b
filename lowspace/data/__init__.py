"""Data sets for training and proxy training.

``get_dataset(spec)`` gives an :class:`ImageData` from:

* ``"fashion_mnist"`` (also ``fashion-mnist``, ``fmnist``): the IDX files of the Debian package
  ``dataset-fashion-mnist`` (or ``root=DIR``); held as uint8 tensors, moved to the GPU whole and
  augmented there (:class:`TensorLoader`).
* a directory holding those IDX files.
* a class-folder root (``train/<class>/*.jpg``, ``val/<class>/*.jpg``): timm transforms and a
  DataLoader (:class:`FolderLoader`), or :func:`materialize` into tensors for fast proxy runs.
* ``"synthetic"``: learnable random patterns, for tests and speed measurements.

As loaded, ``ImageData.val`` is the data set's own test split (Fashion-MNIST's 10k images, a class-folder
root's ``val/``); only final evaluation reads it. :func:`hold_out` replaces it by a class-balanced, seeded
split of the training images, which proxy training, the search and ``lowspace train`` validate on.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from ..errors import unknown_key_error
from .base import DataError, FolderSplit, ImageData, TensorSplit, cap_per_class, select_classes
from .fashion_mnist import is_fashion_mnist_dir, load_fashion_mnist, read_idx
from .folders import (FolderLoader, eval_transforms, is_class_folder_root, materialize, scan_folders,
                      train_transforms)
from .gpu_augment import DeviceEvalTransform, DeviceTrainTransform
from .gpu_decode import LOADERS, DeviceFolderLoader, choose_loader, device_decodes_jpeg
from .sampling import BatchPlan, mix_seed
from .split import HoldoutSplit, default_val_per_class, hold_out, holdout_indices, is_held_out
from .synthetic import make_synthetic
from .tensors import Augment, TensorLoader

FASHION_MNIST_NAMES = ("fashion_mnist", "fashion-mnist", "fashionmnist", "fmnist")
SYNTHETIC_NAMES = ("synthetic",)

__all__ = [
    "get_dataset", "ImageData", "TensorSplit", "FolderSplit", "DataError", "BatchPlan", "Augment",
    "TensorLoader", "FolderLoader", "load_fashion_mnist", "read_idx", "scan_folders", "materialize",
    "make_synthetic", "train_transforms", "eval_transforms", "select_classes", "cap_per_class", "mix_seed",
    "hold_out", "holdout_indices", "HoldoutSplit", "default_val_per_class", "is_held_out",
    "DeviceFolderLoader", "DeviceTrainTransform", "DeviceEvalTransform", "choose_loader", "device_decodes_jpeg",
    "LOADERS",
]


def get_dataset(spec="fashion_mnist", *, root: str | Path | None = None, classes=None,
                train_per_class: int | None = None, val_per_class: int | None = None, seed: int = 0,
                skip_bad: bool = False, verify: bool = False, workers: int = 8, **synthetic) -> ImageData:
    """A data set by name or path (see the module docstring), optionally reduced.

    Args:
        spec: ``fashion_mnist``, ``synthetic``, a directory, or an :class:`ImageData` (reduced only).
        root: directory of the Fashion-MNIST IDX files (default: the Debian package's).
        classes: keep some classes: a number (chosen by ``seed``), a list of names, or a class file.
        train_per_class, val_per_class: at most this many images per class of the train / val split (as
            loaded, val is the test split), chosen by ``seed``.
        skip_bad, verify: class folders only; see :func:`scan_folders`.
        workers: threads used to verify images.
        **synthetic: arguments of :func:`make_synthetic` (``num_classes``, ``train_size``, ...).
    """
    _check_options(spec, synthetic)
    if isinstance(spec, ImageData):
        data = spec
    elif not isinstance(spec, (str, Path)):
        raise DataError(f"data: got {spec!r}; give 'fashion_mnist', 'synthetic' or a directory")
    else:
        text = str(spec)
        if text.lower() in FASHION_MNIST_NAMES:
            data = load_fashion_mnist(root)
        elif text.lower() in SYNTHETIC_NAMES:
            data = make_synthetic(seed=seed, **synthetic)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise DataError(f"data {text}: no such directory; give 'fashion_mnist', 'synthetic', a folder "
                                f"of Fashion-MNIST IDX files or a class-folder root (train/ and val/)")
            if not path.is_dir():
                raise DataError(f"data {text}: not a directory")
            if is_class_folder_root(path):
                data = scan_folders(path, skip_bad=skip_bad, verify=verify, workers=workers)
            elif is_fashion_mnist_dir(path):
                data = load_fashion_mnist(path)
            else:
                raise DataError(f"data {text}: neither a class-folder root (no {path / 'train'} folder) nor a "
                                f"folder of Fashion-MNIST IDX files")
    return data.subset(classes, train_per_class, val_per_class, seed)


def _check_options(spec, extra: dict) -> None:
    """Refuse options ``get_dataset`` does not take (named ``data.<key>``, as in a search config's ``data``
    section): only synthetic data takes :func:`make_synthetic`'s arguments."""
    synthetic = isinstance(spec, str) and spec.lower() in SYNTHETIC_NAMES
    synthetic_keys = [k for k in inspect.signature(make_synthetic).parameters if k != "seed"]
    common = [k for k in inspect.signature(get_dataset).parameters if k not in ("spec", "synthetic")]
    for key in extra:
        if key in synthetic_keys and not synthetic:
            raise DataError(f"data.{key}: got {extra[key]!r}; only synthetic data takes {key}")
        if key not in synthetic_keys:
            raise unknown_key_error("data", key, ["dataset", *common, *(synthetic_keys if synthetic else [])])
