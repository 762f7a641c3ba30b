"""Optimizer and learning-rate schedule: AdamW with weight-decay exclusions, warm-up + cosine per step."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.lr_scheduler import LambdaLR

NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _decayed(module_name: str, module: nn.Module, param_name: str, mode: str) -> bool:
    """Whether a parameter gets weight decay. ``official``: the official rule (no decay for names containing
    "norm" or "bias"), restated for our module names: biases and norm parameters are excluded, except the
    weights of the pre-attention / pre-MLP GroupNorms and of the attention projection's BatchNorm, whose
    official module paths contain no "norm". ``norm_bias``: no decay for any norm parameter or bias."""
    if mode == "none":
        return True
    if param_name == "bias":
        return False
    if not isinstance(module, NORM_TYPES):
        return True
    if mode == "official":
        return isinstance(module, nn.GroupNorm) or module_name.endswith("attn.proj.bn")
    return False


def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "official") -> list[dict]:
    """Two AdamW parameter groups, with and without weight decay (see ``Recipe.no_decay`` for the modes)."""
    decay, plain, seen = [], [], set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if _decayed(module_name, module, param_name, no_decay) else plain).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def no_decay_names(model: nn.Module, no_decay: str = "official") -> list[str]:
    """Names of the parameters that get no weight decay (for inspection and tests)."""
    out = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if not _decayed(module_name, module, param_name, no_decay):
                out.append(f"{module_name}.{param_name}" if module_name else param_name)
    return out


def create_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                     no_decay: str = "official", capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters. On CUDA the fused kernel is used; ``capturable`` makes the
    step CUDA-graph safe (lr becomes a device tensor, filled in place by the scheduler)."""
    device = next(model.parameters()).device
    kwargs: dict = dict(betas=tuple(betas), eps=eps)
    if device.type == "cuda":
        kwargs["fused"] = True
        if capturable:
            kwargs["capturable"] = True
            lr = torch.tensor(float(lr), device=device)
    return torch.optim.AdamW(param_groups(model, weight_decay, no_decay), lr=lr, **kwargs)


@dataclass(frozen=True)
class StepClock:
    """Optimizer steps of a run on the official micro-batch clock.

    The official trainer counts *micro-batches* (its ``global_step``): the learning-rate schedule, the EMA
    warm-up, the drop-path schedule and the MESA start all read that count, and "progress" excludes the
    warm-up epochs. With ``accumulation`` = 1 a micro-batch is an optimizer step.
    """

    micro_per_epoch: int
    epochs: int
    warmup_epochs: float
    accumulation: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_per_epoch // self.accumulation

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_micro(self) -> int:
        return round(self.warmup_epochs * self.micro_per_epoch)

    @property
    def total_micro(self) -> int:
        return self.epochs * self.micro_per_epoch

    def micro(self, step: int) -> int:
        """Micro-batches done before optimizer step ``step`` (0-based)."""
        return step * self.accumulation

    def lr_factor(self, step: int, min_ratio: float = 0.0) -> float:
        """The fraction of the peak lr that optimizer step ``step`` uses: linear warm-up from 0 ((t + 1) / W
        at micro-batch t), then cosine to ``min_ratio``. Under accumulation the step uses the value of its
        last micro-batch, as the official scheduler steps once per micro-batch."""
        t = self.micro(step) + self.accumulation - 1
        warmup = self.warmup_micro
        if t < warmup:
            return (t + 1) / warmup
        span = max(1, self.total_micro - warmup)
        done = min(1.0, (t - warmup) / span)
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * done))

    def progress(self, step: int) -> float:
        """Training progress after warm-up at optimizer step ``step`` (0 during warm-up, 1 at the end)."""
        span = max(1, self.total_micro - self.warmup_micro)
        return min(1.0, max(0, self.micro(step) - self.warmup_micro) / span)


def create_scheduler(optimizer: torch.optim.Optimizer, clock: StepClock, peak_lr: float, min_lr: float = 0.0,
                     step: int = 0) -> LambdaLR:
    """torch's ``LambdaLR`` over optimizer steps with the clock's warm-up + cosine, positioned at ``step``
    (a resumed run). Call ``scheduler.step()`` after every optimizer step. A tensor lr (CUDA-graph step) is
    filled in place."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", peak_lr)  # a float base lr: the per-step update stays one fill
    ratio = min_lr / peak_lr if peak_lr > 0 else 0.0
    return LambdaLR(optimizer, lambda s: clock.lr_factor(s, ratio), last_epoch=step - 1)
