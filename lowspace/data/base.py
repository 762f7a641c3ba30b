"""Data sets as plain objects: an :class:`ImageData` holds a train and a val split, either as uint8
tensors (:class:`TensorSplit`, small data sets kept whole on the device) or as lists of image files
(:class:`FolderSplit`, ImageNet-style class folders read by a DataLoader)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

import torch

from ..errors import LowspaceError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def host_to(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting: a copy from pageable host memory would first wait for the
    device's queued work, stalling the thread that asked for it. A tensor already on a GPU is moved as is."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class DataError(LowspaceError):
    """A data set that cannot be read: missing or corrupt file, empty class folder, bad class list."""


@dataclass
class TensorSplit:
    """Images as one uint8 tensor ``(N, C, H, W)`` and labels as int64 ``(N,)``, on any device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"tensor images must be uint8 (N, C, H, W); got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def label_list(self) -> list[int]:
        return self.labels.tolist()

    def select(self, indices: Sequence[int], relabel: dict[int, int] | None = None) -> "TensorSplit":
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.images.device)
        labels = self.labels.index_select(0, idx)
        if relabel is not None:
            table = torch.full((int(self.labels.max()) + 1,), -1, dtype=torch.long, device=labels.device)
            for old, new in relabel.items():
                table[old] = new
            labels = table[labels]
        return TensorSplit(self.images.index_select(0, idx), labels)

    def to(self, device) -> "TensorSplit":
        device = torch.device(device)
        if self.images.device == device:
            return self
        return TensorSplit(self.images.to(device), self.labels.to(device))


@dataclass
class FolderSplit:
    """Image files with labels: ``samples`` is a list of ``(path, label)``; ``root`` the split folder."""

    root: Path
    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def label_list(self) -> list[int]:
        return [label for _, label in self.samples]

    def select(self, indices: Sequence[int], relabel: dict[int, int] | None = None) -> "FolderSplit":
        out = []
        for i in indices:
            path, label = self.samples[i]
            out.append((path, relabel[label] if relabel is not None else label))
        return FolderSplit(self.root, out)


Split = Union[TensorSplit, FolderSplit]


@dataclass
class ImageData:
    """A classification data set: train and val splits, class names, channels and normalization.

    ``val`` is the split evaluation reads: as loaded, the data set's own test split; after
    :func:`~lowspace.data.hold_out`, images held out from training (``info["validation"]`` says which).

    ``native_resolution`` is the stored side of tensor data (28 for Fashion-MNIST); folder data has none.
    ``info`` records where the data came from and what was skipped (``skipped_files``, ...).
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split | None
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_resolution: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def kind(self) -> str:
        """``tensor`` (held in memory, GPU-side augmentation) or ``folder`` (files, DataLoader)."""
        return "tensor" if isinstance(self.train, TensorSplit) else "folder"

    def describe(self) -> str:
        val = len(self.val) if self.val is not None else 0
        return (f"{self.name}: {self.num_classes} classes, {len(self.train)} train / {val} val images, "
                f"{self.in_chans} channel(s), {self.kind}")

    def subset(self, classes=None, train_per_class: int | None = None, val_per_class: int | None = None,
               seed: int = 0) -> "ImageData":
        """A smaller data set: some classes (``classes`` = a number chosen by ``seed``, a list of names,
        or a text file with one name per line) and at most ``*_per_class`` images of each (chosen by
        ``seed``). Labels are renumbered 0..n-1 in the order of the kept class names."""
        if classes is None and train_per_class is None and val_per_class is None:
            return self
        keep = select_classes(self.classes, classes, seed)
        relabel = {old: new for new, old in enumerate(keep)}
        train = self.train.select(cap_per_class(self.train.label_list(), keep, train_per_class, seed), relabel)
        val = None
        if self.val is not None:
            val = self.val.select(cap_per_class(self.val.label_list(), keep, val_per_class, seed + 1), relabel)
        info = dict(self.info, subset=dict(classes=len(keep), train_per_class=train_per_class,
                                           val_per_class=val_per_class, seed=seed))
        return replace(self, classes=tuple(self.classes[i] for i in keep), train=train, val=val, info=info)


def read_class_file(path: Path) -> list[str]:
    """Class names from a text file: one per line; blank lines and ``#`` comments are ignored."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise DataError(f"class list {path}: cannot be read ({err.strerror or err})") from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"class list {path}: names no classes")
    return names


def select_classes(all_classes: Sequence[str], spec, seed: int = 0) -> list[int]:
    """Indices (sorted) of the classes chosen by ``spec``: None (all), an int N (N chosen by ``seed``),
    a list of names or a path to a class file."""
    n = len(all_classes)
    if spec is None:
        return list(range(n))
    if isinstance(spec, bool):
        raise DataError(f"classes: got {spec!r}; give a number, a list of names or a class file")
    if isinstance(spec, int):
        if not 1 <= spec <= n:
            raise DataError(f"classes: got {spec}; the data set has {n} classes (allowed 1..{n})")
        return sorted(random.Random(seed).sample(range(n), spec))
    source = None
    if isinstance(spec, (str, Path)):
        source = Path(spec)
        if not source.is_file():
            raise DataError(f"class list {spec}: no such file")
        spec = read_class_file(source)
    index = {name: i for i, name in enumerate(all_classes)}
    where = f"class list {source}" if source else "classes"
    unknown = [name for name in spec if name not in index]
    if unknown:
        raise DataError(f"{where}: unknown class(es) {', '.join(map(str, unknown[:5]))}"
                        f"{' ...' if len(unknown) > 5 else ''}; the data set has {n} classes, e.g. "
                        f"{', '.join(list(all_classes)[:3])}")
    if len(set(spec)) != len(spec):
        raise DataError(f"{where}: a class is listed twice")
    return sorted(index[name] for name in spec)


def cap_per_class(labels: Sequence[int], keep: Sequence[int], cap: int | None, seed: int = 0) -> list[int]:
    """Indices (ascending) of the samples of the ``keep`` classes, at most ``cap`` per class (chosen by seed)."""
    if cap is not None and (isinstance(cap, bool) or cap < 1):
        raise DataError(f"per-class image cap: got {cap!r}; allowed: an integer >= 1 or None")
    wanted = set(keep)
    by_class: dict[int, list[int]] = {c: [] for c in keep}
    for i, label in enumerate(labels):
        if label in wanted:
            by_class[label].append(i)
    out = []
    rng = random.Random(seed)
    for c in keep:
        idx = by_class[c]
        if cap is not None and len(idx) > cap:
            idx = rng.sample(idx, cap)
        out.extend(idx)
    return sorted(out)
