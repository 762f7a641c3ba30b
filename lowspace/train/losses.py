"""Losses and target mixing: BCE / cross-entropy (timm's losses), MESA, and mixup / cutmix as the official
trainer does it (one lambda and one operation per batch, one cutmix box per image)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from timm.data.mixup import mixup_target
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from ..data.sampling import mix_seed


class TrainLoss:
    """``loss(logits, target, images)``: ``bce`` (timm's ``BinaryCrossEntropy``: labels are smoothed,
    soft targets taken as they are) or ``ce`` (soft targets: timm's ``SoftTargetCrossEntropy``; labels:
    cross-entropy with label smoothing); plus, while ``mesa_on``, MESA self-distillation: ``mesa`` x BCE of
    the logits against the sigmoid of ``teacher``'s logits (the EMA model)."""

    def __init__(self, kind: str = "bce", smoothing: float = 0.0, mesa: float = 0.0, teacher: nn.Module | None = None):
        self.bce = BinaryCrossEntropy(smoothing=smoothing)
        self.kind = kind
        self.soft_ce = SoftTargetCrossEntropy()
        self.hard_ce = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.mesa = mesa
        self.teacher = teacher
        self.mesa_on = False

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "bce":
            return self.bce(logits, target)
        return self.soft_ce(logits, target) if target.is_floating_point() else self.hard_ce(logits, target)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(logits, target)
        if self.mesa_on and self.teacher is not None:
            with torch.no_grad():
                soft = torch.sigmoid(self.teacher(images).float())
            loss = loss + self.mesa * self.bce(logits.float(), soft)
        return loss


class BatchMixer:
    """Mixup or CutMix on a batch, as the official trainer: with probability ``prob`` a batch is mixed; the
    operation is CutMix with probability ``switch_prob``, else mixup; one lambda ~ Beta(alpha, alpha) per
    batch. CutMix pastes one box per image (the box size follows lambda, its centre is drawn per image) and
    corrects each image's lambda to the pasted area. Image i is mixed with image B-1-i of the (shuffled)
    batch. Targets are smoothed one-hot labels mixed with the same lambdas (timm's ``mixup_target``).

    Every draw comes from ``seed``: the operation and lambda from a numpy generator (the same on every rank,
    as the official trainer shares the root's), box centres from a torch generator on the batch's device
    seeded with ``seed`` and ``rank`` (no host-device copy, so no synchronization). Any batch size works.
    """

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, smoothing
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, seed: int,
                 rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        mix = rng.random() < self.prob
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        if not mix or alpha <= 0:
            return x, mixup_target(labels, self.num_classes, 1.0, self.smoothing)
        lam = float(rng.beta(alpha, alpha))
        if cutmix:
            lam = self._cutmix(x, lam, mix_seed(seed, rank))
        else:
            partner = x.flip(0)  # a copy, taken before x changes
            x.mul_(lam).add_(partner, alpha=1.0 - lam)
        return x, mixup_target(labels, self.num_classes, lam, self.smoothing)

    def _cutmix(self, x: torch.Tensor, lam: float, seed: int) -> torch.Tensor:
        """Paste one box per image from its partner (in place); returns the per-image lambdas (B, 1)."""
        n, _, h, w = x.shape
        g = self._generators.get(x.device)
        if g is None:
            g = self._generators[x.device] = torch.Generator(device=x.device)
        g.manual_seed(seed)
        cut = (1.0 - lam) ** 0.5
        cy = torch.randint(0, h, (n, 1), device=x.device, generator=g)
        cx = torch.randint(0, w, (n, 1), device=x.device, generator=g)
        ys = torch.arange(h, device=x.device).view(1, h)
        xs = torch.arange(w, device=x.device).view(1, w)
        # box edges as the official rand_bbox: centre -/+ half the box, clipped to the image, truncated
        rows = (ys >= (cy - h * cut / 2).clamp(0, h).floor()) & (ys < (cy + h * cut / 2).clamp(0, h).floor())
        cols = (xs >= (cx - w * cut / 2).clamp(0, w).floor()) & (xs < (cx + w * cut / 2).clamp(0, w).floor())
        inside = rows.view(n, 1, h, 1) & cols.view(n, 1, 1, w)
        x.copy_(torch.where(inside, x.flip(0), x))
        return 1.0 - inside.flatten(1).float().mean(1, keepdim=True)
