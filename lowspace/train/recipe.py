"""Training recipes: every knob of a training run as one validated dataclass.

A recipe is named by a LowFormer preset (``b0`` ... ``e3``: the paper's recipe for that preset) or is
``proxy``, the short schedule the architecture search trains every candidate with. Both run through the
same engine (:mod:`.engine`); they differ only in their fields. ``docs/training.md`` describes every field,
how the proxy relates to the paper recipe, and where the paper recipe still deviates from the official code.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from ..errors import ConfigError, closest, unknown_key_error

RECIPE_NAMES = ("b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3")
PROXY = "proxy"
NO_DECAY_MODES = ("official", "norm_bias", "none")
LOSSES = ("bce", "ce")
PRECISIONS = ("fp32", "bf16", "fp16")
DROP_PATH_SCHEDULES = ("progress", "constant")
LR_SCALINGS = ("world_accum", "none")
EVAL_MODELS = ("ema", "model")
BN_TRANSFORMS = ("train", "eval")
INTERPOLATIONS = ("random", "nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
INITS = ("official", "torch")
EVAL_SPLITS = ("holdout", "test")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Recipe:
    """A training recipe. Defaults are the paper's shared recipe with B1's numbers (see docs/training.md)."""

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
    no_decay: str = "official"
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
    # data: which images, and how training images are augmented
    classes: Union[int, tuple[str, ...], str, None] = None
    train_per_class: Optional[int] = None
    # validation: images held out of the training split (class-balanced, seeded by split_seed; None: a tenth
    # of the smallest class, at most 500), or the data set's test split (eval_split: test; val_per_class
    # then caps it)
    val_per_class: Optional[int] = None
    split_seed: int = 0
    eval_split: str = "holdout"
    resolutions: Optional[tuple[int, ...]] = (128, 160, 192, 224)
    randaugment: Optional[str] = "rand-m3-n1-mstd1.0-inc1"
    reprob: float = 0.0
    interpolation: str = "random"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    translate: float = 0.0
    materialize: bool = False
    storage_resolution: Optional[int] = None
    workers: int = 8
    # EMA and evaluation
    ema: bool = True
    ema_decay: float = 0.9998
    ema_warmup_steps: float = 2000.0
    eval_model: str = "ema"
    eval_resolution: Optional[int] = None
    crop_pct: Optional[float] = None
    eval_batch_size: int = 200
    eval_every: int = 1
    bn_reestimate_images: int = 16000
    bn_reestimate_batch: int = 100
    bn_reestimate_transform: str = "train"
    auto_restart: Optional[float] = 1.0
    # runtime
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool = False
    fast_groupnorm: bool = False
    sync_bn: bool = False
    seed: int = 0
    init: str = "official"
    # checkpoints and logging
    save_every_steps: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50

    def __post_init__(self):
        for f in fields(self):  # lists (from YAML) become tuples, ints become floats where a float is wanted
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        validate_recipe(self)

    def replace(self, **changes) -> "Recipe":
        """A copy with fields changed (validated; unknown names raise ConfigError)."""
        names = {f.name for f in fields(self)}
        for key in changes:
            if key not in names:
                raise unknown_key_error("recipe", key, names)
        return dataclasses.replace(self, **changes)

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


# Per-recipe differences from the defaults: the official configs per preset (b2 and the E series from
# their configs too), and the search's proxy schedule.
_PRESETS: dict[str, dict[str, Any]] = {
    "b0": dict(batch_size=170, base_lr=3.32e-4, randaugment="rand-m3-n1-mstd1.0-inc1",
               mixup_alpha=0.1, cutmix_alpha=0.1, drop_path=0.05, drop_path_skip=0),
    "b1": dict(batch_size=128, base_lr=2.5e-4, randaugment="rand-m3-n1-mstd1.0-inc1",
               mixup_alpha=0.1, cutmix_alpha=0.1, drop_path=0.05, drop_path_skip=0),
    "b15": dict(batch_size=170, base_lr=1.66e-4, randaugment="rand-m6-n2-mstd1.0-inc1",
                mixup_alpha=0.3, cutmix_alpha=0.3, drop_path=0.10, drop_path_skip=0),
    # the official b2 config nests its mesa block inside mixup_config, so MESA stays off as written
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
    # A few epochs at one low resolution on GPU-resident data: plain AdamW + cosine, cross-entropy with label
    # smoothing, flip + translation, no mixing, no EMA, BatchNorm re-estimated on un-augmented images.
    PROXY: dict(epochs=10, warmup_epochs=1.0, batch_size=256, base_lr=2e-3, lr_scaling="none", weight_decay=0.05,
                no_decay="norm_bias", loss="ce", mixup_alpha=0.0, cutmix_alpha=0.0, drop_path=0.0,
                drop_path_schedule="constant", resolutions=(64,), randaugment=None, scale=(1.0, 1.0),
                translate=0.125, materialize=True, workers=4, ema=False, eval_model="model", crop_pct=1.0,
                eval_batch_size=1000, bn_reestimate_images=2048, bn_reestimate_batch=1000,
                bn_reestimate_transform="eval", auto_restart=None, cuda_graph=True, fast_groupnorm=True,
                save_every_steps=0, log_every=0),
}
_ALIASES = {"b1.5": "b15", "b1_5": "b15", "default": "b1"}
# Keys of the search's ``proxy:`` mapping that are no longer recipe fields, and what replaced them.
_REPLACED_PROXY_KEYS = {
    "lr": "use base_lr (the proxy recipe does not scale it: lr_scaling is none)",
    "resolution": "use resolutions: [R] (a list; null trains at each architecture's own resolution)",
    "min_scale": "use scale: [MIN, 1.0] (the random-resized-crop area range)",
}


def recipe_key(name: str) -> str | None:
    key = name.lower().removeprefix("lowformer_")
    key = _ALIASES.get(key, key)
    return key if key in _PRESETS else None


def get_recipe(name: str) -> Recipe:
    """The paper recipe named by a preset (``b0``, ``b1``, ``b15``, ``b2``, ``b3``, ``e1``, ``e2``, ``e3``) or
    the search's ``proxy`` recipe."""
    key = recipe_key(str(name))
    if key is None:
        known = RECIPE_NAMES + (PROXY,)
        hint = closest(str(name).lower(), known)
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError("recipe", name, "known recipes: " + ", ".join(known) + extra + " (or a YAML file)")
    return Recipe(name=key, **_PRESETS[key])


