"""ImageNet-style class folders: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``.

* Scanning checks the layout and names the offending folder: no class folders, an empty class folder,
  a val class that train lacks. Corrupt images are found when they are read (the error names the file)
  or, with ``verify=True``, up front. With ``skip_bad=True`` all of these are skipped instead and counted
  in ``ImageData.info`` (``skipped_files``, ``skipped_classes``, ``skipped_val_classes``).
* Training batches use the official transform (random-resized crop with a random PIL filter, flip, timm's
  RandAugment and random erasing) at a resolution chosen per micro-batch; evaluation resizes to
  ``ceil(size / crop_pct)`` and center-crops.
  Each sample's augmentation is seeded by ``(seed, epoch, index)``, so it does not depend on the worker
  that happens to load it (exact resume, same batches for any number of processes).
* :func:`materialize` decodes a (small) folder data set once into uint8 tensors for the GPU-resident
  loader that fast proxy training uses.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .base import IMAGENET_MEAN, IMAGENET_STD, DataError, FolderSplit, ImageData, TensorSplit
from .sampling import BatchPlan, PlannedLoader, mix_seed

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def is_class_folder_root(path: Path) -> bool:
    """Whether ``path`` looks like a class-folder data set (has a ``train`` folder)."""
    return (Path(path) / "train").is_dir()


def _image_files(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        files = [e.path for e in it if e.is_file() and not e.name.startswith(".")
                 and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(files)


def _class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def check_image(path: str) -> str | None:
    """None if PIL can open and verify ``path``; otherwise the reason."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(err).__name__}: {err}"
    return None


def load_image(path: str):
    """``path`` as an RGB PIL image; DataError naming the file if it cannot be decoded."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def scan_folders(root: str | Path, skip_bad: bool = False, verify: bool = False, workers: int = 8,
                 train_dir: str = "train", val_dir: str = "val") -> ImageData:
    """Scan a class-folder data set (see the module docstring); no image is decoded unless ``verify``
    or ``skip_bad`` (which verifies every file with PIL, in ``workers`` threads)."""
    root = Path(root)
    tdir, vdir = root / train_dir, root / val_dir
    layout = f"class-folder data needs {root}/{train_dir}/<class>/<image> and {root}/{val_dir}/<class>/<image>"
    for d in (tdir, vdir):
        if not d.is_dir():
            raise DataError(f"{d}: no such folder; {layout}")
    names = _class_folders(tdir)
    if not names:
        raise DataError(f"{tdir}: holds no class folders; {layout}")
    exts = ", ".join(IMAGE_EXTENSIONS[:4]) + ", ..."
    info: dict = dict(root=str(root), skipped_files=[], skipped_classes=[], skipped_val_classes=[])
    train_files: dict[str, list[str]] = {}
    for name in names:
        files = _image_files(tdir / name)
        if not files:
            if not skip_bad:
                raise DataError(f"{tdir / name}: empty class folder (no {exts} images); remove it or pass skip_bad")
            info["skipped_classes"].append(str(tdir / name))
            continue
        train_files[name] = files
    classes = sorted(train_files)
    if not classes:
        raise DataError(f"{tdir}: every class folder is empty")
    val_files: dict[str, list[str]] = {}
    for name in _class_folders(vdir):
        if name not in train_files:
            if not skip_bad:
                raise DataError(f"{vdir / name}: val class {name!r} is missing from {tdir} (or its folder there "
                                f"is empty); train and val must share class folders")
            info["skipped_val_classes"].append(str(vdir / name))
            continue
        files = _image_files(vdir / name)
        if not files:
            if not skip_bad:
                raise DataError(f"{vdir / name}: empty class folder (no {exts} images)")
            info["skipped_val_classes"].append(str(vdir / name))
            continue
        val_files[name] = files
    if verify or skip_bad:
        everything = [f for fs in list(train_files.values()) + list(val_files.values()) for f in fs]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems = {f: why for f, why in zip(everything, pool.map(check_image, everything)) if why}
        if problems and not skip_bad:
            first, why = next(iter(problems.items()))
            raise DataError(f"{first}: cannot read image ({why}); {len(problems)} bad file(s) in total, "
                            f"pass skip_bad to skip them")
        info["skipped_files"] = sorted(problems)
        for group in (train_files, val_files):
            for name in list(group):
                group[name] = [f for f in group[name] if f not in problems]
                if not group[name]:
                    key = "skipped_classes" if group is train_files else "skipped_val_classes"
                    info[key].append(str((tdir if group is train_files else vdir) / name))
                    del group[name]
        classes = sorted(train_files)
    index = {name: i for i, name in enumerate(classes)}
    train = FolderSplit(tdir, [(f, index[c]) for c in classes for f in train_files[c]])
    val = FolderSplit(vdir, [(f, index[c]) for c in classes if c in val_files for f in val_files[c]])
    info["skip_bad"] = skip_bad
    return ImageData(root.name or str(root), tuple(classes), train, val, in_chans=3, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, info=info)


# ------------------------------------------------------------------------------------------ transforms
RANDOM_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


class RandomResizedCropInterpolation:
    """Random-resized crop (torchvision's box sampling over ``scale`` / ``ratio``) resized to ``size`` with
    ``interpolation``; ``random`` draws one of the six PIL filters per image, as the official trainer."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "random"):
        from torchvision.transforms import InterpolationMode
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        names = RANDOM_INTERPOLATIONS if interpolation == "random" else (interpolation,)
        self.modes = [InterpolationMode(name) for name in names]

    def __call__(self, image):
        from torchvision.transforms import RandomResizedCrop
        from torchvision.transforms import functional as TF
        top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        mode = self.modes[int(torch.randint(len(self.modes), ()))] if len(self.modes) > 1 else self.modes[0]
        return TF.resized_crop(image, top, left, height, width, [self.size, self.size], mode)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={[m.value for m in self.modes]})")


