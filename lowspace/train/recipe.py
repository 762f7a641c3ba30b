"""Training recipes: the LowFormer paper's knobs as one validated dataclass, one recipe per preset.

Facts from LOWFORMER.md section 4 (the official configs and training code):

* ``epochs`` counts *all* epochs, warmup included: the official run is ``n_epochs 300 + warmup 20``,
  i.e. ``epochs: 320, warmup_epochs: 20`` here; linear warmup from 0, then cosine to ``min_lr``,
  updated every optimizer step.
* ``batch_size`` is per process and per micro-batch; the optimizer steps every ``accumulation``
  micro-batches; lr = ``base_lr x world_size x accumulation`` (``lr_scaling: world_accum``, official).
* AdamW (0.9, 0.999), eps 1e-8, weight decay 0.1, gradients clipped by *value* at 2.0.
* Weight-decay exclusion (``no_decay``). Upstream excludes parameters whose *name* contains "norm" or
  "bias"; its intent is "no decay on normalization parameters and biases", but because of its module
  names the GroupNorm weights before attention / MLP and the BatchNorm weight of the attention's
  depthwise projection are decayed anyway. Our names differ (``bn``, ``attn_norm``, ``mlp_norm``,
  ``head.norm``), so a name rule would not reproduce either. ``norm_bias`` (default, the intent): every
  parameter of a BatchNorm / GroupNorm / LayerNorm layer and every bias gets no decay. ``official``:
  the upstream set exactly (as ``norm_bias``, but GroupNorm weights and attention-projection BatchNorm
  weights are decayed). ``none``: everything is decayed.
* Loss: BCE on soft targets (``bce``) or cross-entropy (``ce``), label smoothing 0.1 applied before
  mixing; mixup / cutmix on every batch, one of them per step (timm ``Mixup``, mode ``batch``: one
  lambda and, for cutmix, one box per batch; upstream draws a box per image).
* EMA of weights and float buffers, decay ``ema_decay * (1 - exp(-step / ema_warmup_steps))``.
* Drop path: linear by index over the residual branches (``drop_path``, first ``drop_path_skip`` of
  them excluded), scaled by training progress after warmup (``drop_path_schedule: progress``).
* Multi-resolution: one of ``resolutions`` per optimizer step. Eval at ``eval_resolution`` after
  resizing to ``eval_resolution / crop_pct`` and center-cropping, on the EMA model after re-estimating
  BatchNorm statistics on ``bn_reestimate_images`` training images (seeded subset, eval transform, the rest
  of the network in eval mode, so no drop path).
* MESA (self-distillation from the EMA) for B3 / E2 / E3: ``mesa`` x BCE(logits, sigmoid(EMA logits))
  from progress ``mesa_start`` on.

Ours, not upstream's: ``precision`` (bf16 autocast by default; upstream trains in fp32), ``channels_last``,
``compile``, ``cuda_graph`` and ``fast_groupnorm`` (runtime only, see ``lowspace.train.fit``), ``translate``
(GPU augmentation of tensor data), checkpoint and logging cadence.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..errors import ConfigError, closest, unknown_key_error

RECIPE_NAMES = ("b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3")
NO_DECAY_MODES = ("norm_bias", "official", "none")
LOSSES = ("bce", "ce")
PRECISIONS = ("fp32", "bf16", "fp16")
DROP_PATH_SCHEDULES = ("progress", "constant")
LR_SCALINGS = ("world_accum", "none")
EVAL_MODELS = ("ema", "model")
INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest")
INITS = ("official", "torch")


@dataclass(frozen=True)
class Recipe:
    """A full training recipe (see the module docstring for the meaning and origin of each field)."""

    name: str = "custom"
    # schedule and optimizer
    epochs: int = 320
    warmup_epochs: float = 20.0
    batch_size: int = 128
    accumulation: int = 1
    base_lr: float = 2.5e-4
    lr_scaling: str = "world_accum"
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay: str = "norm_bias"
    clip_grad_value: Optional[float] = 2.0
    # loss and regularization
    loss: str = "bce"
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.1
    cutmix_alpha: float = 0.1
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    mesa: float = 0.0
    mesa_start: float = 0.25
    drop_path: float = 0.05
    drop_path_skip: int = 0
    drop_path_schedule: str = "progress"
    # augmentation (class folders: timm transforms; tensor data: GPU crop / flip / resize)
    resolutions: tuple[int, ...] = (128, 160, 192, 224)
    randaugment: Optional[str] = "rand-m3-n1-mstd1.0-inc1"
    reprob: float = 0.0
    interpolation: str = "random"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    translate: float = 0.0
    # EMA and evaluation
    ema: bool = True
    ema_decay: float = 0.9998
    ema_warmup_steps: float = 2000.0
    eval_model: str = "ema"
    eval_resolution: Optional[int] = 224
    crop_pct: float = 0.95
    eval_batch_size: int = 200
    eval_every: int = 1
    bn_reestimate_images: int = 16000
    bn_reestimate_batch: int = 100
    # runtime
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool = False
    fast_groupnorm: bool = False
    sync_bn: bool = False
    workers: int = 8
    seed: int = 0
    init: str = "official"
    # checkpoints and logging
    save_every_steps: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50

    def __post_init__(self):
        validate_recipe(self)

    def replace(self, **changes) -> "Recipe":
        """A copy with fields changed (validated; unknown names raise ConfigError)."""
        names = {f.name for f in fields(self)}
        for key in changes:
            if key not in names:
                raise unknown_key_error("recipe", key, names)
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            from ..io import atomic_write_text
            atomic_write_text(path, text)
        return text

    def scaled_lr(self, world_size: int = 1) -> float:
        """The peak learning rate for ``world_size`` processes."""
        if self.lr_scaling == "none":
            return self.base_lr
        return self.base_lr * world_size * self.accumulation


# Per-preset differences from the shared recipe (LOWFORMER.md section 4.2; E-series and b2 from 4.2's notes).
_PRESETS: dict[str, dict[str, Any]] = {
    "b0": dict(batch_size=170, base_lr=3.32e-4, randaugment="rand-m3-n1-mstd1.0-inc1",
               mixup_alpha=0.1, cutmix_alpha=0.1, drop_path=0.05, drop_path_skip=0),
    "b1": dict(batch_size=128, base_lr=2.5e-4, randaugment="rand-m3-n1-mstd1.0-inc1",
               mixup_alpha=0.1, cutmix_alpha=0.1, drop_path=0.05, drop_path_skip=0),
    "b15": dict(batch_size=170, base_lr=1.66e-4, randaugment="rand-m6-n2-mstd1.0-inc1",
                mixup_alpha=0.3, cutmix_alpha=0.3, drop_path=0.10, drop_path_skip=0),
    # upstream's b2 config nests its mesa block inside mixup_config, so MESA stays off as written
    "b2": dict(batch_size=170, base_lr=1.25e-4, randaugment="rand-m5-n2-mstd1.0-inc1", reprob=0.2,
               mixup_alpha=0.2, cutmix_alpha=0.2, drop_path=0.10, drop_path_skip=2),
    "b3": dict(batch_size=75, accumulation=4, base_lr=9.4e-5, randaugment="rand-m5-n2-mstd1.0-inc1", reprob=0.2,
               mixup_alpha=0.2, cutmix_alpha=0.2, mesa=2.0, drop_path=0.10, drop_path_skip=2),
    "e1": dict(batch_size=100, accumulation=2, base_lr=1e-4, randaugment="rand-m6-n2-mstd1.0-inc1",
               mixup_alpha=0.3, cutmix_alpha=0.3, drop_path=0.10, drop_path_skip=0),
    "e2": dict(batch_size=50, accumulation=4, base_lr=1e-4, randaugment="rand-m5-n2-mstd1.0-inc1", reprob=0.2,
               mixup_alpha=0.2, cutmix_alpha=0.2, mesa=2.0, drop_path=0.10, drop_path_skip=1),
    "e3": dict(batch_size=50, accumulation=8, base_lr=6.25e-5, randaugment="rand-m5-n2-mstd1.0-inc1", reprob=0.2,
               mixup_alpha=0.3, cutmix_alpha=0.3, mesa=2.0, drop_path=0.10, drop_path_skip=2),
}
_ALIASES = {"b1.5": "b15", "b1_5": "b15", "default": "b1"}


def recipe_key(name: str) -> str | None:
    key = name.lower().removeprefix("lowformer_")
    key = _ALIASES.get(key, key)
    return key if key in _PRESETS else None


def get_recipe(name: str) -> Recipe:
    """The paper recipe named by a preset (``b0``, ``b1``, ``b15``, ``b2``, ``b3``, ``e1``, ``e2``, ``e3``)."""
    key = recipe_key(str(name))
    if key is None:
        hint = closest(str(name).lower(), RECIPE_NAMES)
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError("recipe", name, "known recipes: " + ", ".join(RECIPE_NAMES) + extra
                          + " (or a YAML file)")
    return Recipe(name=key, **_PRESETS[key])


def load_recipe(spec: "Recipe | str | Path | Mapping | None" = None, **overrides) -> Recipe:
    """A recipe from a name, a YAML file, a dict or a Recipe, with ``overrides`` applied.

    A YAML file or dict may name ``base: b1`` (a recipe to start from; default: the shared recipe with
    B1's numbers) and set any field; unknown keys and bad values raise ConfigError naming the field.
    """
    source = None
    if spec is None:
        recipe = get_recipe("b1")
    elif isinstance(spec, Recipe):
        recipe = spec
    elif isinstance(spec, Mapping):
        recipe = _from_mapping(spec, None)
    elif isinstance(spec, (str, Path)):
        text = str(spec)
        if isinstance(spec, str) and recipe_key(text):
            recipe = get_recipe(text)
        elif text.endswith((".yaml", ".yml")) or Path(text).is_file():
            path = Path(text)
            source = str(path)
            if not path.is_file():
                raise ConfigError("recipe", text, "no such file")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise ConfigError("recipe", text, f"not valid YAML ({err})") from None
            if not isinstance(data, Mapping):
                raise ConfigError("recipe", type(data).__name__, "a YAML mapping of recipe fields", source)
            recipe = _from_mapping(data, source)
        else:
            recipe = get_recipe(text)  # raises with the list of names
    else:
        raise ConfigError("recipe", spec, "a recipe name, a YAML path, a dict or a Recipe")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return recipe.replace(**overrides) if overrides else recipe


def _from_mapping(data: Mapping, source: str | None) -> Recipe:
    data = dict(data)
    base = data.pop("base", None)
    recipe = get_recipe(base) if base is not None else get_recipe("b1")
    if "name" not in data:
        data["name"] = Path(source).stem if source else (f"{base}-custom" if base else "custom")
    try:
        return recipe.replace(**data)
    except ConfigError as err:
        if source and not err.source:
            raise ConfigError(err.path, err.value, err.allowed, source) from None
        raise


# ---------------------------------------------------------------------------------- parsing / checks
_HINTS = typing.get_type_hints(Recipe)


def _coerce(name: str, value: Any) -> Any:
    """Type-check one field value as read from YAML / the CLI (lists become tuples, ints become floats)."""
    hint = _HINTS[name]
    path = f"recipe.{name}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        item = args[0]
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(path, value, f"a list of {len(args)} numbers")
        return tuple(_scalar(path, v, item) for v in value)
    return _scalar(path, value, hint)


def _scalar(path: str, value: Any, kind) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    return value


def _choice(name, value, options):
    if value not in options:
        raise ConfigError(f"recipe.{name}", value, "allowed: " + ", ".join(options))


def _range(name, value, low, high=None, low_open=False, high_open=False):
    bad = (value < low or (low_open and value == low) or (high is not None and value > high)
           or (high_open and value == high) or (isinstance(value, float) and math.isnan(value)))
    if bad:
        lo = ">" if low_open else ">="
        hi = "" if high is None else (" and < " if high_open else " and <= ") + str(high)
        raise ConfigError(f"recipe.{name}", value, f"must be {lo} {low}{hi}")


def validate_recipe(r: Recipe) -> None:
    """Check every field of ``r``; raises ConfigError naming the first bad one."""
    for f in fields(r):
        _coerce(f.name, getattr(r, f.name))
    _range("epochs", r.epochs, 1)
    _range("warmup_epochs", r.warmup_epochs, 0)
    if r.warmup_epochs >= r.epochs:
        raise ConfigError("recipe.warmup_epochs", r.warmup_epochs,
                          f"must be < epochs ({r.epochs}); epochs counts warmup, as upstream's 300 + 20 = 320")
    _range("batch_size", r.batch_size, 1)
    _range("accumulation", r.accumulation, 1)
    _range("base_lr", r.base_lr, 0, low_open=True)
    _choice("lr_scaling", r.lr_scaling, LR_SCALINGS)
    _range("min_lr", r.min_lr, 0)
    for i, b in enumerate(r.betas):
        _range(f"betas.{i}", b, 0, 1, high_open=True)
    _range("eps", r.eps, 0, low_open=True)
    _range("weight_decay", r.weight_decay, 0)
    _choice("no_decay", r.no_decay, NO_DECAY_MODES)
    if r.clip_grad_value is not None:
        _range("clip_grad_value", r.clip_grad_value, 0, low_open=True)
    _choice("loss", r.loss, LOSSES)
    _range("label_smoothing", r.label_smoothing, 0, 1, high_open=True)
    for name in ("mixup_alpha", "cutmix_alpha", "mesa"):
        _range(name, getattr(r, name), 0)
    for name in ("mix_prob", "mix_switch_prob", "mesa_start", "reprob", "hflip"):
        _range(name, getattr(r, name), 0, 1)
    _range("drop_path", r.drop_path, 0, 1, high_open=True)
    _range("drop_path_skip", r.drop_path_skip, 0)
    _choice("drop_path_schedule", r.drop_path_schedule, DROP_PATH_SCHEDULES)
    if not r.resolutions:
        raise ConfigError("recipe.resolutions", [], "at least one resolution")
    for i, res in enumerate(r.resolutions):
        _range(f"resolutions.{i}", res, 8, 4096)
    if r.randaugment is not None and not r.randaugment.startswith("rand-"):
        raise ConfigError("recipe.randaugment", r.randaugment,
                          "a timm RandAugment string such as 'rand-m3-n1-mstd1.0-inc1', or null")
    _choice("interpolation", r.interpolation, INTERPOLATIONS)
    if not 0 < r.scale[0] <= r.scale[1] <= 1:
        raise ConfigError("recipe.scale", list(r.scale), "0 < min <= max <= 1 (crop area fractions)")
    if not 0 < r.ratio[0] <= r.ratio[1]:
        raise ConfigError("recipe.ratio", list(r.ratio), "0 < min <= max (aspect ratios)")
    _range("translate", r.translate, 0, 0.5)
    _range("ema_decay", r.ema_decay, 0, 1, high_open=True)
    _range("ema_warmup_steps", r.ema_warmup_steps, 0)
    _choice("eval_model", r.eval_model, EVAL_MODELS)
    if r.eval_model == "ema" and not r.ema:
        raise ConfigError("recipe.eval_model", r.eval_model, "'model' when ema is false")
    if r.eval_resolution is not None:
        _range("eval_resolution", r.eval_resolution, 8, 4096)
    _range("crop_pct", r.crop_pct, 0, 1, low_open=True)
    for name in ("eval_batch_size", "eval_every", "bn_reestimate_batch", "keep_checkpoints", "log_every"):
        _range(name, getattr(r, name), 1)
    for name in ("bn_reestimate_images", "save_every_steps", "workers", "seed"):
        _range(name, getattr(r, name), 0)
    _choice("precision", r.precision, PRECISIONS)
    _choice("compile_mode", r.compile_mode, ("default", "reduce-overhead", "max-autotune",
                                             "max-autotune-no-cudagraphs"))
    _choice("init", r.init, INITS)
