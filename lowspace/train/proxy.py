"""Short, fast proxy training for the architecture search.

``train_proxy(cfg_or_model, data, schedule, device, on_epoch=None) -> ProxyResult``

How it is fast on a GPU: the data set (Fashion-MNIST, or a class-folder subset decoded once) lives on the
GPU as uint8 and is augmented there (:class:`~lowspace.data.TensorLoader`); the whole training step is
one CUDA-graph replay (:class:`~.step.TrainStep`, checked once against an eager step); evaluation replays
a captured forward; the only host synchronization is one per epoch (the epoch's loss and accuracy).
On CPU the same code runs eagerly in fp32.

How the architecture is adapted to the data: a config (preset name, YAML, ArchConfig) is rebuilt with the
data set's ``in_chans`` (1 for Fashion-MNIST: the stem takes the gray image directly) and ``num_classes``,
and with ``resolution`` = the schedule's. The proxy therefore trains every candidate at the *proxy*
resolution (default 64 px), not at the architecture's nominal one (224 for the presets): the layers and
parameter count are the same (only the stem's input channels and the classifier differ), the feature
maps are smaller (at 64 px a LowFormer's last stage is 2x2, and a stride-2 attention stage attends over
2x2 tokens). Candidates are ranked at one common proxy resolution, while latency and MACs are measured at
the architecture's own resolution by ``lowspace.cost``; how well the proxy ranking agrees with full
training must be measured, not assumed. ``resolution=None`` trains at the config's own resolution.
An ``nn.Module`` is trained as given (its classes must match the data; 1-channel images are repeated to 3
channels if its stem wants 3).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from .. import data as data_mod
from ..arch import LowFormer, resolve_config
from ..errors import ConfigError, unknown_key_error
from .distributed import resolve_device
from .evaluate import Evaluator, reestimate_bn
from .fastpath import channels_last_groupnorm
from .losses import classification_loss
from .optim import create_optimizer, lr_at, set_lr
from .step import TrainStep

OnEpoch = Callable[[int, dict], Optional[bool]]


@dataclass(frozen=True)
class ProxySchedule:
    """A short training schedule.

    epochs, warmup_epochs: total epochs (warmup included) and linear-warmup epochs (then cosine to min_lr).
    resolution: training and eval side in pixels (None: the architecture's own).
    batch_size: images per step (reduced to the training-set size for tiny subsets).
    lr, min_lr, weight_decay, betas, eps, clip_grad_value, no_decay: AdamW (see ``Recipe``).
    label_smoothing: cross-entropy label smoothing.
    hflip, translate, min_scale: GPU augmentation (flip probability, largest shift as a fraction of the side,
        smallest random-resized-crop area; 1.0 = no crop).
    classes, train_per_class, val_per_class, seed: a data subset (see ``ImageData.subset``) and the seed of
        the subset, the initialization and the batch order.
    eval_every, eval_batch_size: evaluation cadence (the last epoch is always evaluated) and batch.
    precision, channels_last, cuda_graph, compile: runtime (``auto`` / None: bf16, channels-last and CUDA
        graphs on CUDA; fp32 eager on CPU).
    fast_groupnorm: run the GroupNorm(1, C) pre-norms as a layout-preserving LayerNorm in channels-last
        (:mod:`.fastpath`; same function). On by default: on the H100 it made the proxy step 12% faster at
        64 px (experiments/train_speed, part a) and one Fashion-MNIST epoch 10% faster (part c).
    bn_reestimate_images: before each evaluation, BatchNorm statistics are re-estimated on this many training
        images (unaugmented; 0 = off). Short runs need it: after a few dozen steps the running averages still
        remember their initial values and eval-mode accuracy lags far behind the network's.
    drop_path, init: model options (see ``LowFormer``).
    storage_resolution, workers: class-folder data is decoded once to this side (default resolution / 0.875)
        with this many workers; evaluation then takes the central ``resolution / storage`` crop.
    """

    epochs: int = 10
    resolution: Optional[int] = 64
    batch_size: int = 256
    lr: float = 2e-3
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_value: Optional[float] = 2.0
    no_decay: str = "norm_bias"
    label_smoothing: float = 0.1
    hflip: float = 0.5
    translate: float = 0.125
    min_scale: float = 1.0
    classes: Union[int, tuple[str, ...], str, None] = None
    train_per_class: Optional[int] = None
    val_per_class: Optional[int] = None
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 1000
    bn_reestimate_images: int = 2048
    precision: str = "auto"
    channels_last: Optional[bool] = None
    cuda_graph: Optional[bool] = None
    compile: bool = False
    fast_groupnorm: bool = True
    drop_path: float = 0.0
    init: str = "official"
    storage_resolution: Optional[int] = None
    workers: int = 4

    def __post_init__(self):
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        _validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxySchedule":
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise unknown_key_error("schedule", key, names)
        return cls(**data)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def replace(self, **changes) -> "ProxySchedule":
        return ProxySchedule.from_dict({**asdict(self), **changes})


def _validate(s: ProxySchedule) -> None:
    def bad(name, allowed):
        raise ConfigError(f"schedule.{name}", getattr(s, name), allowed)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

    for name in ("epochs", "batch_size", "eval_every", "eval_batch_size"):
        if not is_int(getattr(s, name)) or getattr(s, name) < 1:
            bad(name, "an integer >= 1")
    for name in ("seed", "workers", "bn_reestimate_images"):
        if not is_int(getattr(s, name)) or getattr(s, name) < 0:
            bad(name, "an integer >= 0")
    for name in ("resolution", "storage_resolution"):
        v = getattr(s, name)
        if v is not None and (not is_int(v) or not 8 <= v <= 4096):
            bad(name, "an integer between 8 and 4096, or None")
    for name in ("train_per_class", "val_per_class"):
        v = getattr(s, name)
        if v is not None and (not is_int(v) or v < 1):
            bad(name, "an integer >= 1 or None")
    if not is_num(s.lr) or s.lr <= 0:
        bad("lr", "a number > 0")
    for name in ("min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "translate", "drop_path"):
        if not is_num(getattr(s, name)) or getattr(s, name) < 0:
            bad(name, "a number >= 0")
    if s.warmup_epochs >= s.epochs and s.warmup_epochs > 0:
        bad("warmup_epochs", f"a number < epochs ({s.epochs}); epochs counts warmup")
    if s.label_smoothing >= 1:
        bad("label_smoothing", "a number in [0, 1)")
    if not is_num(s.hflip) or not 0 <= s.hflip <= 1:
        bad("hflip", "a probability in [0, 1]")
    if s.translate > 0.5:
        bad("translate", "a fraction of the image side in [0, 0.5]")
    if not is_num(s.min_scale) or not 0 < s.min_scale <= 1:
        bad("min_scale", "an area fraction in (0, 1]")
    if s.drop_path >= 1:
        bad("drop_path", "a rate in [0, 1)")
    if s.clip_grad_value is not None and (not is_num(s.clip_grad_value) or s.clip_grad_value <= 0):
        bad("clip_grad_value", "a number > 0 or None")
    if len(s.betas) != 2 or not all(is_num(b) and 0 <= b < 1 for b in s.betas):
        bad("betas", "two numbers in [0, 1)")
    if not is_num(s.eps) or s.eps <= 0:
        bad("eps", "a number > 0")
    if s.precision not in ("auto", "fp32", "bf16", "fp16"):
        bad("precision", "allowed: auto, fp32, bf16, fp16")
    if s.no_decay not in ("norm_bias", "official", "none"):
        bad("no_decay", "allowed: norm_bias, official, none")
    if s.init not in ("official", "torch"):
        bad("init", "allowed: official, torch")
    for name in ("channels_last", "cuda_graph"):
        if getattr(s, name) not in (None, True, False):
            bad(name, "true, false or None (automatic)")
    for name in ("compile", "fast_groupnorm"):
        if not isinstance(getattr(s, name), bool):
            bad(name, "true or false")


@dataclass
class ProxyResult:
    """Outcome of :func:`train_proxy`.

    top1, top5: accuracy (%) at the last evaluation; best_top1: the best evaluation; epochs_run; history: one
    dict per epoch (epoch, train_loss, lr, top1, top5, val_loss, epoch_s, images_per_s, elapsed_s);
    train_s: time spent in training steps (excluding graph capture and evaluation); images_per_s: training
    images / train_s; stopped_early: ``on_epoch`` asked to stop or the loss diverged; info: set-up details.
    """

    top1: float
    top5: float
    best_top1: float
    epochs_run: int
    history: list[dict]
    train_s: float
    images_per_s: float
    stopped_early: bool
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _prepare_data(data, schedule: ProxySchedule, resolution: int | None) -> data_mod.ImageData:
    if not isinstance(data, data_mod.ImageData):
        data = data_mod.get_dataset(data)
    data = data.subset(schedule.classes, schedule.train_per_class, schedule.val_per_class, schedule.seed)
    if data.kind == "folder":
        if resolution is None:
            raise ConfigError("schedule.resolution", None, "an integer for class-folder data")
        storage = schedule.storage_resolution or round(resolution / 0.875)
        data = data_mod.materialize(data, storage, workers=schedule.workers)
    if len(data.train) == 0 or data.val is None or len(data.val) == 0:
        raise data_mod.DataError(f"{data.name}: needs training and validation images "
                                 f"({len(data.train)} / {len(data.val) if data.val is not None else 0})")
    return data


def _build(cfg_or_model, data: data_mod.ImageData, schedule: ProxySchedule):
    """(model, config or None, resolution, input channels the model wants)."""
    if isinstance(cfg_or_model, nn.Module):
        model = cfg_or_model
        cfg = getattr(model, "cfg", None)
        resolution = schedule.resolution or (cfg.resolution if cfg is not None else None)
        if resolution is None:
            raise ConfigError("schedule.resolution", None, "an integer when training a module without a config")
        classes = getattr(model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise ConfigError("model.num_classes", classes, f"{data.num_classes} (the classes of {data.name}); "
                              f"pass a config instead and it is adapted")
        chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), data.in_chans)
        if chans != data.in_chans and data.in_chans != 1:
            raise ConfigError("model.in_chans", chans, f"{data.in_chans} (the channels of {data.name})")
        return model, cfg, resolution, chans
    base = resolve_config(cfg_or_model)
    resolution = schedule.resolution or base.resolution
    cfg = base.replace(in_chans=data.in_chans, num_classes=data.num_classes, resolution=resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        model = LowFormer(cfg, drop_path_rate=schedule.drop_path, init=schedule.init)
    return model, cfg, resolution, cfg.in_chans


def train_proxy(cfg_or_model, data="fashion_mnist", schedule: ProxySchedule | Mapping | None = None,
                device=None, on_epoch: OnEpoch | None = None) -> ProxyResult:
    """Train ``cfg_or_model`` briefly on ``data`` and report its accuracy (see the module docstring).

    Args:
        cfg_or_model: preset name, YAML path, dict or ArchConfig (adapted to the data), or an nn.Module.
        data: an :class:`~lowspace.data.ImageData` or a spec for :func:`~lowspace.data.get_dataset`.
        schedule: a :class:`ProxySchedule` or a dict of its fields (default: ``ProxySchedule()``).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA if available).
        on_epoch: ``on_epoch(epoch, metrics) -> bool``, called after every epoch (``epoch`` counts from 1;
            ``metrics`` is that epoch's history row); returning True stops training (pruning).
    """
    t0 = time.perf_counter()
    if schedule is None:
        schedule = ProxySchedule()
    elif isinstance(schedule, Mapping):
        schedule = ProxySchedule.from_dict(schedule)
    elif not isinstance(schedule, ProxySchedule):
        raise ConfigError("schedule", schedule, "a ProxySchedule or a dict of its fields")
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    precision = ("bf16" if cuda else "fp32") if schedule.precision == "auto" else schedule.precision
    channels_last = cuda if schedule.channels_last is None else schedule.channels_last
    use_graph = cuda if schedule.cuda_graph is None else (schedule.cuda_graph and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True

    pre_resolution = schedule.resolution
    if pre_resolution is None and not isinstance(cfg_or_model, nn.Module):
        pre_resolution = resolve_config(cfg_or_model).resolution
    data = _prepare_data(data, schedule, pre_resolution)
    model, cfg, resolution, in_chans = _build(cfg_or_model, data, schedule)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if schedule.fast_groupnorm:
            channels_last_groupnorm(model)
    model.train()

    batch = min(schedule.batch_size, len(data.train))
    plan = data_mod.BatchPlan(len(data.train), batch, shuffle=True, drop_last=True, seed=schedule.seed)
    stored = data.native_resolution or resolution
    eval_crop = min(1.0, resolution / stored) if data.info.get("materialized") else 1.0
    augment = data_mod.Augment(hflip=schedule.hflip, translate=schedule.translate, scale=(schedule.min_scale, 1.0))
    train_loader = data_mod.TensorLoader(data.train, plan, dev, resolution, data.mean, data.std, augment=augment,
                                         out_chans=in_chans, channels_last=channels_last)
    val_plan = data_mod.BatchPlan(len(data.val), min(schedule.eval_batch_size, len(data.val)), shuffle=False,
                                  drop_last=False, seed=schedule.seed)
    val_loader = data_mod.TensorLoader(data.val, val_plan, dev, resolution, data.mean, data.std, augment=None,
                                       eval_crop=eval_crop, out_chans=in_chans, channels_last=channels_last)

    bn_loader = None
    n_bn = min(schedule.bn_reestimate_images, len(data.train))
    if n_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        pick = torch.randperm(len(data.train), generator=data_mod.sampling.seeded_generator(schedule.seed, 7))[:n_bn]
        bn_plan = data_mod.BatchPlan(n_bn, min(schedule.eval_batch_size, n_bn), shuffle=False, drop_last=False)
        bn_loader = data_mod.TensorLoader(data.train.select(sorted(pick.tolist())), bn_plan, dev, resolution,
                                          data.mean, data.std, augment=None, eval_crop=eval_crop,
                                          out_chans=in_chans, channels_last=channels_last)

    def evaluate() -> dict:
        if bn_loader is not None:
            reestimate_bn(model, bn_loader.epoch(0), precision)
        return evaluator(val_loader.epoch(0))

    optimizer = create_optimizer(model, schedule.lr, schedule.weight_decay, schedule.betas, schedule.eps,
                                 schedule.no_decay, capturable=use_graph)
    smoothing = schedule.label_smoothing

    def loss_fn(logits, target, x):
        return classification_loss(logits, target, "ce", smoothing)

    net = torch.compile(model) if schedule.compile else model
    step_fn = TrainStep(model, optimizer, loss_fn, net=net, precision=precision,
                        clip_value=schedule.clip_grad_value, cuda_graph=use_graph)
    evaluator = Evaluator(model, precision, cuda_graph=use_graph)

    steps_per_epoch = plan.steps
    total_steps = schedule.epochs * steps_per_epoch
    warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
    history: list[dict] = []
    step, train_s, eval_s, best, last = 0, 0.0, 0.0, None, None
    stopped = diverged = False
    setup_s = time.perf_counter() - t0
    for epoch in range(schedule.epochs):
        start, capture_before = time.perf_counter(), step_fn.info["capture_s"]
        loss_sum = torch.zeros((), device=dev)
        lr = schedule.lr
        for x, y in train_loader.epoch(epoch):
            lr = lr_at(step, total_steps, warmup_steps, schedule.lr, schedule.min_lr)
            set_lr(optimizer, lr)
            loss_sum += step_fn([(x, y)])
            step += 1
        train_loss = loss_sum.item() / steps_per_epoch  # the epoch's one host sync
        epoch_s = time.perf_counter() - start - (step_fn.info["capture_s"] - capture_before)
        train_s += epoch_s
        diverged = not math.isfinite(train_loss)
        row = dict(epoch=epoch + 1, train_loss=train_loss, lr=lr, top1=None, top5=None, val_loss=None,
                   epoch_s=epoch_s, images_per_s=steps_per_epoch * batch / max(epoch_s, 1e-9))
        if diverged or (epoch + 1) % schedule.eval_every == 0 or epoch + 1 == schedule.epochs:
            e0 = time.perf_counter()
            metrics = evaluate()
            eval_s += time.perf_counter() - e0
            row.update(top1=metrics["top1"], top5=metrics["top5"], val_loss=metrics["loss"])
            last = row
            best = metrics["top1"] if best is None else max(best, metrics["top1"])
        row["elapsed_s"] = time.perf_counter() - t0
        history.append(row)
        if diverged:
            stopped = True
            break
        if on_epoch is not None and on_epoch(epoch + 1, dict(row)):
            stopped = True
            break
    if history[-1]["top1"] is None:  # stopped at an epoch without evaluation
        e0 = time.perf_counter()
        metrics = evaluate()
        eval_s += time.perf_counter() - e0
        history[-1].update(top1=metrics["top1"], top5=metrics["top5"], val_loss=metrics["loss"])
        last = history[-1]
        best = metrics["top1"] if best is None else max(best, metrics["top1"])
    images = step * batch
    info = dict(params=sum(p.numel() for p in model.parameters()), arch_id=cfg.arch_id if cfg else None,
                resolution=resolution, in_chans=in_chans, num_classes=data.num_classes, data=data.describe(),
                device=str(dev), precision=precision, channels_last=channels_last, batch_size=batch,
                steps=step, train_images=images, cuda_graph=step_fn.info["cuda_graph"],
                graph_checks=step_fn.info["graph_checks"], eval_graph=evaluator.info.get("cuda_graph", use_graph),
                capture_s=step_fn.info["capture_s"], eval_s=eval_s, setup_s=setup_s,
                total_s=time.perf_counter() - t0, diverged=diverged, compile=schedule.compile,
                fast_groupnorm=schedule.fast_groupnorm and channels_last)
    return ProxyResult(top1=last["top1"], top5=last["top5"], best_top1=best, epochs_run=len(history),
                       history=history, train_s=train_s, images_per_s=images / max(train_s, 1e-9),
                       stopped_early=stopped, info=info)
