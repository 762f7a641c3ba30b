"""Class folders decoded on the device: JPEG bytes read by host threads, decoded in batches by
``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA; libjpeg on the CPU, which is how tests run
this same code), augmented there (:mod:`.gpu_augment`), one micro-batch ahead on a side stream.

* :func:`choose_loader` is the one place that decides between this loader (``gpu``), the DataLoader of
  :mod:`.folders` (``cpu``) and the GPU-resident tensor loader (``tensor``; Fashion-MNIST, materialized or
  synthetic data keep it whatever ``loader`` says).
* :class:`DeviceFolderLoader` has the interface of :class:`~.folders.FolderLoader` and follows the same
  :class:`~.sampling.BatchPlan`, so under torchrun every rank reads and decodes only its own rows of each
  global micro-batch, on its own GPU. Each sample's augmentation is seeded by ``(seed, epoch, index)``.
* Files that are not complete JPEGs (PNG, ..., or no end-of-image marker) and JPEGs the device decoder
  refuses are decoded by PIL, as the CPU path does; a file PIL cannot read either is a DataError naming it,
  or, with ``skip_bad``, replaced by the next readable sample and recorded in ``skipped`` with a warning.
"""
from __future__ import annotations

import functools
import os
import queue
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .base import DataError, FolderSplit, host_to
from .folders import load_image
from .sampling import BatchPlan, PlannedLoader, mix_seed

