"""ImageNet-style class folders: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``.

* Scanning checks the layout and names the offending folder or file: no class folders, an empty class
  folder, a val class that train lacks, a class folder or image that is a broken symbolic link, an image
  file whose first bytes are no image format's (a text or HTML file named .jpg). Images that are damaged
  further in are found when they are read (the error names the file) or, with ``verify=True``, up front.
  With ``skip_bad=True`` all of these are skipped instead and counted in ``ImageData.info``
  (``skipped_files``, ``skipped_classes``, ``skipped_val_classes``). Files in class folders that are not
  images by their extension are left out and listed in ``info["ignored_files"]`` (:func:`describe_scan`
  says how many); hidden files and sub-folders are not looked at.
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
from dataclasses import dataclass, field, replace
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


# how each format's files begin (JPEG: the start-of-image marker; WebP: RIFF....WEBP; PNM: P1 to P7)
_MAGIC = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"II+\x00",
          b"MM\x00+")
_FORMATS = "JPEG, PNG, BMP, WebP, PNM, TIFF or GIF"


@dataclass
class _Listing:
    """The entries of one class folder: images, broken links with an image name, other files."""

    images: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # path -> why
    others: list[str] = field(default_factory=list)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as err:
        raise DataError(f"{folder}: cannot be read ({err.strerror})") from None


def _follow(entry: os.DirEntry) -> tuple[str, str | None]:
    """What a directory entry leads to: ("dir" | "file" | "other", None), or ("broken", why) for a link that
    leads nowhere (dangling, or a loop)."""
    try:
        if entry.is_dir():
            return "dir", None
        if entry.is_file():
            return "file", None
        os.stat(entry.path)
    except OSError as err:
        return "broken", (f"a broken symbolic link ({err.strerror})" if entry.is_symlink() else err.strerror)
    return "other", None


def _list_class(folder: Path) -> _Listing:
    listing = _Listing()
    for e in _entries(folder):
        if e.name.startswith("."):
            continue
        kind, why = _follow(e)
        if kind == "dir":
            continue
        image = os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        if kind == "broken" and image:
            listing.broken[e.path] = why
        elif image and kind == "file":
            listing.images.append(e.path)
        else:
            listing.others.append(e.path)
    listing.images.sort()
    return listing


def _class_folders(split_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The class folder names of a split, and its entries that are broken links (path -> why)."""
    names, broken = [], {}
    for e in _entries(split_dir):
        if e.name.startswith("."):
            continue
        kind, why = _follow(e)
        if kind == "dir":
            names.append(e.name)
        elif kind == "broken":
            broken[e.path] = why
    return sorted(names), broken


