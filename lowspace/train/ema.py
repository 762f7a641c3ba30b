"""Exponential moving average of a model's weights and float buffers, with the official warmup."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


class ModelEMA:
    """A frozen copy of ``model`` (eval mode) tracking it after every optimizer step.

    The decay at step ``s`` (optimizer steps done, from 1) is ``decay * (1 - exp(-s / warmup_steps))``
    (LowFormer's EMA; ``warmup_steps=0`` gives a constant decay). Floating-point parameters *and* buffers
    (BatchNorm running statistics) are averaged; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: float = 2000.0):
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pairs_cache = None

    def decay_at(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-step / self.warmup_steps))

    def _pairs(self, model: nn.Module):
        ema_state, state = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        floats = ([], [])
        ints = ([], [])
        for name, target in ema_state.items():
            src = state[name].detach()
            bucket = floats if target.is_floating_point() else ints
            bucket[0].append(target.data if isinstance(target, nn.Parameter) else target)
            bucket[1].append(src)
        return floats, ints

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model`` (the raw model: not DDP- or compile-wrapped)."""
        if self._pairs_cache is None:
            self._pairs_cache = self._pairs(model)
        (ema_f, model_f), (ema_i, model_i) = self._pairs_cache
        weight = 1.0 - self.decay_at(step)
        if ema_f:
            torch._foreach_lerp_(ema_f, model_f, weight)
        for dst, src in zip(ema_i, model_i):
            dst.copy_(src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