def train_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, randaugment: str | None = None, reprob: float = 0.0,
                     interpolation: str = "random", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                     hflip: float = 0.5) -> Callable[[int], Callable]:
    """``size -> transform``: the official training transform for each resolution, built once per size:
    random-resized crop (:class:`RandomResizedCropInterpolation`), horizontal flip, timm's RandAugment
    (``randaugment`` string; bicubic ops, translation up to 45 %, fill = the mean colour), to tensor,
    normalize, timm's random erasing (probability ``reprob``, constant fill)."""
    from PIL import Image
    from timm.data import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms
    cache: dict[int, Callable] = {}
    fill = tuple(min(255, round(255 * m)) for m in mean)

    def for_size(size: int):
        if size not in cache:
            steps = [RandomResizedCropInterpolation(size, scale, ratio, interpolation),
                     transforms.RandomHorizontalFlip(hflip)]
            if randaugment:
                steps.append(rand_augment_transform(randaugment, dict(translate_pct=0.45, img_mean=fill,
                                                                      interpolation=Image.BICUBIC)))
            steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
            if reprob > 0:
                steps.append(RandomErasing(reprob, mode="const", device="cpu"))
            cache[size] = transforms.Compose(steps)
        return cache[size]
    return for_size


def eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.95,
                    interpolation: str = "bicubic") -> Callable[[int], Callable]:
    """``size -> transform``: resize the shorter side to ``ceil(size / crop_pct)`` (236 for 224 at 0.95, as the
    official code; timm rounds down), center crop ``size``, normalize."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    cache: dict[int, Callable] = {}

    def for_size(size: int):
        if size not in cache:
            cache[size] = transforms.Compose([
                transforms.Resize(math.ceil(size / crop_pct), interpolation=InterpolationMode(interpolation)),
                transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)])
        return cache[size]
    return for_size


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python, numpy and torch RNGs (what timm's transforms use); restore them afterwards when in the
    main process, where the model's own random state must not be disturbed."""
    restore = get_worker_info() is None
    if restore:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if restore:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class FolderDataset(Dataset):
    """Decodes and transforms one sample. Keys are ``(index, size, seed)`` tuples (or a plain index).

    With ``skip_bad`` an unreadable file is replaced by the next readable one and recorded in
    ``self.skipped`` (per process) with a warning; otherwise it raises DataError naming the file.
    """

    def __init__(self, samples: list[tuple[str, int]], transform_for_size: Callable[[int], Callable],
                 default_size: int, skip_bad: bool = False):
        self.samples = samples
        self.transform_for_size = transform_for_size
        self.default_size = default_size
        self.skip_bad = skip_bad
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, size, seed = key if isinstance(key, tuple) else (key, self.default_size, 0)
        for attempt in range(min(len(self.samples), 16)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_image(path)
                break
            except DataError:
                if not self.skip_bad:
                    raise
                if path not in self.skipped:
                    import warnings
                    self.skipped.append(path)
                    warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        else:
            raise DataError(f"{self.samples[index][0]} and the {attempt} images after it cannot be read")
        with _seeded(seed):
            x = self.transform_for_size(size)(image)
        return x, label


class _PlanBatchSampler:
    """Batch sampler of ``(index, size, seed)`` keys following a :class:`BatchPlan`."""

    def __init__(self, plan: BatchPlan, resolution: int, augment_seed: bool):
        self.plan, self.resolution, self.augment_seed = plan, resolution, augment_seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.plan.micro_steps - self.start)

    def __iter__(self):
        plan, epoch = self.plan, self.epoch
        order = plan.order(epoch).tolist()
        sizes = plan.micro_sizes(epoch)
        for m in range(self.start, plan.micro_steps):
            lo, hi = plan.rows(m)
            if hi <= lo:
                continue
            size = sizes[m] if sizes else self.resolution
            yield [(i, size, mix_seed(plan.seed, 4, epoch, i) if self.augment_seed else 0) for i in order[lo:hi]]


