"""Evaluation: top-1 / top-5 / loss over batches (sharded over ranks), BatchNorm re-estimation."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from . import distributed as dist_utils
from .step import DTYPES


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


class Evaluator:
    """Computes top-1, top-5 and mean cross-entropy of ``model`` over a stream of ``(images, labels)``.

    With ``cuda_graph`` every full-size batch shape gets a captured forward (``lowspace.runtime``, checked
    against eager once) that stays valid while training updates the weights in place; short batches run
    eagerly. Sums are all-reduced over processes when distributed.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", cuda_graph: bool = False):
        self.model = model
        self.precision = precision
        self.device = next(model.parameters()).device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.runners: dict = {}
        self.info: dict = {}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_graph:
            key = (tuple(x.shape), x.dtype)
            runner = self.runners.get(key)
            if runner is None and len(self.runners) < 4:
                from ..runtime import BackendError, prepare
                try:
                    runner = prepare(self.model, x, backend="cuda_graph", precision=self.precision)
                    self.runners[key] = runner
                except BackendError as err:
                    self.cuda_graph = False
                    self.info["cuda_graph"] = f"off: {err}"
            if runner is not None:
                runner.input.copy_(x)
                return runner()
        with torch.inference_mode(), _autocast(self.device, self.precision):
            return self.model(x)

    @torch.no_grad()
    def __call__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # top1, top5, loss (no host sync per batch)
        count = 0
        try:
            for x, y in batches:
                logits = self._forward(x).float()
                k = min(5, logits.shape[1])
                hit = logits.topk(k, dim=1).indices.eq(y.view(-1, 1))
                sums += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(),
                                     F.cross_entropy(logits, y, reduction="sum")]).to(torch.float64)
                count += y.shape[0]
        finally:
            self.model.train(was_training)
        total = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64).to(self.device)])
        dist_utils.all_reduce_sum(total)
        top1, top5, loss, count = total.tolist()
        count = max(count, 1.0)
        return dict(top1=100.0 * top1 / count, top5=100.0 * top5 / count, loss=loss / count, images=int(count))


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  precision: str = "fp32") -> int:
    """Replace every BatchNorm's running statistics by averages over ``batches`` (the model otherwise in
    eval mode: no drop path). Averaged over processes when distributed. Returns the images used."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    seen = 0
    try:
        with _autocast(device, precision):
            for x, _ in batches:
                model(x)
                seen += x.shape[0]
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    world = dist_utils.world_size()
    if world > 1:
        # combine per-rank means / variances: E[x^2] = var + mean^2 averaged over ranks
        for m in norms:
            mean, var = m.running_mean, m.running_var
            second = var + mean * mean
            dist_utils.all_reduce_sum(mean)
            dist_utils.all_reduce_sum(second)
            mean /= world
            second /= world
            var.copy_(second - mean * mean)
        total = torch.tensor(float(seen), device=device)
        dist_utils.all_reduce_sum(total)
        seen = int(total.item())
    return seen


def evaluate_model(model: nn.Module, data, resolution: int, crop_pct: float = 0.95, batch_size: int = 200,
                   precision: str = "auto", channels_last: bool | None = None, workers: int = 8,
                   interpolation: str = "bicubic") -> dict:
    """Top-1 / top-5 / loss of ``model`` (already on its device) on ``data``'s val split at ``resolution``
    (resize to resolution / crop_pct, center crop). Sharded over processes under torchrun."""
    from .. import data as data_mod
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
    channels_last = cuda if channels_last is None else channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if data.val is None or len(data.val) == 0:
        raise data_mod.DataError(f"{data.name}: no validation images")
    plan = data_mod.BatchPlan(len(data.val), batch_size, dist_utils.world_size(), dist_utils.rank(), shuffle=False,
                              drop_last=False)
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), data.in_chans)
    if data.kind == "tensor":
        loader = data_mod.TensorLoader(data.val, plan, device, resolution, data.mean, data.std, augment=None,
                                       eval_crop=crop_pct, out_chans=in_chans, channels_last=channels_last)
    else:
        loader = data_mod.FolderLoader(data.val, plan, device, resolution,
                                       data_mod.eval_transforms(data.mean, data.std, crop_pct, interpolation),
                                       workers=workers,
                                       channels_last=channels_last, augment_seed=False)
    result = Evaluator(model, precision)(loader.epoch(0))
    result.update(resolution=resolution, crop_pct=crop_pct, precision=precision)
    return result