def load_recipe(spec: "Recipe | str | Path | Mapping | None" = None, **overrides) -> Recipe:
    """A recipe from a name, a YAML file, a dict or a Recipe, with ``overrides`` applied.

    A YAML file or dict may name ``base: b1`` (a recipe to start from; default: ``b1``) and set any field;
    unknown keys and bad values raise ConfigError naming the field.
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


def proxy_recipe(spec: "Recipe | Mapping | None" = None, path: str = "proxy") -> Recipe:
    """The search's proxy schedule: the ``proxy`` recipe with the fields of ``spec`` (a mapping, as in a search
    config's ``proxy:`` section) changed; a Recipe is returned as it is. Errors name ``path.<field>``, and a
    key that was renamed names its replacement."""
    if isinstance(spec, Recipe):
        return spec
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(path, spec, "a mapping of recipe fields (or a Recipe)")
    changes = dict(spec or {})
    for key in changes:
        if key in _REPLACED_PROXY_KEYS:
            raise ConfigError(f"{path}.{key}", changes[key], f"no longer a field; {_REPLACED_PROXY_KEYS[key]}")
    try:
        return get_recipe(PROXY).replace(**changes)
    except ConfigError as err:  # name the caller's section, not the recipe's
        raise ConfigError(err.path.replace("recipe", path, 1), err.value, err.allowed, err.source) from None


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
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}


def _coerce(name: str, value: Any) -> Any:
    """Type-check one field value as read from YAML / the CLI (lists become tuples, ints become floats)."""
    return _coerce_hint(f"recipe.{name}", _HINTS[name], value)


def _coerce_hint(path: str, hint, value: Any) -> Any:
    if typing.get_origin(hint) is Union:
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(hint)):
            return None
        for arm in arms:
            try:
                return _coerce_hint(path, arm, value)
            except ConfigError:
                if len(arms) == 1:
                    raise
        words = [_KIND_WORDS.get(typing.get_origin(a) or a, str(a)) for a in arms]
        raise ConfigError(path, value, " or ".join(words) + (" or null" if len(arms) < len(typing.get_args(hint))
                                                             else ""))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(path, value, f"a list of {len(args)} numbers")
        return tuple(_scalar(path, v, args[0]) for v in value)
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
    _range("epochs", r.epochs, 1)
    _range("warmup_epochs", r.warmup_epochs, 0)
    if r.warmup_epochs >= r.epochs and r.warmup_epochs > 0:
        raise ConfigError("recipe.warmup_epochs", r.warmup_epochs,
                          f"must be < epochs ({r.epochs}); epochs counts warmup, as the official 300 + 20 = 320")
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
    _check_classes(r.classes)
    for name in ("train_per_class", "val_per_class"):
        if getattr(r, name) is not None:
            _range(name, getattr(r, name), 1)
    _choice("eval_split", r.eval_split, EVAL_SPLITS)
    if r.resolutions is not None:
        if not r.resolutions:
            raise ConfigError("recipe.resolutions", [], "at least one resolution, or null (the architecture's)")
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
    for name in ("storage_resolution", "eval_resolution"):
        if getattr(r, name) is not None:
            _range(name, getattr(r, name), 8, 4096)
    _range("ema_decay", r.ema_decay, 0, 1, high_open=True)
    _range("ema_warmup_steps", r.ema_warmup_steps, 0)
    _choice("eval_model", r.eval_model, EVAL_MODELS)
    if r.eval_model == "ema" and not r.ema:
        raise ConfigError("recipe.eval_model", r.eval_model, "'model' when ema is false")
    if r.crop_pct is not None:
        _range("crop_pct", r.crop_pct, 0, 1, low_open=True)
    for name in ("eval_batch_size", "eval_every", "bn_reestimate_batch", "keep_checkpoints"):
        _range(name, getattr(r, name), 1)
    for name in ("bn_reestimate_images", "save_every_steps", "workers", "seed", "split_seed", "log_every"):
        _range(name, getattr(r, name), 0)
    _choice("bn_reestimate_transform", r.bn_reestimate_transform, BN_TRANSFORMS)
    if r.auto_restart is not None:
        _range("auto_restart", r.auto_restart, 0, low_open=True)
    _choice("precision", r.precision, PRECISIONS)
    _choice("compile_mode", r.compile_mode, COMPILE_MODES)
    _choice("init", r.init, INITS)


def _check_classes(classes) -> None:
    if isinstance(classes, int):
        _range("classes", classes, 1)
    elif isinstance(classes, tuple) and not classes:
        raise ConfigError("recipe.classes", [], "a number of classes, a list of class names or a class file")
