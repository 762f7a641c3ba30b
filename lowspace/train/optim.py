"""Optimizer and learning-rate schedule: AdamW with weight-decay exclusions, warmup + cosine per step."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _decayed(module_name: str, module: nn.Module, param_name: str, mode: str) -> bool:
    if mode == "none":
        return True
    if param_name == "bias":
        return False
    if not isinstance(module, NORM_TYPES):
        return True
    if mode == "official":
        # upstream's name rule misses these two: the pre-attention / pre-MLP GroupNorms and the BatchNorm of
        # the attention's depthwise projection (module paths without "norm"); their weights are decayed there
        return isinstance(module, nn.GroupNorm) or module_name.endswith("attn.proj.bn")
    return False


def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "norm_bias") -> list[dict]:
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


def no_decay_names(model: nn.Module, no_decay: str = "norm_bias") -> list[str]:
    """Names of the parameters that get no weight decay (for inspection and tests)."""
    out = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if not _decayed(module_name, module, param_name, no_decay):
                out.append(f"{module_name}.{param_name}" if module_name else param_name)
    return out


def create_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                     no_decay: str = "norm_bias", capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters. On CUDA the fused kernel is used; ``capturable`` makes the
    step CUDA-graph safe (lr becomes a device tensor, updated in place by :func:`set_lr`)."""
    device = next(model.parameters()).device
    kwargs: dict = dict(betas=tuple(betas), eps=eps)
    if device.type == "cuda":
        kwargs["fused"] = True
        if capturable:
            kwargs["capturable"] = True
            lr = torch.tensor(float(lr), device=device)
    return torch.optim.AdamW(param_groups(model, weight_decay, no_decay), lr=lr, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor lr (CUDA-graph step) is filled in place, no host sync."""
    done = set()
    for group in optimizer.param_groups:
        current = group["lr"]
        if isinstance(current, torch.Tensor):
            if id(current) not in done:
                current.fill_(lr)
                done.add(id(current))
        else:
            group["lr"] = lr


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup from 0 over ``warmup_steps``
    (step i gets peak * (i + 1) / warmup), then cosine from ``peak`` to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * t))
