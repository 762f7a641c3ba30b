"""Synthetic, learnable image data for tests and speed measurements.

Each class has a fixed random low-frequency pattern; an image is its class pattern plus noise, so a
small network can learn the task within a few steps and tests can check that training does something.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ImageData, TensorSplit


def make_synthetic(num_classes: int = 4, train_size: int = 256, val_size: int = 64, image_size: int = 16,
                   channels: int = 3, noise: float = 0.35, seed: int = 0) -> ImageData:
    """A synthetic :class:`ImageData` (uint8 tensors on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    coarse = max(2, image_size // 4)
    patterns = torch.rand(num_classes, channels, coarse, coarse, generator=g)
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def split(n: int) -> TensorSplit:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        x = patterns[labels] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
        return TensorSplit((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    train, val = split(train_size), split(val_size)
    classes = tuple(f"class{i}" for i in range(num_classes))
    return ImageData("synthetic", classes, train, val, in_chans=channels, mean=(0.5,) * channels,
                     std=(0.25,) * channels, native_resolution=image_size,
                     info=dict(seed=seed, noise=noise))