def is_image_header(head: bytes) -> bool:
    """Whether a file's first 16 bytes begin the way a JPEG, PNG, BMP, WebP, PNM, TIFF or GIF file does."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if len(head) >= 2 and head[:1] == b"P" and head[1] in b"1234567":
        return True
    return head.startswith(_MAGIC)


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


_SKIP_HINT = "remove them or pass skip_bad (--skip-bad) to skip and count them"


def scan_folders(root: str | Path, skip_bad: bool = False, verify: bool = False, workers: int = 8,
                 train_dir: str = "train", val_dir: str = "val") -> ImageData:
    """Scan a class-folder data set (see the module docstring). Every image's first bytes are checked (in
    ``workers`` threads); none is decoded unless ``verify`` or ``skip_bad`` (which verify every file with PIL)."""
    root = Path(root)
    tdir, vdir = root / train_dir, root / val_dir
    layout = f"class-folder data needs {root}/{train_dir}/<class>/<image> and {root}/{val_dir}/<class>/<image>"
    for d in (tdir, vdir):
        if not d.is_dir():
            raise DataError(f"{d}: no such folder; {layout}")
    info: dict = dict(root=str(root), skipped_files=[], skipped_classes=[], skipped_val_classes=[],
                      ignored_files=[])
    names = _class_names(tdir, skip_bad, info["skipped_classes"])
    if not names:
        raise DataError(f"{tdir}: holds no class folders; {layout}")
    train_files = _split_files(tdir, names, skip_bad, info, "skipped_classes")
    if not train_files:
        raise DataError(f"{tdir}: every class folder is empty")
    val_names = []
    for name in _class_names(vdir, skip_bad, info["skipped_val_classes"]):
        if name in train_files:
            val_names.append(name)
        elif skip_bad:
            info["skipped_val_classes"].append(str(vdir / name))
        else:
            raise DataError(f"{vdir / name}: val class {name!r} is missing from {tdir} (or its folder there "
                            f"is empty); train and val must share class folders")
    val_files = _split_files(vdir, val_names, skip_bad, info, "skipped_val_classes")
    _check_images(train_files, val_files, verify or skip_bad, skip_bad, workers, info)
    for group, split_dir, key in ((train_files, tdir, "skipped_classes"), (val_files, vdir, "skipped_val_classes")):
        for name in [n for n, files in group.items() if not files]:  # every image of the class was skipped
            info[key].append(str(split_dir / name))
            del group[name]
    classes = sorted(train_files)
    index = {name: i for i, name in enumerate(classes)}
    train = FolderSplit(tdir, [(f, index[c]) for c in classes for f in train_files[c]])
    val = FolderSplit(vdir, [(f, index[c]) for c in classes if c in val_files for f in val_files[c]])
    info["skip_bad"] = skip_bad
    return ImageData(root.name or str(root), tuple(classes), train, val, in_chans=3, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, info=info)


def _class_names(split_dir: Path, skip_bad: bool, skipped: list) -> list[str]:
    """The class folders of a split; one that is a broken link is an error (with ``skip_bad``: skipped)."""
    names, broken = _class_folders(split_dir)
    for path, why in broken.items():
        if not skip_bad:
            raise DataError(f"{path}: the class folder is {why}; remove it or pass skip_bad (--skip-bad) to skip it")
        skipped.append(path)
    return names


def _split_files(split_dir: Path, names, skip_bad: bool, info: dict, key: str) -> dict[str, list[str]]:
    """The image files of each class folder (empty ones are errors or, with ``skip_bad``, skipped); broken
    links named as images are errors (or skipped), other files are listed in ``info["ignored_files"]``."""
    exts = ", ".join(IMAGE_EXTENSIONS[:4]) + ", ..."
    files, broken = {}, {}
    for name in names:
        listing = _list_class(split_dir / name)
        broken.update(listing.broken)
        info["ignored_files"] += sorted(listing.others)
        if listing.images:
            files[name] = listing.images
        elif skip_bad:
            info[key].append(str(split_dir / name))
        elif not listing.broken:
            raise DataError(f"{split_dir / name}: empty class folder (no {exts} images); remove it or pass skip_bad")
    if broken and not skip_bad:
        first, why = min(broken.items())
        raise DataError(f"{first}: {why}; {len(broken)} such image file(s) in {split_dir}; {_SKIP_HINT}")
    info["skipped_files"] += sorted(broken)
    return files


def _check_images(train_files: dict, val_files: dict, verify: bool, skip_bad: bool, workers: int,
                  info: dict) -> None:
    """Check every image file (its first bytes, or with ``verify`` a PIL verify); a bad one is an error naming
    it, or with ``skip_bad`` it is dropped from its class and listed in ``info["skipped_files"]``."""
    everything = [f for group in (train_files, val_files) for fs in group.values() for f in fs]
    check = check_image if verify else _header_problem
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = {f: why for f, why in zip(everything, pool.map(check, everything)) if why}
    if problems and not skip_bad:
        first, why = next(iter(problems.items()))
        raise DataError(f"{first}: cannot read image ({why}); {len(problems)} bad file(s) in total; {_SKIP_HINT}")
    info["skipped_files"] = sorted(info["skipped_files"] + list(problems))
    for group in (train_files, val_files):
        for name in group:
            group[name] = [f for f in group[name] if f not in problems]


def _header_problem(path: str) -> str | None:
    """None if ``path`` begins as an image does (a cheap check: nothing is decoded); otherwise the reason."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"cannot be opened: {err.strerror}"
    if is_image_header(head):
        return None
    return "empty file" if not head else f"not an image file: it begins as no {_FORMATS} file does"


def describe_scan(info: dict) -> str | None:
    """One line on what a scan skipped (unreadable or broken files, empty class folders) and left out (files
    that are not images by their extension); None when there was nothing."""
    skipped = {k.removeprefix("skipped_").replace("_", " "): len(v) for k, v in info.items()
               if k.startswith("skipped_") and v}
    text = "skipped: " + ", ".join(f"{n} {what}" for what, n in skipped.items()) if skipped else ""
    ignored = info.get("ignored_files") or []
    if ignored:
        text += ("; " if text else "") + (f"left out {len(ignored)} file(s) that are not images by their extension "
                                          f"(e.g. {ignored[0]})")
    return text or None


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
