"""Held-out validation: a class-balanced, seeded split of the *training* images.

A search picks architectures by their validation accuracy, so that accuracy must not come from the images
that later report the final result (Fashion-MNIST's 10k test images, a class-folder root's ``val/``).
:func:`holdout_indices` chooses, in every class, a number of training images to hold out (a count per
class, or a fraction of each class); :func:`hold_out` applies it to an :class:`ImageData`, whose ``val``
split then holds those images and whose ``train`` split keeps the rest. The test split is dropped from the
result, so nothing trained or evaluated on it can read a test image.

The choice depends only on the training labels and the seed: the same data and seed give the same split in
every process and on every machine, and the record (:attr:`HoldoutSplit.record`) names it by a hash of
the chosen indices.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import ConfigError
from .base import DataError, ImageData

DEFAULT_MAX_PER_CLASS = 500   # 5,000 images for Fashion-MNIST: a binomial standard error near 0.4 points
DEFAULT_SHARE = 10            # and never more than a tenth of the smallest class


@dataclass(frozen=True)
class HoldoutSplit:
    """Indices into the training split (ascending): ``train`` keeps them for training, ``val`` holds them out.

    ``record``: ``source`` ("train"), ``seed``, ``per_class`` / ``fraction`` as asked, ``train_images``,
    ``val_images``, ``val_counts`` (held-out images per class) and ``indices_sha256`` (16 hex digits of a hash
    of the held-out indices and the size of the split they index).
    """

    train: list[int]
    val: list[int]
    record: dict


def default_val_per_class(class_sizes: Sequence[int]) -> int:
    """The held-out images per class when none is asked for: a tenth of the smallest class, at most 500 (at
    least 1)."""
    smallest = min((n for n in class_sizes if n > 0), default=0)
    return max(1, min(DEFAULT_MAX_PER_CLASS, smallest // DEFAULT_SHARE))


def holdout_indices(labels: Sequence[int], num_classes: int, per_class: int | None = None,
                    fraction: float | None = None, seed: int = 0,
                    class_names: Sequence[str] | None = None) -> HoldoutSplit:
    """Hold out ``per_class`` images of every class (or ``fraction`` of each class, at least one), chosen by
    ``seed``; neither: :func:`default_val_per_class`. Every class keeps at least one training image, else a
    ConfigError names the class. Classes without images are skipped."""
    by_class = _indices_by_class(labels, num_classes)
    counts = _held_counts([len(idx) for idx in by_class], per_class, fraction, class_names)
    rng = random.Random(seed)
    held: list[int] = []
    for idx, k in zip(by_class, counts):
        if k:
            held.extend(rng.sample(idx, k))
    held.sort()
    chosen = bytearray(len(labels))
    for i in held:
        chosen[i] = 1
    train = [i for i in range(len(labels)) if not chosen[i]]
    record = dict(source="train", seed=seed, per_class=per_class, fraction=fraction, train_images=len(train),
                  val_images=len(held), val_counts=counts, indices_sha256=_index_hash(held, len(labels)))
    return HoldoutSplit(train, held, record)


def hold_out(data: ImageData, per_class: int | None = None, fraction: float | None = None,
             seed: int = 0) -> ImageData:
    """``data`` with ``val`` = training images held out by :func:`holdout_indices` and ``train`` = the rest;
    the data set's own test split is dropped. ``info["validation"]`` holds the split's record."""
    split = holdout_indices(data.train.label_list(), data.num_classes, per_class, fraction, seed, data.classes)
    return replace(data, train=data.train.select(split.train), val=data.train.select(split.val),
                   info=dict(data.info, validation=split.record))


def is_held_out(data: ImageData) -> bool:
    """Whether ``data.val`` holds images held out from training (by :func:`hold_out`)."""
    return bool(data.info.get("validation"))


def _indices_by_class(labels: Sequence[int], num_classes: int) -> list[list[int]]:
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, label in enumerate(labels):
        if not 0 <= label < num_classes:
            raise DataError(f"label {label} of training image {i} outside 0..{num_classes - 1}")
        by_class[label].append(i)
    return by_class


def _held_counts(sizes: list[int], per_class: int | None, fraction: float | None,
                 class_names: Sequence[str] | None) -> list[int]:
    """Images to hold out of each class (0 for an empty class)."""
    if per_class is not None and fraction is not None:
        raise ConfigError("val_per_class", per_class, "a count per class or a fraction, not both")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ConfigError("val_per_class", per_class, "an integer >= 1 (images held out of each class)")
    if fraction is not None and (isinstance(fraction, bool) or not 0 < fraction < 1):
        raise ConfigError("val_fraction", fraction, "a number between 0 and 1 (exclusive)")
    if per_class is None and fraction is None:
        per_class = default_val_per_class(sizes)
    counts = []
    for c, n in enumerate(sizes):
        k = 0 if n == 0 else per_class if per_class is not None else max(1, round(fraction * n))
        if k and k >= n:
            name = class_names[c] if class_names is not None else c
            field, value = ("val_per_class", per_class) if per_class is not None else ("val_fraction", fraction)
            raise ConfigError(field, value, f"holds out {k} of the {n} training images of class {name!r}; "
                                            "every class must keep training images")
        counts.append(k)
    return counts


def _index_hash(indices: list[int], size: int) -> str:
    digest = hashlib.sha256(f"{size}:".encode())
    digest.update(",".join(map(str, indices)).encode())
    return digest.hexdigest()[:16]
