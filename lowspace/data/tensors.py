"""Batches from uint8 tensors held on the device, augmented on the device: no loader can stall the GPU.

Each training sample gets one affine transform (random-resized crop, pad-and-crop translation,
horizontal flip) applied by ``F.affine_grid`` + ``F.grid_sample``, which also resizes it to the
training resolution in the same kernel; pixels shifted in from outside repeat the nearest edge pixel
(border padding: black for Fashion-MNIST; it also keeps plain resizing free of dark borders). Then the
batch is normalized, expanded from 1 to 3 channels if the model wants 3, and laid out channels-last if asked.
The transforms of an epoch are drawn on the CPU from a generator seeded
by ``(seed, epoch)`` and uploaded once, so augmentation is identical on every device, in every process
layout and after a resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .base import TensorSplit, host_to
from .sampling import BatchPlan, PlannedLoader, seeded_generator


@dataclass(frozen=True)
class Augment:
    """GPU augmentation of tensor data.

    hflip: probability of a horizontal flip.
    translate: largest shift, as a fraction of the image side (0.125 = 4 px of 32; "pad and random crop").
    scale: range of the crop area as a fraction of the image (random-resized crop); (1, 1) = no crop.
    ratio: aspect-ratio range of that crop.
    """

    hflip: float = 0.5
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def active(self) -> bool:
        return self.hflip > 0 or self.translate > 0 or tuple(self.scale) != (1.0, 1.0)


def sample_affine(n: int, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """``(n, 2, 3)`` affine matrices (output -> input, normalized coordinates) drawn from ``aug``."""
    u = torch.rand(n, 7, generator=generator, dtype=torch.float64)
    flip = torch.where(u[:, 0] < aug.hflip, -1.0, 1.0)
    lo, hi = aug.scale
    if (lo, hi) != (1.0, 1.0):
        area = lo + u[:, 1] * (hi - lo)
        log_lo, log_hi = math.log(aug.ratio[0]), math.log(aug.ratio[1])
        ratio = torch.exp(log_lo + u[:, 2] * (log_hi - log_lo))
        w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    else:
        w = h = torch.ones(n, dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * flip
    theta[:, 1, 1] = h
    theta[:, 0, 2] = (1 - w) * (2 * u[:, 3] - 1) + (2 * u[:, 5] - 1) * 2 * aug.translate
    theta[:, 1, 2] = (1 - h) * (2 * u[:, 4] - 1) + (2 * u[:, 6] - 1) * 2 * aug.translate
    return theta.float()


def center_affine(n: int, crop: float = 1.0) -> torch.Tensor:
    """``(n, 2, 3)`` matrices of a central crop covering ``crop`` of the side (1.0 = the whole image)."""
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = crop
    theta[:, 1, 1] = crop
    return theta


class TensorLoader(PlannedLoader):
    """Iterates an epoch of a :class:`TensorSplit` (moved to ``device`` once) as normalized float batches.

    Args:
        split: the images and labels.
        plan: the batch plan (batch size, ranks, accumulation, shuffling, resolutions per step).
        device: where images, augmentation and batches live.
        resolution: output side when ``plan.sizes`` is empty.
        mean, std: per-channel normalization (of pixel values scaled to [0, 1]).
        augment: training augmentation, or None (then only resize / ``eval_crop``).
        eval_crop: without augmentation, the central fraction of the image that is kept (crop_pct).
        out_chans: channels the model wants; 1-channel data is repeated to 3 when asked.
        channels_last: lay batches out channels-last.
    """

    def __init__(self, split: TensorSplit, plan: BatchPlan, device, resolution: int,
                 mean: tuple[float, ...], std: tuple[float, ...], augment: Augment | None = None,
                 eval_crop: float = 1.0, out_chans: int | None = None, channels_last: bool = False):
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.plan = plan
        self.resolution = resolution
        self.augment = augment if augment is not None and augment.active else None
        self.eval_crop = eval_crop
        chans = self.split.images.shape[1]
        self.out_chans = out_chans or chans
        if self.out_chans != chans and chans != 1:
            raise ValueError(f"cannot turn {chans}-channel images into {self.out_chans} channels")
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = (1.0 / (255.0 * std_t)).to(self.device)
        self._shift = (-mean_t / std_t).to(self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._center = center_affine(plan.batch_size, eval_crop).to(self.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``(images, labels)`` micro-batches of ``epoch``, from micro-step ``start`` on."""
        plan = self.plan
        used = plan.samples_per_epoch
        order = host_to(plan.order(epoch)[:used], self.device)
        theta = None
        if self.augment is not None:
            theta = host_to(sample_affine(used, self.augment, seeded_generator(plan.seed, 3, epoch)), self.device)
        sizes = plan.micro_sizes(epoch)
        for m in range(start, plan.micro_steps):
            lo, hi = plan.rows(m)
            if hi <= lo:
                continue
            size = sizes[m] if sizes else self.resolution
            idx = order[lo:hi]
            x = self.render(idx, theta[lo:hi] if theta is not None else None, size)
            yield x, self.split.labels.index_select(0, idx)

    def render(self, idx: torch.Tensor, theta: torch.Tensor | None, size: int) -> torch.Tensor:
        """Images ``idx`` transformed by ``theta`` (None: central ``eval_crop``) at ``size``, normalized."""
        x = self.split.images.index_select(0, idx).float()
        n, c, h, w = x.shape
        if theta is None and (self.eval_crop != 1.0 or (h, w) != (size, size)):
            theta = self._center[:n] if n <= self._center.shape[0] else center_affine(n, self.eval_crop).to(x.device)
        if theta is not None:
            grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x.mul_(self._scale).add_(self._shift)
        if self.out_chans != c:
            x = x.expand(-1, self.out_chans, -1, -1)
        return x.contiguous(memory_format=self.memory_format)
