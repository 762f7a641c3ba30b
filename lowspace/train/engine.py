"""The training engine behind :func:`lowspace.train.fit` (full training) and :func:`lowspace.train.train_proxy`
(the search's proxy). Both run a :class:`~.recipe.Recipe` through the same plain functions:

``prepare_data`` -> ``build_model`` -> ``build`` (a :class:`Setup`: runtime, loaders, optimizer, EMA, loss,
step, evaluator) -> ``run``: per epoch ``train_epoch``, ``evaluate`` (BatchNorm statistics re-estimated in
place in the evaluated model), a checkpoint, and an auto-restart from the best epoch when top-1 drops.
:class:`TrainState` is what a checkpoint carries besides weights, optimizer and random state.

The fast path (the proxy recipe on a GPU): tensor data lives on the GPU and is augmented there, the whole
step is one CUDA-graph replay (:class:`~.step.TrainStep`), evaluation replays a captured forward, and the
loss is read back once per epoch (``log_every`` = 0). ``compile`` and ``cuda_graph`` bake drop-path rates
into what they build, so under either the progress schedule of drop path moves in 8 levels (at most 8
recaptures / recompiles per run) instead of every step.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import data as data_mod
from ..arch import LowFormer, pretrained_cfg_for, resolve_config
from ..arch.blocks import use_groupnorm_mode
from ..arch.model import residual_branches, set_drop_path
from ..cost.fingerprint import fingerprint
from ..errors import ConfigError, LowspaceError
from ..io import atomic_write_json
from ..provenance import provenance
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .distributed import DistInfo
from .ema import WarmupEMA
from .evaluate import Evaluator, reestimate_bn
from .losses import BatchMixer, TrainLoss
from .models import TimmModel, build_timm
from .metrics import MetricsLog, TrainProgress
from .optim import StepClock, create_optimizer, create_scheduler
from .recipe import Recipe
from .step import TrainStep

OnEpoch = Callable[[int, dict], Optional[bool]]
DROP_PATH_LEVELS = 7  # quantization of the drop-path schedule under compile / CUDA graphs (8 values)
MAX_RESTARTS = 5      # auto-restarts per run (the official trainer has no limit)
TIMM_RECORD = "timm.json"  # a timm run's model name in its run directory (LowFormer runs: config.yaml)
STORAGE_CROP = 0.875  # materialized class folders keep a margin: stored side = resolution / 0.875


class TrainingError(LowspaceError):
    """Training cannot go on (diverged loss, a run directory that would be overwritten, ...)."""


@dataclass
class FitResult:
    """What a training run returns (rank 0's view; every rank gets the same numbers).

    top1, top5: the last evaluation; best_top1 / best_epoch: the best one; history: one row per epoch (epoch,
    step, train_loss, lr, epoch_s, images_per_s, top1, top5, val_loss, best_top1, elapsed_s); train_s: time in
    training steps (graph capture and evaluation excluded); stopped_early: ``on_epoch`` asked to stop or the
    loss diverged; interrupted: ``max_steps`` stopped it; info: set-up details.
    """

    top1: float | None
    top5: float | None
    best_top1: float | None
    best_epoch: int | None
    epochs_run: int
    steps: int
    history: list[dict]
    train_s: float
    images_per_s: float
    stopped_early: bool = False
    interrupted: bool = False
    out_dir: Path | None = None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "out_dir": str(self.out_dir) if self.out_dir else None}


@dataclass
class TrainState:
    """Progress of a run: everything a checkpoint holds besides weights, optimizer and random state."""

    step: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    best_checkpoint: str | None = None  # the best epoch's checkpoint (relative to the run directory)
    history: list = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    images_seen: int = 0
    restarts: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Runtime:
    """How this process trains: its place among processes, precision, memory layout, CUDA-graph step."""

    dist: DistInfo
    precision: str
    channels_last: bool
    cuda_graph: bool

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_runtime(recipe: Recipe, dist: DistInfo) -> Runtime:
    """Precision and channels-last apply on CUDA (CPU runs fp32, contiguous); the CUDA-graph step needs one
    process and no accumulation."""
    cuda = dist.device.type == "cuda"
    return Runtime(dist, recipe.precision if cuda else "fp32", recipe.channels_last and cuda,
                   recipe.cuda_graph and cuda and not dist.distributed and recipe.accumulation == 1)


# ===================================================================================== data and model
def prepare_data(data, recipe: Recipe, resolution: int | None = None) -> data_mod.ImageData:
    """``data`` (an ImageData or a :func:`~lowspace.data.get_dataset` spec) with the recipe's validation split
    (:func:`select_validation`), reduced to the recipe's classes and training images per class; with
    ``materialize``, class folders decoded once into uint8 tensors of side ``storage_resolution`` (default
    ``resolution / 0.875``). Applying it twice changes nothing."""
    if not isinstance(data, data_mod.ImageData):
        data = data_mod.get_dataset(data, seed=recipe.seed)
    data = select_validation(data, recipe)
    test_cap = recipe.val_per_class if recipe.eval_split == "test" else None
    data = data.subset(recipe.classes, recipe.train_per_class, test_cap, recipe.seed)
    if data.kind == "folder" and recipe.materialize:
        storage = recipe.storage_resolution or (round(resolution / STORAGE_CROP) if resolution else None)
        if storage is None:
            raise ConfigError("recipe.storage_resolution", None, "an integer (or resolutions) to decode class folders")
        data = data_mod.materialize(data, storage, workers=recipe.workers)
    if len(data.train) == 0 or data.val is None or len(data.val) == 0:
        raise data_mod.DataError(f"{data.name}: needs training and validation images "
                                 f"({len(data.train)} / {len(data.val) if data.val is not None else 0})")
    return data


def select_validation(data: data_mod.ImageData, recipe: Recipe) -> data_mod.ImageData:
    """The images a run evaluates on. ``eval_split: holdout`` (the default): ``val_per_class`` training images
    of each class held out by :func:`~lowspace.data.hold_out` (seeded by ``split_seed``); data that already
    holds a held-out split is used as it is. ``eval_split: test``: the data set's own test split, which only a
    final evaluation should read."""
    if recipe.eval_split == "test":
        if data_mod.is_held_out(data):
            raise ConfigError("recipe.eval_split", "test", "this data's test split was replaced by images held out "
                                                           "from training; pass the data set as loaded")
        return data
    if data_mod.is_held_out(data):
        return data
    try:
        return data_mod.hold_out(data, recipe.val_per_class, seed=recipe.split_seed)
    except ConfigError as err:
        raise err.within("recipe") from None


def validation_summary(data: data_mod.ImageData) -> dict:
    """What a run was evaluated on, in a few keys: ``split`` (holdout / test), ``images`` and, for a held-out
    split, its ``seed`` and ``indices_sha256``."""
    record = data.info.get("validation")
    images = len(data.val) if data.val is not None else 0
    if not record:
        return dict(split="test", images=images)
    return dict(split="holdout", images=images, seed=record.get("seed"), indices_sha256=record.get("indices_sha256"))


def describe_validation(data: data_mod.ImageData) -> str:
    """One phrase naming the evaluation images, for logs."""
    summary = validation_summary(data)
    if summary["split"] == "test":
        return f"the test split ({summary['images']} images)"
    return (f"{summary['images']} training images held out (split seed {summary['seed']}, "
            f"{summary['indices_sha256']})")


def build_model(model_or_config, data: data_mod.ImageData, recipe: Recipe) -> tuple[nn.Module, object]:
    """The model to train and its ArchConfig (None for a module without one). A config (preset name, YAML,
    dict, ArchConfig) is adapted to the data's channels and classes and built with the recipe's drop path
    and init, seeded by ``recipe.seed``; a :class:`~.models.TimmModel` likewise (timm's init, the recipe's
    drop path as timm's ``drop_path_rate`` where the architecture has one); a module is trained as given (its
    classes must match the data; 1-channel images are repeated when its stem wants 3)."""
    if isinstance(model_or_config, nn.Module):
        model = model_or_config
        classes = getattr(model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise ConfigError("model.num_classes", classes, f"{data.num_classes} (the classes of {data.name}); "
                              f"pass a config instead and it is adapted")
        chans = model_in_chans(model, None)
        if chans != data.in_chans and data.in_chans != 1:
            raise ConfigError("model.in_chans", chans, f"{data.in_chans} (the channels of {data.name})")
        return model, getattr(model, "cfg", None)
    if isinstance(model_or_config, TimmModel):
        side = recipe.eval_resolution or max(train_sizes(recipe, model_or_config))
        return build_timm(model_or_config, data.num_classes, data.in_chans, recipe.drop_path, recipe.seed, side), None
    cfg = resolve_config(model_or_config).replace(num_classes=data.num_classes, in_chans=data.in_chans)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LowFormer(cfg, drop_path_rate=recipe.drop_path, drop_path_skip=recipe.drop_path_skip,
                          init=recipe.init)
    return model, cfg


def model_in_chans(model: nn.Module, cfg) -> int:
    if cfg is not None:
        return cfg.in_chans
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)


def train_sizes(recipe: Recipe, cfg) -> tuple[int, ...]:
    """Training resolutions: the recipe's, or the architecture's own (a config's or a timm model's) when it
    names none."""
    if recipe.resolutions:
        return tuple(recipe.resolutions)
    if isinstance(cfg, TimmModel):
        return (cfg.resolution,)
    if cfg is None:
        raise ConfigError("recipe.resolutions", None, "a list of resolutions when training a module without a config")
    return (cfg.resolution,)


@dataclass(frozen=True)
class EvalSettings:
    """How validation images are fed: resized to ``resolution / crop_pct`` with ``interpolation``, center-cropped."""

    resolution: int
    crop_pct: float
    interpolation: str = "bicubic"


def eval_settings(recipe: Recipe | None, model: nn.Module, cfg=None) -> EvalSettings:
    """What a recipe evaluates at: its ``eval_resolution`` / ``crop_pct`` where set, else the model's
    ``pretrained_cfg`` (input size, crop, interpolation; what ``lowspace eval`` uses too), else the largest
    training resolution, 0.95 and bicubic."""
    pcfg = getattr(model, "pretrained_cfg", None) or (pretrained_cfg_for(cfg) if cfg is not None else {})
    resolution = (recipe and recipe.eval_resolution) or (pcfg["input_size"][-1] if "input_size" in pcfg else None)
    if resolution is None:
        resolution = max(train_sizes(recipe, cfg))
    crop = (recipe and recipe.crop_pct) or pcfg.get("crop_pct", 0.95)
    return EvalSettings(resolution, crop, pcfg.get("interpolation", "bicubic"))


def batch_that_fits(recipe: Recipe, images: int, processes: int = 1) -> Recipe:
    """``recipe`` with a batch larger than ``images`` training images (over ``processes`` x accumulation)
    shrunk to the largest that fits, so a small data set trains one step per epoch; unchanged when it fits
    or cannot fit at all (:func:`build_loaders` then says so)."""
    per_step = processes * recipe.accumulation
    if recipe.batch_size * per_step <= images or images < per_step:
        return recipe
    return recipe.replace(batch_size=images // per_step)

@dataclass
class Loaders:
    train: object
    val: object
    bn: object | None  # the BatchNorm re-estimation subset (None: no re-estimation)


def build_loaders(data: data_mod.ImageData, recipe: Recipe, runtime: Runtime, in_chans: int, sizes: tuple[int, ...],
                  ev: EvalSettings, seed: int) -> Loaders:
    """Train / val / BN-re-estimation loaders for this rank. ``seed`` drives the training order and
    augmentation (the recipe's seed, or a new one after an auto-restart). The BN subset is a seeded choice of
    ``bn_reestimate_images`` training images, seen through the train transform at the eval size (official)
    or the eval transform, identically at every evaluation."""
    dist, device = runtime.dist, runtime.device
    plan = data_mod.BatchPlan(len(data.train), recipe.batch_size, dist.world_size, dist.rank, recipe.accumulation,
                              shuffle=True, drop_last=True, sizes=sizes, seed=seed)
    if plan.steps == 0:
        raise ConfigError("recipe.batch_size", recipe.batch_size,
                          f"batch_size x processes x accumulation = {plan.global_batch * recipe.accumulation} "
                          f"exceeds the {len(data.train)} training images")
    val_plan = data_mod.BatchPlan(len(data.val), recipe.eval_batch_size, dist.world_size, dist.rank, shuffle=False,
                                  drop_last=False, seed=recipe.seed)
    n_bn = min(recipe.bn_reestimate_images, len(data.train))
    bn_split = bn_plan = None
    if n_bn:
        pick = torch.randperm(len(data.train), generator=data_mod.sampling.seeded_generator(recipe.seed, 7))[:n_bn]
        bn_split = data.train.select(sorted(pick.tolist()))
        bn_plan = data_mod.BatchPlan(n_bn, recipe.bn_reestimate_batch, dist.world_size, dist.rank, shuffle=False,
                                     drop_last=False, seed=recipe.seed)
    bn_train = recipe.bn_reestimate_transform == "train"
    if data.kind == "tensor":
        augment = data_mod.Augment(hflip=recipe.hflip, translate=recipe.translate, scale=tuple(recipe.scale),
                                   ratio=tuple(recipe.ratio))
        # materialized folders were stored with a margin around the eval crop; other tensors use crop_pct
        crop = min(1.0, ev.resolution / data.native_resolution) if data.info.get("materialized") else ev.crop_pct

        def tensor_loader(split, p, res, aug):
            return data_mod.TensorLoader(split, p, device, res, data.mean, data.std, augment=aug,
                                         eval_crop=1.0 if aug is not None else crop, out_chans=in_chans,
                                         channels_last=runtime.channels_last)
        return Loaders(tensor_loader(data.train, plan, max(sizes), augment),
                       tensor_loader(data.val, val_plan, ev.resolution, None),
                       tensor_loader(bn_split, bn_plan, ev.resolution, augment if bn_train else None) if n_bn else None)
    on_device = data_mod.choose_loader(recipe.loader, data.kind, device) == "gpu"  # decode + augment on the GPU
    make_train_tf, make_eval_tf, make_loader = (
        (data_mod.DeviceTrainTransform, data_mod.DeviceEvalTransform, data_mod.DeviceFolderLoader) if on_device
        else (data_mod.train_transforms, data_mod.eval_transforms, data_mod.FolderLoader))
    kernel = dict(resample_kernel=recipe.gpu_resample) if on_device else {}
    train_tf = make_train_tf(data.mean, data.std, recipe.randaugment, recipe.reprob,
                             recipe.interpolation, recipe.scale, recipe.ratio, recipe.hflip, **kernel)
    eval_tf = make_eval_tf(data.mean, data.std, ev.crop_pct, ev.interpolation, **kernel)

    processes = dict(processes=recipe.loader_processes) if on_device else {}

    def folder_loader(split, p, res, tf, augmented, **more):
        return make_loader(split, p, device, res, tf, workers=recipe.workers,
                           channels_last=runtime.channels_last, skip_bad=bool(data.info.get("skip_bad")),
                           augment_seed=augmented, **more)
    return Loaders(folder_loader(data.train, plan, max(sizes), train_tf, True, **processes),
                   folder_loader(data.val, val_plan, ev.resolution, eval_tf, False),
                   folder_loader(bn_split, bn_plan, ev.resolution, train_tf if bn_train else eval_tf, bn_train)
                   if n_bn else None)


class DropPathSchedule:
    """Drop-path rates of a LowFormer's residual branches (linear by index, the first ``drop_path_skip``
    excluded), scaled by training progress after warm-up (``progress``, official) or constant. With
    ``levels`` the scale moves in steps of 1 / levels (compile / CUDA graphs bake rates in)."""

    def __init__(self, model: nn.Module, recipe: Recipe, clock: StepClock, levels: int | None):
        self.branches = residual_branches(model) if isinstance(model, LowFormer) else []
        self.base = set_drop_path(model, recipe.drop_path, recipe.drop_path_skip) if self.branches else []
        self.constant = recipe.drop_path_schedule == "constant"
        self.clock, self.levels = clock, levels
        self.scale = None

    def update(self, step: int) -> bool:
        """Set the rates for optimizer step ``step``; True when they changed."""
        if not self.branches:
            return False
        scale = 1.0 if self.constant else self.clock.progress(step)
        if self.levels and not self.constant:
            scale = math.floor(scale * self.levels) / self.levels
        if scale == self.scale:
            return False
        self.scale = scale
        for branch, p in zip(self.branches, self.base):
            branch.drop_prob = p * scale
        return True


# ===================================================================================== the set-up
@dataclass
class Setup:
    """Everything a run trains with, built once by :func:`build` (the scheduler after a resume)."""

    recipe: Recipe
    data: data_mod.ImageData
    cfg: object
    model: nn.Module
    net: nn.Module
    runtime: Runtime
    sizes: tuple[int, ...]
    ev: EvalSettings
    in_chans: int
    loaders: Loaders
    clock: StepClock
    peak_lr: float
    optimizer: torch.optim.Optimizer
    ema: WarmupEMA | None
    loss: TrainLoss
    mixer: BatchMixer | None
    train_step: TrainStep
    eval_model: nn.Module
    evaluator: Evaluator
    drop_path: DropPathSchedule
    out_dir: Path | None
    metrics: MetricsLog
    seed: int
    scheduler: object = None
    timm: str | None = None  # the timm model's name when the run trains one

    @property
    def images_per_step(self) -> int:
        return self.recipe.batch_size * self.runtime.dist.world_size * self.recipe.accumulation

    def lr_at(self, step: int) -> float:
        ratio = self.recipe.min_lr / self.peak_lr if self.peak_lr > 0 else 0.0
        return self.peak_lr * self.clock.lr_factor(step, ratio)


def build(model_or_config, data: data_mod.ImageData, recipe: Recipe, runtime: Runtime,
          out_dir: Path | None) -> Setup:
    """Model (on the device, layout and fast GroupNorm applied, wrapped for DDP / compile), loaders,
    optimizer, EMA, loss, mixer, training step, evaluator and drop-path schedule."""
    dist = runtime.dist
    model, cfg = build_model(model_or_config, data, recipe)
    in_chans = model_in_chans(model, cfg)
    sizes = train_sizes(recipe, model_or_config if isinstance(model_or_config, TimmModel) else cfg)
    ev = eval_settings(recipe, model, cfg)
    model.to(runtime.device).train()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
        if recipe.fast_groupnorm:
            use_groupnorm_mode(model, "channels_last")  # same function, no layout round trips
    if dist.distributed and recipe.sync_bn:
        if not runtime.cuda:
            raise ConfigError("recipe.sync_bn", True, "SyncBatchNorm needs CUDA; use false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if dist.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.cuda else None)
    if recipe.compile:
        net = torch.compile(net, mode=recipe.compile_mode)

    loaders = build_loaders(data, recipe, runtime, in_chans, sizes, ev, recipe.seed)
    clock = StepClock(loaders.train.plan.micro_steps, recipe.epochs, recipe.warmup_epochs, recipe.accumulation)
    peak_lr = recipe.scaled_lr(dist.world_size)
    optimizer = create_optimizer(model, peak_lr, recipe.weight_decay, recipe.betas, recipe.eps, recipe.no_decay,
                                 capturable=runtime.cuda_graph)
    ema = WarmupEMA(model, recipe.ema_decay, recipe.ema_warmup_steps) if recipe.ema else None
    loss = TrainLoss(recipe.loss, recipe.label_smoothing, recipe.mesa,
                     ema.module if (ema is not None and recipe.mesa > 0) else None)
    mixer = None
    if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
        mixer = BatchMixer(data.num_classes, recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_prob,
                           recipe.mix_switch_prob, recipe.label_smoothing)
    train_step = TrainStep(model, optimizer, loss, net=net, precision=runtime.precision,
                           clip_value=recipe.clip_grad_value, cuda_graph=runtime.cuda_graph)
    eval_model = ema.module if (recipe.eval_model == "ema" and ema is not None) else model
    evaluator = Evaluator(eval_model, runtime.precision, cuda_graph=runtime.cuda_graph)
    levels = DROP_PATH_LEVELS if (runtime.cuda_graph or recipe.compile) else None
    drop_path = DropPathSchedule(model, recipe, clock, levels)
    metrics = MetricsLog(out_dir or Path("."), enabled=dist.is_main and out_dir is not None)
    return Setup(recipe=recipe, data=data, cfg=cfg, model=model, net=net, runtime=runtime, sizes=sizes, ev=ev,
                 in_chans=in_chans, loaders=loaders, clock=clock, peak_lr=peak_lr, optimizer=optimizer, ema=ema,
                 loss=loss, mixer=mixer, train_step=train_step, eval_model=eval_model, evaluator=evaluator,
                 drop_path=drop_path, out_dir=out_dir, metrics=metrics, seed=recipe.seed,
                 timm=model_or_config.name if isinstance(model_or_config, TimmModel) else None)


def reseed(s: Setup, restarts: int) -> None:
    """The training order, augmentation and mixing of a run that restarted ``restarts`` times (a replay with
    the same random numbers would run into the same drop)."""
    s.seed = data_mod.mix_seed(s.recipe.seed, 8, restarts) if restarts else s.recipe.seed
    s.loaders.train = build_loaders(s.data, s.recipe, s.runtime, s.in_chans, s.sizes, s.ev, s.seed).train


# ===================================================================================== one epoch
def train_epoch(s: Setup, state: TrainState, epoch: int, bar: TrainProgress, partial: tuple[float, int],
                max_steps: int | None) -> dict:
    """Train the rest of ``epoch`` (from ``state.step``). Returns the epoch's loss sum and step count (this
    rank's, ``partial`` carried over from a resume), its training time and whether ``max_steps`` stopped it
    (a checkpoint is written first)."""
    r, spe, device = s.recipe, s.clock.steps_per_epoch, s.runtime.device
    if s.drop_path.levels and s.drop_path.update(state.step):
        s.train_step.invalidate()
    loss_sum, count = torch.full((), partial[0], device=device), partial[1]
    start, capture_before, images = time.perf_counter(), s.train_step.info["capture_s"], 0
    micro_start, group, stopped = (state.step % spe) * r.accumulation, [], False
    for micro, (x, y) in enumerate(s.loaders.train.epoch(epoch, micro_start), start=micro_start):
        if s.mixer is not None:
            x, y = s.mixer(x, y, data_mod.mix_seed(s.seed, 5, epoch, micro), s.runtime.dist.rank)
        group.append((x, y))
        if len(group) < r.accumulation:
            continue
        loss = optimizer_step(s, state, group)
        loss_sum += loss
        count += 1
        group = []
        images += s.images_per_step
        if r.log_every and (state.step % r.log_every == 0 or state.step == s.clock.total_steps):
            log_step(s, state, loss, epoch, bar)
        stopped = max_steps is not None and state.step >= max_steps
        periodic = r.save_every_steps and state.step % r.save_every_steps == 0
        if (periodic or stopped) and state.step % spe and s.out_dir is not None:  # epoch ends save after eval
            save_checkpoint(s, state, (loss_sum.item(), count), epoch_done=False)
        if stopped and state.step % spe:
            break
    if s.runtime.cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start - (s.train_step.info["capture_s"] - capture_before)
    return dict(loss_sum=loss_sum, count=count, seconds=seconds, images=images,
                stopped=stopped and state.step % spe != 0)


def optimizer_step(s: Setup, state: TrainState, group: list) -> torch.Tensor:
    """One optimizer step over the micro-batches of ``group``; then the lr schedule and the EMA (whose
    warm-up counts micro-batches, as the official ``global_step``)."""
    step = state.step
    if s.drop_path.levels is None:
        s.drop_path.update(step)
    s.loss.mesa_on = s.loss.teacher is not None and s.clock.progress(step) >= s.recipe.mesa_start
    loss = s.train_step(group, variant=s.loss.mesa_on)
    s.scheduler.step()
    state.step += 1
    state.images_seen += s.images_per_step
    if s.ema is not None:
        s.ema.update(s.model, s.clock.micro(state.step))
    return loss


def log_step(s: Setup, state: TrainState, loss: torch.Tensor, epoch: int, bar: TrainProgress) -> None:
    value, lr = loss.item(), s.lr_at(state.step - 1)
    if not math.isfinite(value):
        raise TrainingError(f"loss became {value} at step {state.step} (lr {lr:.3g}); lower the learning rate "
                            f"or check the data")
    rate = bar.update(state.step, state.images_seen, value, lr, f"epoch {epoch + 1}/{s.recipe.epochs}")
    s.metrics.log(dict(kind="train", epoch=epoch, step=state.step, loss=value, lr=lr, images_per_s=rate))


def evaluate(s: Setup) -> dict:
    """Top-1 / top-5 / loss of the evaluated model (EMA or model) on the val split, after re-estimating its
    BatchNorm statistics in place on the BN subset (officially written into the EMA weights)."""
    if s.loaders.bn is not None and any(isinstance(m, _BatchNorm) for m in s.eval_model.modules()):
        reestimate_bn(s.eval_model, s.loaders.bn.epoch(0), s.runtime.precision)
    return s.evaluator(s.loaders.val.epoch(0))


# ===================================================================================== checkpoints
def _model_id(s: Setup) -> str | None:
    """What a checkpoint records as its architecture: the config's arch_id, or ``timm:NAME``."""
    if s.cfg is not None:
        return s.cfg.arch_id
    return TimmModel(s.timm).label if s.timm is not None else None


def save_checkpoint(s: Setup, state: TrainState, partial: tuple[float, int], epoch_done: bool) -> None:
    """Weights, EMA, optimizer, every rank's random state and running loss, and ``state``."""
    mine = dict(rng=ckpt.rng_state(), partial=dict(loss_sum=partial[0], loss_count=partial[1]))
    ranks = [mine]
    if s.runtime.dist.distributed:
        ranks = [None] * s.runtime.dist.world_size
        torch.distributed.all_gather_object(ranks, mine)
    if s.runtime.dist.is_main:
        payload = dict(optimizer=s.optimizer.state_dict(), ranks=ranks, step=state.step,
                       arch_id=_model_id(s), images_per_step=s.images_per_step,
                       recipe=s.recipe.to_dict(), epoch_done=epoch_done, progress=asdict(state))
        ckpt.save_checkpoint(s.out_dir, state.step, s.model.state_dict(),
                             s.ema.module.state_dict() if s.ema is not None else None, payload,
                             s.recipe.keep_checkpoints, protect=state.best_checkpoint)
    dist_utils.barrier()


def load_checkpoint(s: Setup, path: Path) -> tuple[TrainState, tuple[float, int]]:
    """Restore weights, EMA, optimizer and this rank's random state from checkpoint ``path``; returns the
    state and this rank's running loss of the unfinished epoch."""
    loaded = ckpt.load_checkpoint_dir(path)
    saved_arch, own = loaded.state.get("arch_id"), _model_id(s)
    if own is not None and saved_arch and saved_arch != own:
        raise ckpt.ResumeError(f"{path}: was trained with architecture {saved_arch}, not {own}")
    if loaded.state.get("images_per_step", s.images_per_step) != s.images_per_step:
        raise ckpt.ResumeError(f"{path}: global batch was {loaded.state['images_per_step']} images per step, "
                               f"now {s.images_per_step}; resume with the same batch, processes and accumulation")
    s.model.load_state_dict(loaded.model)
    if s.ema is not None and loaded.ema is not None:
        s.ema.module.load_state_dict(loaded.ema)
    s.optimizer.load_state_dict(loaded.state["optimizer"])
    _fix_lr_tensors(s.optimizer, s.runtime.device, s.runtime.cuda_graph)
    ranks = loaded.state["ranks"]
    mine = ranks[s.runtime.dist.rank] if s.runtime.dist.rank < len(ranks) else ranks[0]
    ckpt.set_rng_state(mine["rng"])
    partial = mine["partial"]
    return TrainState.from_dict(loaded.state["progress"]), (partial["loss_sum"], partial["loss_count"])


def _fix_lr_tensors(optimizer: torch.optim.Optimizer, device: torch.device, graph_mode: bool) -> None:
    """After loading a state dict, keep lr one shared device tensor (graph mode) or a float (otherwise)."""
    shared = None
    for group in optimizer.param_groups:
        value = float(group["lr"])
        group["initial_lr"] = float(group.get("initial_lr", value))
        if graph_mode:
            if shared is None:
                shared = torch.tensor(value, device=device)
            group["lr"] = shared
        else:
            group["lr"] = value


def restart_from_best(s: Setup, state: TrainState, row: dict) -> TrainState:
    """The official auto-restart: top-1 fell more than ``auto_restart`` points below the best, so training
    goes on from the best epoch's checkpoint, with new random numbers."""
    restarts = state.restarts + 1
    restored, _ = load_checkpoint(s, s.out_dir / state.best_checkpoint)
    restored.restarts = restarts
    s.metrics.truncate(restored.step)  # the abandoned epochs' rows; the restart row records the drop
    s.metrics.log(dict(kind="restart", epoch=restored.best_epoch, step=restored.step, restart=restarts,
                       dropped_epoch=row["epoch"], dropped_step=state.step, dropped_top1=row["top1"],
                       best_top1=state.best_top1))
    reseed(s, restarts)
    torch.manual_seed(data_mod.mix_seed(s.seed, s.runtime.dist.rank))
    s.train_step.invalidate()
    s.drop_path.scale = None
    s.scheduler = create_scheduler(s.optimizer, s.clock, s.peak_lr, s.recipe.min_lr, restored.step)
    return restored


def _should_restart(s: Setup, state: TrainState, top1: float) -> bool:
    limit = s.recipe.auto_restart
    return (limit is not None and s.out_dir is not None and state.best_checkpoint is not None
            and state.best_top1 is not None and state.best_top1 - top1 > limit and state.restarts < MAX_RESTARTS)


# ===================================================================================== the run
def run(model_or_config, data: data_mod.ImageData, recipe: Recipe, dist: DistInfo, out_dir: Path | None = None, *,
        resume: bool = False, max_steps: int | None = None, progress: bool = False, on_epoch: OnEpoch | None = None,
        started: float | None = None) -> FitResult:
    """Train ``model_or_config`` on prepared ``data`` (see :func:`prepare_data`) with ``recipe``.

    With ``out_dir``: checkpoints (``resume`` continues the latest one exactly), ``metrics.jsonl`` /
    ``metrics.csv``, ``best.safetensors`` (the evaluated weights of the best epoch), and at the end
    ``model.safetensors``, ``ema.safetensors`` and ``result.json``. Without: nothing is written (the proxy).
    ``on_epoch(epoch, row) -> bool`` is called after every epoch; True stops training.
    """
    t0 = started if started is not None else time.perf_counter()
    if out_dir is not None:
        latest = ckpt.latest_checkpoint(out_dir)
        if latest is not None and not resume:
            raise TrainingError(f"{out_dir} already holds a run (checkpoint {latest.name}); pass resume=True "
                                f"(--resume) to continue it, or choose another output directory")
    else:
        latest = None
    runtime = resolve_runtime(recipe, dist)
    if runtime.cuda:
        torch.backends.cudnn.benchmark = True
    s = build(model_or_config, data, recipe, runtime, out_dir)
    state, partial = TrainState(), (0.0, 0)
    torch.manual_seed(recipe.seed + dist.rank)  # drop path and other model randomness, per rank
    if latest is not None:
        state, partial = load_checkpoint(s, latest)
        s.metrics.truncate(state.step)
        if state.restarts:
            reseed(s, state.restarts)
    elif out_dir is not None and dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if s.cfg is not None:
            s.cfg.to_yaml(out_dir / "config.yaml")
        if s.timm is not None:
            atomic_write_json(out_dir / TIMM_RECORD, dict(timm=s.timm))
        recipe.to_yaml(out_dir / "recipe.yaml")
    s.scheduler = create_scheduler(s.optimizer, s.clock, s.peak_lr, recipe.min_lr, state.step)
    setup_s = time.perf_counter() - t0
    outcome = _loop(s, state, partial, max_steps, progress, on_epoch, t0)
    return _finish(s, outcome, setup_s, t0)


def _loop(s: Setup, state: TrainState, partial: tuple[float, int], max_steps, progress, on_epoch, t0) -> dict:
    r, dist = s.recipe, s.runtime.dist
    outcome = dict(state=state, interrupted=False, stopped=False, diverged=False)
    with TrainProgress(s.clock.total_steps, state.step, enabled=progress and dist.is_main) as bar:
        while state.step < s.clock.total_steps:
            epoch = state.step // s.clock.steps_per_epoch
            done = train_epoch(s, state, epoch, bar, partial, max_steps)
            partial = (0.0, 0)
            state.train_s += done["seconds"]
            if done["stopped"]:
                outcome["interrupted"] = True
                break
            row = _epoch_row(s, state, epoch, done)
            outcome["diverged"] = not math.isfinite(row["train_loss"])
            if outcome["diverged"] or (epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs:
                dropped = _evaluate_epoch(s, state, row)
                if dropped and not outcome["diverged"]:  # top-1 fell: go back to the best epoch
                    state = outcome["state"] = restart_from_best(s, state, row)
                    continue
            row["best_top1"] = state.best_top1
            row["elapsed_s"] = time.perf_counter() - t0
            state.history.append(row)
            s.metrics.log(row)
            if s.out_dir is not None and not outcome["diverged"]:
                save_checkpoint(s, state, (0.0, 0), epoch_done=True)
            if outcome["diverged"] or (on_epoch is not None and on_epoch(epoch + 1, dict(row))):
                outcome["stopped"] = True
                break
            if max_steps is not None and state.step >= max_steps and state.step < s.clock.total_steps:
                outcome["interrupted"] = True
                break
    if outcome["stopped"] and state.history and state.history[-1]["top1"] is None:  # stopped unevaluated
        _evaluate_epoch(s, state, state.history[-1])
    return outcome


def _epoch_row(s: Setup, state: TrainState, epoch: int, done: dict) -> dict:
    total = torch.stack([done["loss_sum"], torch.tensor(float(done["count"]), device=s.runtime.device)])
    dist_utils.all_reduce_sum(total)
    loss_sum, count = total.tolist()  # the epoch's one host synchronization
    train_loss = loss_sum / max(count, 1.0)
    return dict(kind="epoch", epoch=epoch + 1, step=state.step, train_loss=train_loss,
                lr=s.lr_at(max(state.step - 1, 0)), epoch_s=done["seconds"],
                images_per_s=done["images"] / max(done["seconds"], 1e-9), top1=None, top5=None, val_loss=None)


def _evaluate_epoch(s: Setup, state: TrainState, row: dict) -> bool:
    """Evaluate, fill ``row`` and the best so far (saving the best weights); True when the run should
    restart from the best epoch instead."""
    start = time.perf_counter()
    result = evaluate(s)
    state.eval_s += time.perf_counter() - start
    row.update(top1=result["top1"], top5=result["top5"], val_loss=result["loss"])
    if state.best_top1 is None or result["top1"] > state.best_top1:
        state.best_top1, state.best_epoch = result["top1"], row["epoch"]
        if s.out_dir is not None:
            state.best_checkpoint = ckpt.checkpoint_dir(state.step)
            if s.runtime.dist.is_main:
                ckpt.save_weights(s.out_dir / "best.safetensors", s.eval_model.state_dict())
        return False
    return _should_restart(s, state, result["top1"])


def _finish(s: Setup, outcome: dict, setup_s: float, t0: float) -> FitResult:
    state, r, runtime = outcome["state"], s.recipe, s.runtime
    last = next((row for row in reversed(state.history) if row.get("top1") is not None), None)
    step_info = s.train_step.info
    info = dict(params=sum(p.numel() for p in s.model.parameters()), arch_id=s.cfg.arch_id if s.cfg else None,
                timm=s.timm,
                recipe=r.name, resolution=s.ev.resolution, crop_pct=s.ev.crop_pct, train_resolutions=list(s.sizes),
                in_chans=s.in_chans,
                num_classes=s.data.num_classes, data=s.data.describe(), validation=validation_summary(s.data),
                device=str(runtime.device),
                world_size=runtime.dist.world_size, precision=runtime.precision, channels_last=runtime.channels_last,
                batch_size=r.batch_size, images_per_step=s.images_per_step, steps_per_epoch=s.clock.steps_per_epoch,
                steps=state.step, train_images=state.images_seen, lr=s.peak_lr,
                cuda_graph=step_info["cuda_graph"], graph_checks=step_info["graph_checks"],
                eval_graph=s.evaluator.info.get("cuda_graph", s.evaluator.cuda_graph), capture_s=step_info["capture_s"],
                capture_parts_s=dict(step_info["capture_parts_s"]),
                eval_s=state.eval_s, setup_s=setup_s, total_s=time.perf_counter() - t0, diverged=outcome["diverged"],
                compile=r.compile, fast_groupnorm=r.fast_groupnorm and runtime.channels_last, restarts=state.restarts)
    if s.data.kind == "tensor" and (r.randaugment or r.reprob):
        info["note"] = ("RandAugment and random erasing apply to class-folder data; tensor data was augmented on "
                        "the device (random-resized crop, translation, flip)")
    result = FitResult(top1=last["top1"] if last else None, top5=last["top5"] if last else None,
                       best_top1=state.best_top1, best_epoch=state.best_epoch, epochs_run=len(state.history),
                       steps=state.step, history=state.history, train_s=state.train_s,
                       images_per_s=state.images_seen / max(state.train_s, 1e-9),
                       stopped_early=outcome["stopped"], interrupted=outcome["interrupted"], out_dir=s.out_dir,
                       info=info)
    if s.out_dir is not None and runtime.dist.is_main and not outcome["interrupted"] and not outcome["diverged"]:
        ckpt.save_weights(s.out_dir / "model.safetensors", s.model.state_dict())
        if s.ema is not None:
            ckpt.save_weights(s.out_dir / "ema.safetensors", s.ema.module.state_dict())
        atomic_write_json(s.out_dir / "result.json", dict(
            top1=result.top1, top5=result.top5, best_top1=result.best_top1, best_epoch=result.best_epoch,
            steps=result.steps, epochs=result.epochs_run, train_s=result.train_s, data=s.data.describe(),
            recipe=r.name, info=info, provenance=provenance(), environment=fingerprint(info["device"])))
    return result