LOADERS = ("auto", "cpu", "gpu")
MAX_REPLACEMENTS = 16  # as the CPU path: a bad file is replaced by one of the next 16 samples
# torchvision >= 0.29 marks its image decoders deprecated in favour of TorchCodec; they still work
warnings.filterwarnings("ignore", message=r"The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


@functools.lru_cache(maxsize=None)
def _decodes_on(device: str) -> bool:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
        sample = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        with torch.cuda.device(device):  # torchvision's decoder syncs with the stream of the device current here
            image = decode_jpeg([sample], mode=ImageReadMode.RGB, device=device)[0]
        return tuple(image.shape) == (3, 16, 16)
    except Exception:  # noqa: BLE001 - no nvJPEG, no image extension, a broken driver: not available
        return False


def device_decodes_jpeg(device) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` (a CUDA device with nvJPEG); tried once per device."""
    device = torch.device(device)
    return device.type == "cuda" and _decodes_on(str(device))


def choose_loader(requested: str, data_kind: str, device) -> str:
    """``tensor``, ``cpu`` or ``gpu``: how a run reads its data. ``auto`` takes ``gpu`` for class folders on a
    CUDA device torchvision decodes JPEGs on; ``gpu`` anywhere else is a ConfigError naming ``--loader``."""
    if requested not in LOADERS:
        raise ConfigError("loader", requested, f"one of {', '.join(LOADERS)} (--loader)")
    if data_kind == "tensor":
        return "tensor"
    device = torch.device(device)
    if requested == "cpu":
        return "cpu"
    if device_decodes_jpeg(device):
        return "gpu"
    if requested == "gpu":
        why = "needs a CUDA device" if device.type != "cuda" else "needs torchvision built with nvJPEG"
        raise ConfigError("loader", "gpu", f"the GPU loader {why} (device {device}); use --loader auto or cpu")
    return "cpu"


# ------------------------------------------------------------------------------------------ reading
@dataclass
class _Sample:
    """One file as read: JPEG bytes (``encoded``) or an image PIL decoded (``image``, uint8 CHW), or neither
    (``error``, PIL's reason)."""

    index: int
    path: str
    label: int
    encoded: torch.Tensor | None = None
    image: torch.Tensor | None = None
    error: str | None = None


def is_complete_jpeg(data: bytes | bytearray) -> bool:
    """Starts with a JPEG start-of-image marker and ends with an end-of-image one (trailing padding aside)."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    return data[-2:] == b"\xff\xd9" or bytes(data).rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _pil_tensor(path: str) -> torch.Tensor:
    image = load_image(path)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_sample(samples: Sequence[tuple[str, int]], index: int) -> _Sample:
    """Read sample ``index``: bytes of a complete JPEG, else the image decoded by PIL, else the reason."""
    path, label = samples[index]
    sample = _Sample(index, path, label)
    try:
        with open(path, "rb", buffering=0) as fh:  # read straight into the buffer the tensor will share
            data = bytearray(os.fstat(fh.fileno()).st_size)
            del data[fh.readinto(data):]
    except OSError as err:
        sample.error = f"{path}: cannot read image ({type(err).__name__}: {err})"
        return sample
    if is_complete_jpeg(data):
        sample.encoded = torch.frombuffer(data, dtype=torch.uint8)
        return sample
    _decode_with_pil(sample)
    return sample


def read_in_parts(pool, samples: Sequence[tuple[str, int]], indices: Sequence[int], parts: int) -> list:
    """Futures reading ``indices`` (:func:`read_sample`) in ``parts`` contiguous runs on ``pool``, one task per
    run: a task per file would cost a hand-off between threads (and the GIL) per image."""
    step = max(1, -(-len(indices) // max(1, parts)))
    return [pool.submit(_read_run, samples, indices[i:i + step]) for i in range(0, len(indices), step)]


def _read_run(samples: Sequence[tuple[str, int]], indices: Sequence[int]) -> list[_Sample]:
    return [read_sample(samples, i) for i in indices]


def _decode_with_pil(sample: _Sample) -> None:
    try:
        sample.image = _pil_tensor(sample.path)
    except DataError as err:
        sample.error = str(err)


def decode_samples(samples: list[_Sample], device: torch.device) -> None:
    """Set ``image`` of every sample holding JPEG bytes, on ``device``: one batched call; if it fails, one
    call per file, and PIL for the files the decoder refuses (``error`` set where PIL fails too)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    jpegs = [s for s in samples if s.encoded is not None]
    if jpegs:
        try:
            images = decode_jpeg([s.encoded for s in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            images = []
            for s in jpegs:
                try:
                    images.append(decode_jpeg(s.encoded, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
        for s, image in zip(jpegs, images):
            s.encoded = None
            if image is None:
                _decode_with_pil(s)
            else:
                s.image = image
    for s in samples:
        if s.image is not None and s.image.device != device:
            s.image = host_to(s.image, device)


# ------------------------------------------------------------------------------------------ the loader
@dataclass(frozen=True)
class _Batch:
    indices: list[int]
    size: int
    seeds: list[int]


class DeviceFolderLoader(PlannedLoader):
    """Iterates an epoch of a :class:`FolderSplit`, decoded and transformed on ``device``.

    Args (as :class:`~.folders.FolderLoader`, with a device transform):
        transform: ``transform(images, seeds, size) -> (N, 3, size, size)`` float batch, e.g.
            :class:`~.gpu_augment.DeviceTrainTransform` or :class:`~.gpu_augment.DeviceEvalTransform`.
        workers: threads reading files (and decoding the few that need PIL).
        augment_seed: seed each sample's augmentation by ``(seed, epoch, index)`` (else 0).
        prefetch: micro-batches prepared ahead of the one being trained on.
        processes: above 1, that many processes decode and transform every N-th micro-batch each, the
            ``workers`` read threads shared among them (:mod:`._processes`); the batches are the same.
    """

    def __init__(self, split: FolderSplit, plan: BatchPlan, device, resolution: int,
                 transform: Callable[[list[torch.Tensor], Sequence[int], int], torch.Tensor], workers: int = 8,
                 channels_last: bool = False, skip_bad: bool = False, augment_seed: bool = True, prefetch: int = 2,
                 processes: int = 1):
        self.device = torch.device(device)
        self.split, self.samples = split, split.samples
        self.channels_last, self.processes, self._pool = channels_last, max(1, processes), None
        self.plan, self.resolution, self.transform = plan, resolution, transform
        self.workers, self.skip_bad, self.augment_seed = max(1, workers), skip_bad, augment_seed
        self.prefetch = max(1, prefetch)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.skipped: list[str] = []
        self.decode_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def batches(self, epoch: int, start: int = 0, part: tuple[int, int] = (0, 1)) -> Iterator[_Batch]:
        """This rank's micro-batches of ``epoch`` from ``start`` on: sample indices, size, per-sample seeds;
        with ``part=(k, n)`` only the k-th of every n of them."""
        plan = self.plan
        order = plan.order(epoch).tolist()
        sizes = plan.micro_sizes(epoch)
        k, n = part
        count = 0
        for m in range(start, plan.micro_steps):
            lo, hi = plan.rows(m)
            if hi <= lo:
                continue
            count += 1
            if (count - 1) % n != k:
                continue
            idx = order[lo:hi]
            seeds = [mix_seed(plan.seed, 4, epoch, i) if self.augment_seed else 0 for i in idx]
            yield _Batch(idx, sizes[m] if sizes else self.resolution, seeds)

    def epoch(self, epoch: int, start: int = 0,
              part: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``(images, labels)`` micro-batches of ``epoch``, on the device (``part`` as in
        :meth:`batches`)."""
        if self.processes > 1 and part == (0, 1):
            if self._pool is None:
                from ._processes import LoaderProcesses
                self._pool = LoaderProcesses(self, self.processes)
            yield from self._pool.epoch(epoch, start)
            return
        producer = _Producer(self, self.batches(epoch, start, part))
        try:
            yield from producer
        finally:
            producer.close()

    def for_process(self, parts: int) -> Callable[[], "DeviceFolderLoader"]:
        """A picklable maker of this loader as one of ``parts`` processes runs it (its share of the read
        threads, no processes of its own)."""
        return functools.partial(
            DeviceFolderLoader, self.split, self.plan, self.device, self.resolution, self.transform,
            workers=max(1, self.workers // parts), channels_last=self.channels_last, skip_bad=self.skip_bad,
            augment_seed=self.augment_seed, prefetch=self.prefetch)

    def close(self) -> None:
        """Stop the loader's processes, if it has any (they also stop with the loader or the program)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def make_batch(self, batch: _Batch, read: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, replace bad files (``skip_bad``) and transform one micro-batch."""
        return self.finish(batch, self.decode(read))

    def decode(self, read: list[_Sample]) -> list[_Sample]:
        """Decode one micro-batch (one batched call), bad files replaced (``skip_bad``) or a DataError.
        On CUDA the images are allocated on the loader's decode stream (see :meth:`finish`)."""
        if self.decode_stream is None:
            return self._decode(read)
        with torch.cuda.device(self.device), torch.cuda.stream(self.decode_stream):
            return self._decode(read)

    def _decode(self, read: list[_Sample]) -> list[_Sample]:
        decode_samples(read, self.device)
        return [self._replacement(s) if s.error is not None else s for s in read]

    def finish(self, batch: _Batch, read: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform decoded samples on the current stream: ``(images, labels)``."""
        images = [s.image for s in read]
        if self.decode_stream is not None:
            # nvJPEG writes on a stream of its own that orders nothing after the transform: the decoded
            # images come from the decode stream's memory and are only handed back to it after the
            # transform has read them
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.decode_stream)
            for image in images:
                image.record_stream(current)
        x = self.transform(images, batch.seeds, batch.size)
        labels = host_to(torch.tensor([s.label for s in read], dtype=torch.long), self.device)
        return x.contiguous(memory_format=self.memory_format), labels

    def _replacement(self, bad: _Sample) -> _Sample:
        """The next readable sample after ``bad`` (skip_bad), else a DataError naming ``bad``'s file."""
        if not self.skip_bad:
            raise DataError(bad.error)
        for step in range(MAX_REPLACEMENTS):
            if bad.path not in self.skipped:
                self.skipped.append(bad.path)
                warnings.warn(f"skipping unreadable image {bad.path}", stacklevel=2)
            candidate = read_sample(self.samples, (bad.index + step + 1) % len(self.samples))
            decode_samples([candidate], self.device)
            if candidate.error is None:
                return candidate
            bad = candidate
        raise DataError(f"{bad.path} and the {MAX_REPLACEMENTS} images before it cannot be read")


class _Producer:
    """Prepares micro-batches ahead of the caller: file reads run ``prefetch + 1`` micro-batches ahead in a
    thread pool (each micro-batch as one run of files per thread), decoding as far ahead in a thread of its
    own (nvJPEG blocks its caller until the batch is decoded), and a third thread transforms them on a side
    CUDA stream while the caller trains on earlier ones. Iterating yields ``(x, y)``."""

    _DONE = object()

    def __init__(self, loader: DeviceFolderLoader, batches: Iterator[_Batch]):
        self.loader = loader
        self.batches = batches
        self.queue: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self.stop = threading.Event()
        cuda = loader.device.type == "cuda"
        self.stream = torch.cuda.Stream(loader.device) if cuda else None
        self.thread = threading.Thread(target=self._run, name="lowspace-device-loader", daemon=True)
        self.thread.start()

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            x, y, ready = item
            if ready is not None:
                current = torch.cuda.current_stream(self.loader.device)
                current.wait_event(ready)
                x.record_stream(current)
                y.record_stream(current)
            yield x, y

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            if self.stream is not None:
                with torch.cuda.device(self.loader.device), torch.cuda.stream(self.stream):
                    self._produce()
            else:
                self._produce()
            self._put(self._DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(err)

    def _decode(self, reads: list) -> list[_Sample] | None:
        if self.stop.is_set():  # closing: what is still queued returns at once
            return None
        return self.loader.decode([s for f in reads for s in f.result()])

    def _produce(self) -> None:
        loader = self.loader
        with ThreadPoolExecutor(loader.workers, thread_name_prefix="lowspace-read") as readers, \
                ThreadPoolExecutor(1, thread_name_prefix="lowspace-decode") as decoder:
            pending: deque = deque()

            def submit() -> None:
                batch = next(self.batches, None)
                if batch is not None:
                    reads = read_in_parts(readers, loader.samples, batch.indices, loader.workers)
                    pending.append((batch, reads, decoder.submit(self._decode, reads)))
            for _ in range(loader.prefetch + 1):
                submit()
            while pending and not self.stop.is_set():
                batch, _, decoded = pending.popleft()
                submit()
                x, y = loader.finish(batch, decoded.result())
                ready = None
                if self.stream is not None:
                    ready = torch.cuda.Event()
                    ready.record(self.stream)
                if not self._put((x, y, ready)):
                    break
            for _, reads, decoded in pending:
                decoded.cancel()
                for f in reads:
                    f.cancel()

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()
