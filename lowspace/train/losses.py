"""Losses and target mixing: BCE / cross-entropy on (soft) targets, mixup / cutmix, MESA."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def numpy_seeded(seed: int):
    """Seed numpy's global RNG (timm's Mixup draws from it) for a block, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        np.random.set_state(state)


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 - s + s/C`` on the label, ``s/C`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=torch.float32)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class BatchMixer:
    """Mixup or CutMix on a batch, one of them per call with ``switch_prob`` (timm's ``Mixup`` in
    ``batch`` mode: one lambda per batch, paired with the reversed batch; odd batch sizes allowed).
    Returns the mixed images (in place) and smoothed soft targets."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
        from timm.data import Mixup
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                           mode="batch", label_smoothing=smoothing, num_classes=num_classes)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target
        with numpy_seeded(seed):
            lam = self.mixup._mix_batch(x)  # noqa: SLF001 - the batch-mode mixer; its __call__ rejects odd batches
        return x, mixup_target(labels, self.num_classes, lam, self.smoothing)


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``bce`` (mean over batch x classes, soft targets) or ``ce`` (soft targets or int labels)."""
    logits = logits.float()
    if kind == "bce":
        if target.dtype == torch.long:
            target = soft_targets(target, logits.shape[1], label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, target)
    if target.dtype == torch.long:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, target)


def mesa_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MESA self-distillation: BCE of the logits against the sigmoid of the EMA model's logits."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.sigmoid(teacher_logits.float()))