def _worker_message(err: Exception) -> str:
    """The one-line message of an error re-raised by a DataLoader worker (which appends a traceback)."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split("DataError: ", 1)[-1]


class FolderLoader(PlannedLoader):
    """Iterates an epoch of a :class:`FolderSplit` through a DataLoader, batches moved to ``device``.

    The same interface as :class:`lowspace.data.tensors.TensorLoader` (``epoch(epoch, start)``, ``len``).
    """

    def __init__(self, split: FolderSplit, plan: BatchPlan, device, resolution: int,
                 transform_for_size: Callable[[int], Callable], workers: int = 8, channels_last: bool = False,
                 skip_bad: bool = False, augment_seed: bool = True):
        self.device = torch.device(device)
        self.plan = plan
        self.resolution = resolution
        self.dataset = FolderDataset(split.samples, transform_for_size, resolution, skip_bad)
        self.sampler = _PlanBatchSampler(plan, resolution, augment_seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, start)
        try:
            for x, y in self.loader:
                yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                       y.to(self.device, non_blocking=True))
        except DataError as err:
            raise DataError(_worker_message(err)) from None


# ------------------------------------------------------------------------------------------ materialize
class _Decode(Dataset):
    def __init__(self, samples, size: int):
        self.samples, self.size = samples, size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        image = load_image(self.samples[i][0])
        w, h = image.size
        scale = self.size / min(w, h)
        image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                             Image.BILINEAR, reducing_gap=3.0)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_split(split: FolderSplit, size: int, workers: int) -> TensorSplit:
    loader = DataLoader(_Decode(split.samples, size), batch_size=256, num_workers=workers)
    try:
        images = torch.cat(list(loader)) if len(split) else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    except DataError as err:
        raise DataError(_worker_message(err)) from None
    return TensorSplit(images, torch.tensor(split.label_list(), dtype=torch.long))


def materialize(data: ImageData, size: int, workers: int = 4) -> ImageData:
    """Folder data decoded into uint8 tensors: shorter side resized to ``size`` then center-cropped to
    ``size`` x ``size``. Meant for small subsets (e.g. 100 classes x 260 images) used by proxy training."""
    if data.kind == "tensor":
        return data
    train = _decode_split(data.train, size, workers)
    val = _decode_split(data.val, size, workers) if data.val is not None else None
    return replace(data, train=train, val=val, native_resolution=size,
                   info=dict(data.info, materialized=size))
