"""Full training with a recipe: one process or many (torchrun), resumable, with metrics and checkpoints.

``fit(model_or_config, data, recipe, out_dir)`` trains and writes into ``out_dir``:

* ``checkpoints/step_*/`` + ``latest.json`` (see :mod:`.checkpoint`): every ``save_every_steps`` optimizer
  steps and at every epoch end; ``resume=True`` continues from the latest one exactly (same batches, same
  augmentation, same random state), so an interrupted run ends with the weights of an uninterrupted one.
* ``metrics.jsonl`` (train rows every ``log_every`` steps, an ``epoch`` row after each evaluation) and
  ``metrics.csv`` (the epoch rows).
* ``best.safetensors`` (the evaluated weights of the best epoch: EMA with re-estimated BatchNorm),
  ``model.safetensors`` / ``ema.safetensors`` (final), ``config.yaml``, ``recipe.yaml``, ``result.json``.

Runtime notes: precision and channels-last apply on CUDA (CPU runs fp32, contiguous); ``fast_groupnorm``
switches the GroupNorm pre-norms to a layout-preserving form (:mod:`.fastpath`). ``cuda_graph``
captures the step (single process, no accumulation); ``compile`` wraps the model in ``torch.compile``.
Both bake drop-path rates into what they build, so with either the progress schedule of drop path is
applied in 8 levels (at most 8 recaptures / recompiles per run) instead of every step.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import data as data_mod
from ..arch import LowFormer, resolve_config
from ..arch.model import residual_branches, set_drop_path
from ..errors import ConfigError, LowspaceError
from ..io import atomic_write_json
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .ema import ModelEMA
from .evaluate import Evaluator, reestimate_bn
from .fastpath import channels_last_groupnorm
from .losses import BatchMixer, classification_loss, mesa_loss, soft_targets
from .metrics import MetricsLog, TrainProgress
from .optim import create_optimizer, lr_at, set_lr
from .recipe import Recipe, load_recipe
from .step import TrainStep

_DROP_PATH_LEVELS = 7  # quantization of the drop-path schedule under compile / CUDA graphs (8 values)


class TrainingError(LowspaceError):
    """Training cannot go on (diverged loss, a run directory that would be overwritten, ...)."""


@dataclass
class FitResult:
    """What :func:`fit` returns (rank 0's view; every rank gets the same numbers)."""

    top1: float | None
    top5: float | None
    best_top1: float | None
    best_epoch: int | None
    epochs_run: int
    steps: int
    history: list[dict]
    out_dir: Path
    train_s: float
    interrupted: bool = False
    info: dict = field(default_factory=dict)


def build_model(model_or_config, data: data_mod.ImageData, recipe: Recipe) -> tuple[nn.Module, object]:
    """The model to train (built from a config adapted to the data's channels and classes, with the recipe's
    drop path and init, seeded by ``recipe.seed``), and its ArchConfig (None for a foreign module)."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config, getattr(model_or_config, "cfg", None)
    cfg = resolve_config(model_or_config).replace(num_classes=data.num_classes, in_chans=data.in_chans)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LowFormer(cfg, drop_path_rate=recipe.drop_path, drop_path_skip=recipe.drop_path_skip,
                          init=recipe.init)
    return model, cfg


def model_in_chans(model: nn.Module, cfg) -> int:
    if cfg is not None:
        return cfg.in_chans
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def build_loaders(data: data_mod.ImageData, recipe: Recipe, info: dist_utils.DistInfo, in_chans: int,
                  eval_resolution: int, channels_last: bool):
    """(train, val, bn-re-estimation) loaders for ``data`` under ``recipe`` on this rank."""
    world, rank, device = info.world_size, info.rank, info.device
    plan = data_mod.BatchPlan(len(data.train), recipe.batch_size, world, rank, recipe.accumulation,
                              shuffle=True, drop_last=True, sizes=tuple(recipe.resolutions), seed=recipe.seed)
    if plan.steps == 0:
        raise ConfigError("recipe.batch_size", recipe.batch_size,
                          f"batch_size x processes x accumulation = {plan.global_batch * recipe.accumulation} "
                          f"exceeds the {len(data.train)} training images")
    if data.val is None or len(data.val) == 0:
        raise data_mod.DataError(f"{data.name}: no validation images")
    val_plan = data_mod.BatchPlan(len(data.val), recipe.eval_batch_size, world, rank, shuffle=False,
                                  drop_last=False, seed=recipe.seed)
    n_bn = min(recipe.bn_reestimate_images, len(data.train))
    bn_indices = sorted(torch.randperm(len(data.train), generator=data_mod.sampling.seeded_generator(
        recipe.seed, 6))[:n_bn].tolist()) if n_bn else []
    bn_split = data.train.select(bn_indices)
    bn_plan = data_mod.BatchPlan(max(1, len(bn_split)), recipe.bn_reestimate_batch, world, rank, shuffle=False,
                                 drop_last=False, seed=recipe.seed)
    if data.kind == "tensor":
        augment = data_mod.Augment(hflip=recipe.hflip, translate=recipe.translate, scale=tuple(recipe.scale),
                                   ratio=tuple(recipe.ratio))

        def tensor_loader(split, p, res, aug):
            return data_mod.TensorLoader(split, p, device, res, data.mean, data.std, augment=aug,
                                         eval_crop=recipe.crop_pct, out_chans=in_chans, channels_last=channels_last)
        train = tensor_loader(data.train, plan, max(recipe.resolutions), augment)
        val = tensor_loader(data.val, val_plan, eval_resolution, None)
        bn = tensor_loader(bn_split, bn_plan, eval_resolution, None) if n_bn else None
    else:
        skip_bad = bool(data.info.get("skip_bad"))
        train_tf = data_mod.train_transforms(data.mean, data.std, recipe.randaugment, recipe.reprob,
                                             recipe.interpolation, recipe.scale, recipe.ratio, recipe.hflip)
        eval_tf = data_mod.eval_transforms(data.mean, data.std, recipe.crop_pct)
        workers = recipe.workers

        def folder_loader(split, p, res, tf, augment_seed):
            return data_mod.FolderLoader(split, p, device, res, tf, workers=workers, channels_last=channels_last,
                                         skip_bad=skip_bad, augment_seed=augment_seed)
        train = folder_loader(data.train, plan, max(recipe.resolutions), train_tf, True)
        val = folder_loader(data.val, val_plan, eval_resolution, eval_tf, False)
        bn = folder_loader(bn_split, bn_plan, eval_resolution, eval_tf, False) if n_bn else None
    return train, val, bn


class _DropPathSchedule:
    """Scales the per-branch drop-path rates by training progress (0 during warmup, 1 at the end)."""

    def __init__(self, model: nn.Module, recipe: Recipe, warmup_steps: int, total_steps: int, levels: int | None):
        self.branches = residual_branches(model) if isinstance(model, LowFormer) else []
        self.base = set_drop_path(model, recipe.drop_path, recipe.drop_path_skip) if self.branches else []
        self.constant = recipe.drop_path_schedule == "constant"
        self.warmup, self.total, self.levels = warmup_steps, total_steps, levels
        self.scale = None

    def update(self, step: int) -> bool:
        """Set the rates for ``step``; True when they changed."""
        if not self.branches:
            return False
        if self.constant:
            scale = 1.0
        else:
            scale = max(0.0, step - self.warmup) / max(1, self.total - self.warmup)
            if self.levels:
                scale = math.floor(scale * self.levels) / self.levels
        if scale == self.scale:
            return False
        self.scale = scale
        for branch, p in zip(self.branches, self.base):
            branch.drop_prob = p * scale
        return True


def fit(model_or_config, data, recipe=None, out_dir: str | Path = "runs/train", *, device=None,
        resume: bool = False, max_steps: int | None = None, progress: bool = True, **overrides) -> FitResult:
    """Train with a recipe (see the module docstring). Works in one process or under torchrun.

    Args:
        model_or_config: a preset name, YAML path, ArchConfig or an ``nn.Module``.
        data: an :class:`~lowspace.data.ImageData` or a spec for :func:`lowspace.data.get_dataset`.
        recipe: a recipe name (``b1``...), YAML path, dict or :class:`Recipe` (default: ``b1``).
        out_dir: the run directory.
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA if available; under torchrun the local GPU).
        resume: continue from ``out_dir``'s latest checkpoint (start fresh if there is none).
        max_steps: stop after this many optimizer steps in total (a checkpoint is written first).
        progress: show the progress bar (rank 0).
        **overrides: recipe fields to change (``epochs=10``...).
    """
    recipe = load_recipe(recipe, **overrides)
    info = dist_utils.setup(device)
    try:
        return _fit(model_or_config, data, recipe, Path(out_dir), info, resume, max_steps, progress)
    finally:
        dist_utils.teardown(info)


def _fit(model_or_config, data, recipe: Recipe, out_dir: Path, info: dist_utils.DistInfo, resume: bool,
         max_steps: int | None, progress: bool) -> FitResult:
    device, main = info.device, info.is_main
    cuda = device.type == "cuda"
    precision = recipe.precision if cuda else "fp32"
    channels_last = recipe.channels_last and cuda
    if not isinstance(data, data_mod.ImageData):
        data = data_mod.get_dataset(data, seed=recipe.seed)
    model, cfg = build_model(model_or_config, data, recipe)
    in_chans = model_in_chans(model, cfg)
    eval_resolution = recipe.eval_resolution or (cfg.resolution if cfg is not None else max(recipe.resolutions))

    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None and not resume:
        raise TrainingError(f"{out_dir} already holds a run (checkpoint {latest.name}); pass resume=True "
                            f"(--resume) to continue it, or choose another output directory")

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if recipe.fast_groupnorm:
            channels_last_groupnorm(model)
    if info.distributed and recipe.sync_bn:
        if not cuda:
            raise ConfigError("recipe.sync_bn", True, "SyncBatchNorm needs CUDA; use false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    graph_mode = recipe.cuda_graph and cuda and not info.distributed and recipe.accumulation == 1
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if recipe.compile:
        net = torch.compile(net, mode=recipe.compile_mode)

    train_loader, val_loader, bn_loader = build_loaders(data, recipe, info, in_chans, eval_resolution, channels_last)
    steps_per_epoch = train_loader.steps_per_epoch
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
    peak_lr = recipe.scaled_lr(info.world_size)
    images_per_step = recipe.batch_size * info.world_size * recipe.accumulation

    optimizer = create_optimizer(model, peak_lr, recipe.weight_decay, recipe.betas, recipe.eps, recipe.no_decay,
                                 capturable=graph_mode)
    ema = ModelEMA(model, recipe.ema_decay, recipe.ema_warmup_steps) if recipe.ema else None
    drop_path = _DropPathSchedule(model, recipe, warmup_steps, total_steps,
                                  _DROP_PATH_LEVELS if (graph_mode or recipe.compile) else None)
    mixer = None
    if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
        mixer = BatchMixer(data.num_classes, recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_prob,
                           recipe.mix_switch_prob, recipe.label_smoothing)
    mesa_on = [False]
    teacher = ema.module if (ema is not None and recipe.mesa > 0) else None

    def loss_fn(logits, target, x):
        loss = classification_loss(logits, target, recipe.loss, recipe.label_smoothing)
        if mesa_on[0]:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loss + recipe.mesa * mesa_loss(logits, teacher_logits)
        return loss

    train_step = TrainStep(model, optimizer, loss_fn, net=net, precision=precision,
                           clip_value=recipe.clip_grad_value, cuda_graph=graph_mode)
    metrics = MetricsLog(out_dir, enabled=main)

    # ----------------------------------------------------------------------------- state / resume
    step, best_top1, best_epoch, history, train_s, images_seen = 0, None, None, [], 0.0, 0
    partial = dict(loss_sum=0.0, loss_count=0)  # the running epoch's loss, carried across a resume
    torch.manual_seed(recipe.seed + info.rank)  # drop path and other model randomness, per rank
    if resume and latest is not None:
        loaded = ckpt.load_checkpoint_dir(latest)
        saved_arch = loaded.state.get("arch_id")
        if cfg is not None and saved_arch and saved_arch != cfg.arch_id:
            raise ckpt.ResumeError(f"{latest}: was trained with architecture {saved_arch}, not {cfg.arch_id}")
        if loaded.state.get("images_per_step", images_per_step) != images_per_step:
            raise ckpt.ResumeError(f"{latest}: global batch was {loaded.state['images_per_step']} images per step, "
                                   f"now {images_per_step}; resume with the same batch, processes and accumulation")
        model.load_state_dict(loaded.model)
        if ema is not None and loaded.ema is not None:
            ema.load_state_dict(loaded.ema)
        optimizer.load_state_dict(loaded.state["optimizer"])
        _fix_lr_tensors(optimizer, device, graph_mode)
        prog = loaded.state["progress"]
        step, best_top1, best_epoch = prog["step"], prog["best_top1"], prog["best_epoch"]
        history, train_s, images_seen = list(prog["history"]), prog["train_s"], prog["images_seen"]
        ranks = loaded.state["ranks"]
        mine = ranks[info.rank] if info.rank < len(ranks) else ranks[0]
        ckpt.set_rng_state(mine["rng"])
        partial.update(mine["partial"])
        metrics.truncate(step)
    elif main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            cfg.to_yaml(out_dir / "config.yaml")
        recipe.to_yaml(out_dir / "recipe.yaml")

    def save(epoch_done: bool) -> None:
        loss_sum, count = (0.0, 0) if epoch_done else (acc["loss_sum"].item(), acc["loss_count"])
        mine = dict(rng=ckpt.rng_state(), partial=dict(loss_sum=loss_sum, loss_count=count))
        ranks = [mine]
        if info.distributed:  # every rank's RNG and running loss, so each continues its own
            ranks = [None] * info.world_size
            torch.distributed.all_gather_object(ranks, mine)
        if main:
            state = dict(optimizer=optimizer.state_dict(), ranks=ranks, step=step, arch_id=cfg.arch_id if cfg else None,
                         images_per_step=images_per_step, recipe=recipe.to_dict(), epoch_done=epoch_done,
                         progress=dict(step=step, best_top1=best_top1, best_epoch=best_epoch, history=history,
                                       train_s=train_s, images_seen=images_seen))
            ckpt.save_checkpoint(out_dir, step, model.state_dict(), ema.state_dict() if ema else None, state,
                                 recipe.keep_checkpoints)
        dist_utils.barrier()

    eval_copy: list[nn.Module] = []
    acc: dict = {}

    def evaluate_now() -> dict:
        source = ema.module if (recipe.eval_model == "ema" and ema is not None) else model
        target = source
        if bn_loader is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if not eval_copy:
                eval_copy.append(copy.deepcopy(source))
            target = eval_copy[0]
            target.load_state_dict(source.state_dict())
            reestimate_bn(target, bn_loader.epoch(0), precision)
        result = Evaluator(target, precision)(val_loader.epoch(0))
        result["weights"] = target
        return result

    # ----------------------------------------------------------------------------- the loop
    start_epoch = step // steps_per_epoch
    interrupted = False
    last_eval: dict | None = history[-1] if history else None
    with TrainProgress(total_steps, step, enabled=progress and main) as bar:
        for epoch in range(start_epoch, recipe.epochs):
            micro_start = (step % steps_per_epoch) * recipe.accumulation
            if drop_path.update(step) and drop_path.levels:
                train_step.invalidate()
            acc = dict(loss_sum=torch.full((), partial["loss_sum"], device=device), loss_count=partial["loss_count"])
            partial.update(loss_sum=0.0, loss_count=0)
            epoch_start, epoch_images = time.perf_counter(), 0
            group: list = []
            for micro, (x, y) in enumerate(train_loader.epoch(epoch, micro_start), start=micro_start):
                if mixer is not None:
                    x, target = mixer(x, y, data_mod.mix_seed(recipe.seed, 5, epoch, micro, info.rank))
                elif recipe.loss == "bce":
                    target = soft_targets(y, data.num_classes, recipe.label_smoothing)
                else:
                    target = y
                group.append((x, target))
                if len(group) < recipe.accumulation:
                    continue
                lr = lr_at(step, total_steps, warmup_steps, peak_lr, recipe.min_lr)
                set_lr(optimizer, lr)
                if drop_path.levels is None:
                    drop_path.update(step)
                mesa_on[0] = teacher is not None and step / total_steps >= recipe.mesa_start
                loss = train_step(group, variant=mesa_on[0])
                acc["loss_sum"] += loss
                acc["loss_count"] += 1
                group = []
                step += 1
                images_seen += images_per_step
                epoch_images += images_per_step
                if ema is not None:
                    ema.update(model, step)
                if step % recipe.log_every == 0 or step == total_steps:
                    value = loss.item()
                    if not math.isfinite(value):
                        raise TrainingError(f"loss became {value} at step {step} (lr {lr:.3g}); lower the "
                                            f"learning rate or check the data")
                    rate = bar.update(step, images_seen, value, lr, f"epoch {epoch + 1}/{recipe.epochs}")
                    metrics.log(dict(kind="train", epoch=epoch, step=step, loss=value, lr=lr, images_per_s=rate))
                stop = max_steps is not None and step >= max_steps
                periodic = recipe.save_every_steps and step % recipe.save_every_steps == 0
                if (periodic or stop) and step % steps_per_epoch:  # epoch ends save after evaluating
                    save(epoch_done=False)
                    if stop:
                        interrupted = True
                        break
            if interrupted:
                break
            if cuda:
                torch.cuda.synchronize(device)
            epoch_s = time.perf_counter() - epoch_start
            train_s += epoch_s
            mean_loss = torch.stack([acc["loss_sum"], torch.tensor(float(acc["loss_count"]), device=device)])
            dist_utils.all_reduce_sum(mean_loss)
            train_loss = (mean_loss[0] / mean_loss[1].clamp_min(1)).item()
            row = dict(kind="epoch", epoch=epoch + 1, step=step, train_loss=train_loss,
                       lr=lr_at(max(step - 1, 0), total_steps, warmup_steps, peak_lr, recipe.min_lr),
                       epoch_s=epoch_s, images_per_s=epoch_images / max(epoch_s, 1e-9))
            if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
                result = evaluate_now()
                weights = result.pop("weights")
                row.update(top1=result["top1"], top5=result["top5"], val_loss=result["loss"])
                if best_top1 is None or result["top1"] > best_top1:
                    best_top1, best_epoch = result["top1"], epoch + 1
                    if main:
                        ckpt.save_weights(out_dir / "best.safetensors", weights.state_dict())
                last_eval = row
            row["best_top1"] = best_top1
            history.append(row)
            metrics.log(row)
            save(epoch_done=True)
            if max_steps is not None and step >= max_steps and epoch + 1 < recipe.epochs:
                interrupted = True
                break

    result = FitResult(top1=last_eval.get("top1") if last_eval else None,
                       top5=last_eval.get("top5") if last_eval else None, best_top1=best_top1,
                       best_epoch=best_epoch, epochs_run=len(history), steps=step, history=history,
                       out_dir=out_dir, train_s=train_s, interrupted=interrupted,
                       info=dict(train_step=train_step.info, world_size=info.world_size, precision=precision,
                                 device=str(device), lr=peak_lr, images_per_step=images_per_step,
                                 steps_per_epoch=steps_per_epoch, data=data.describe()))
    if data.kind == "tensor" and (recipe.randaugment or recipe.reprob):
        result.info["note"] = ("RandAugment and random erasing apply to class-folder data; tensor data was "
                               "augmented on the device (random-resized crop, translation, flip)")
    if main and not interrupted:
        ckpt.save_weights(out_dir / "model.safetensors", model.state_dict())
        if ema is not None:
            ckpt.save_weights(out_dir / "ema.safetensors", ema.state_dict())
        atomic_write_json(out_dir / "result.json", dict(
            top1=result.top1, top5=result.top5, best_top1=best_top1, best_epoch=best_epoch, steps=step,
            epochs=len(history), train_s=train_s, data=data.describe(), recipe=recipe.name, info=result.info))
    return result


def _fix_lr_tensors(optimizer: torch.optim.Optimizer, device: torch.device, graph_mode: bool) -> None:
    """After loading a state dict, keep lr a device tensor (graph mode) or a float (otherwise)."""
    shared = None
    for group in optimizer.param_groups:
        value = float(group["lr"])
        if graph_mode:
            if shared is None:
                shared = torch.tensor(value, device=device)
            group["lr"] = shared
        else:
            group["lr"] = value
