"""Exponential moving average of a model's weights and float buffers, with the official LowFormer warm-up."""
from __future__ import annotations

import math

import torch.nn as nn
from timm.utils import ModelEmaV3


class WarmupEMA(ModelEmaV3):
    """timm's ``ModelEmaV3`` (parameters and float buffers averaged, BatchNorm statistics included; integer
    buffers copied) with LowFormer's warm-up: the decay at ``step`` is ``decay * (1 - exp(-step /
    warmup_steps))`` (``warmup_steps`` = 0: a constant decay). ``step`` counts micro-batches, as the official
    trainer's ``global_step`` does. ``self.module`` is the averaged copy (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: float = 2000.0):
        super().__init__(model, decay=decay)
        self.warmup_steps = warmup_steps
        self.module.requires_grad_(False)

    def get_decay(self, step: int | None = None) -> float:
        if step is None or self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-step / self.warmup_steps))
