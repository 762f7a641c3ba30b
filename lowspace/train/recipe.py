"""Training recipes: every knob of a training run as one validated dataclass.

A recipe is named by a LowFormer preset (``b0`` ... ``e3``: the paper's recipe for that preset) or is
``proxy``, the short schedule the architecture search trains every candidate with. Both run through the
same engine (:mod:`.engine`); they differ only in their fields. ``docs/training.md`` describes every field,
how the proxy relates to the paper recipe, and where the paper recipe still deviates from the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..config import Config, YamlDocument, option
from ..data.gpu_augment import DEFAULT_RESAMPLE_KERNEL, RESAMPLE_KERNELS
from ..errors import ConfigError, closest

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
LOADERS = ("auto", "cpu", "gpu")  # class folders: lowspace.data.choose_loader decides what auto means
_MAX_BATCH = 1_000_000        # images per (micro-)batch
_MAX_IMAGES = 100_000_000     # images per class, or in all
_MAX_SIDE = 4096              # pixels
_MAX_SEED = 2**32 - 1
_MAX_STEPS = 1_000_000_000


@dataclass(frozen=True)
class Recipe(Config):
    """A training recipe. Defaults are the paper's shared recipe with B1's numbers (see docs/training.md).

    Built like every lowspace config (:mod:`lowspace.config`): each field is converted to its type and checked
    against its bounds or choices; :meth:`validate` holds the checks that involve several fields.
    """

    config_kind = "recipe"

    name: str = "custom"
    # schedule and optimizer
    epochs: int = option(320, ge=1, le=100_000)
    warmup_epochs: float = option(20.0, ge=0, le=100_000)
    batch_size: int = option(128, ge=1, le=_MAX_BATCH)
    accumulation: int = option(1, ge=1, le=4096)
    base_lr: float = option(2.5e-4, gt=0, le=10)
    lr_scaling: str = option("world_accum", choices=LR_SCALINGS)
    min_lr: float = option(0.0, ge=0, le=10)
    betas: tuple[float, float] = option((0.9, 0.999), ge=0, lt=1)
    eps: float = option(1e-8, gt=0, le=1)
    weight_decay: float = option(0.1, ge=0, le=10)
    no_decay: str = option("official", choices=NO_DECAY_MODES)
    clip_grad_value: Optional[float] = option(2.0, gt=0, le=1e6)
    # loss and regularization
    loss: str = option("bce", choices=LOSSES)
    label_smoothing: float = option(0.1, ge=0, lt=1)
    mixup_alpha: float = option(0.1, ge=0, le=100)
    cutmix_alpha: float = option(0.1, ge=0, le=100)
    mix_prob: float = option(1.0, ge=0, le=1)
    mix_switch_prob: float = option(0.5, ge=0, le=1)
    mesa: float = option(0.0, ge=0, le=100)
    mesa_start: float = option(0.25, ge=0, le=1)
    drop_path: float = option(0.05, ge=0, lt=1)
    drop_path_skip: int = option(0, ge=0, le=10_000)
    drop_path_schedule: str = option("progress", choices=DROP_PATH_SCHEDULES)
    # data: which images, and how training images are augmented
    # classes: N classes, a list of class names or a class file
    classes: Union[int, tuple[str, ...], str, None] = option(None, ge=1, le=1_000_000)
    train_per_class: Optional[int] = option(None, ge=1, le=_MAX_IMAGES)
    # validation: images held out of the training split (class-balanced, seeded by split_seed; None: a tenth
    # of the smallest class, at most 500), or the data set's test split (eval_split: test; val_per_class
    # then caps it)
    val_per_class: Optional[int] = option(None, ge=1, le=_MAX_IMAGES)
    split_seed: int = option(0, ge=0, le=_MAX_SEED)
    eval_split: str = option("holdout", choices=EVAL_SPLITS)
    resolutions: Optional[tuple[int, ...]] = option((128, 160, 192, 224), ge=8, le=_MAX_SIDE)
    randaugment: Optional[str] = "rand-m3-n1-mstd1.0-inc1"
    reprob: float = option(0.0, ge=0, le=1)
    interpolation: str = option("random", choices=INTERPOLATIONS)
    scale: tuple[float, float] = option((0.08, 1.0), gt=0, le=1)
    ratio: tuple[float, float] = option((0.75, 4 / 3), gt=0, le=100)
    hflip: float = option(0.5, ge=0, le=1)
    translate: float = option(0.0, ge=0, le=0.5)
    materialize: bool = False
    storage_resolution: Optional[int] = option(None, ge=8, le=_MAX_SIDE)
    workers: int = option(8, ge=0, le=1024)
    loader: str = option("auto", choices=LOADERS)
    loader_processes: int = option(4, ge=1, le=64)
    gpu_resample: str = option(DEFAULT_RESAMPLE_KERNEL, choices=RESAMPLE_KERNELS)
    # EMA and evaluation
    ema: bool = True
    ema_decay: float = option(0.9998, ge=0, lt=1)
    ema_warmup_steps: float = option(2000.0, ge=0, le=1e9)
    eval_model: str = option("ema", choices=EVAL_MODELS)
    eval_resolution: Optional[int] = option(None, ge=8, le=_MAX_SIDE)
    crop_pct: Optional[float] = option(None, gt=0, le=1)
    eval_batch_size: int = option(200, ge=1, le=_MAX_BATCH)
    eval_every: int = option(1, ge=1, le=100_000)
    bn_reestimate_images: int = option(16000, ge=0, le=_MAX_IMAGES)
    bn_reestimate_batch: int = option(100, ge=1, le=_MAX_BATCH)
    bn_reestimate_transform: str = option("train", choices=BN_TRANSFORMS)
    auto_restart: Optional[float] = option(1.0, gt=0, le=100)  # top-1 points
    # runtime
    precision: str = option("bf16", choices=PRECISIONS)
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = option("default", choices=COMPILE_MODES)
    cuda_graph: bool = False
    fast_groupnorm: bool = False
    sync_bn: bool = False
    seed: int = option(0, ge=0, le=_MAX_SEED)
    init: str = option("official", choices=INITS)
    # checkpoints and logging
    save_every_steps: int = option(1000, ge=0, le=_MAX_STEPS)
    keep_checkpoints: int = option(2, ge=1, le=10_000)
    log_every: int = option(50, ge=0, le=_MAX_STEPS)

    def validate(self) -> None:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError("warmup_epochs", self.warmup_epochs,
                              f"must be < epochs ({self.epochs}); epochs counts warmup, as the official 300 + 20 = 320")
        if self.scale[0] > self.scale[1]:
            raise ConfigError("scale", list(self.scale), "[min, max] with min <= max (crop area fractions)")
        if self.ratio[0] > self.ratio[1]:
            raise ConfigError("ratio", list(self.ratio), "[min, max] with min <= max (aspect ratios)")
        if self.eval_model == "ema" and not self.ema:
            raise ConfigError("eval_model", self.eval_model, "'model' when ema is false")
        # single-field rules that bounds and choices cannot state
        if self.resolutions == ():
            raise ConfigError("resolutions", [], "at least one resolution, or null (the architecture's)")
        if self.classes == ():
            raise ConfigError("classes", [], "a number of classes, a list of class names or a class file")
        if self.randaugment is not None and not self.randaugment.startswith("rand-"):
            raise ConfigError("randaugment", self.randaugment,
                              "a timm RandAugment string such as 'rand-m3-n1-mstd1.0-inc1', or null")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                  override_source: str = "overrides") -> "Recipe":
        """A recipe from a mapping of fields; ``base`` names the recipe they change (default ``b1``), and
        the name defaults to ``<base>-custom`` (``custom`` without a base)."""
        changes = dict(data)
        base = changes.pop("base", None)
        start = _named(base, "base") if base is not None else get_recipe("b1")
        merged = {**start.to_dict(), "name": f"{start.name}-custom" if base is not None else "custom", **changes}
        return super().from_dict(merged, overrides, override_source=override_source)

    @classmethod
    def from_document(cls, doc: YamlDocument, overrides: Mapping[str, Any] | None = None, *,
                      override_source: str = "overrides") -> "Recipe":
        """A recipe file; its name defaults to the file's stem."""
        if doc.source and isinstance(doc.data, Mapping) and "name" not in doc.data:
            doc = YamlDocument({"name": Path(doc.source).stem, **doc.data}, doc.lines, doc.source, doc.what,
                               doc.text)
        return super().from_document(doc, overrides, override_source=override_source)

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
    return _named(name, "recipe")


def _named(name: Any, path: str) -> Recipe:
    key = recipe_key(name) if isinstance(name, str) else None
    if key is None:
        known = RECIPE_NAMES + (PROXY,)
        hint = closest(str(name).lower(), known)
        extra = f"; did you mean {hint!r}?" if hint else ""
        files = " (or a YAML file)" if path == "recipe" else ""
        raise ConfigError(path, name, "known recipes: " + ", ".join(known) + extra + files)
    return Recipe(name=key, **_PRESETS[key])


def load_recipe(spec: "Recipe | str | Path | Mapping | None" = None, **overrides) -> Recipe:
    """A recipe from a name, a YAML file, a dict or a Recipe, with ``overrides`` (None values ignored) applied.

    A YAML file or dict may name ``base: b1`` (a recipe to start from; default: ``b1``) and set any field;
    unknown keys and bad values raise ConfigError naming the field (and the file and line).
    """
    if spec is None:
        spec = "b1"
    if isinstance(spec, Recipe):
        recipe = spec
    elif isinstance(spec, Mapping):
        recipe = Recipe.from_dict(spec)
    elif isinstance(spec, str) and (recipe_key(spec) or not _names_a_file(spec)):
        recipe = get_recipe(spec)  # an unknown name raises with the list of names
    elif isinstance(spec, (str, Path)):
        recipe = Recipe.from_yaml(Path(spec))
    else:
        raise ConfigError("recipe", spec, "a recipe name, a YAML path, a dict or a Recipe")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return recipe.replace(**overrides) if overrides else recipe


def _names_a_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or Path(text).is_file()


def proxy_recipe(spec: "Recipe | Mapping | None" = None, path: str = "proxy") -> Recipe:
    """The search's proxy schedule: the ``proxy`` recipe with the fields of ``spec`` (a mapping, as in a search
    config's ``proxy:`` section) changed; a Recipe is returned as it is. ``epochs: 1`` without a
    ``warmup_epochs`` gets a warm-up that fits (:func:`_fitted_warmup`). Errors name ``path.<field>``, and a
    key that was renamed names its replacement."""
    if isinstance(spec, Recipe):
        return spec
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(path, spec, "a mapping of recipe fields (or a Recipe)")
    changes = dict(spec or {})
    for key in changes:
        if key in _REPLACED_PROXY_KEYS:
            raise ConfigError(key, changes[key], f"no longer a field; {_REPLACED_PROXY_KEYS[key]}").within(path)
    base = get_recipe(PROXY)
    changes.update(_fitted_warmup(base, changes))
    try:
        return base.replace(**changes)
    except ConfigError as err:  # name the caller's section
        raise err.within(path) from None


def _fitted_warmup(base: Recipe, changes: Mapping) -> dict:
    """A warm-up that fits ``epochs`` set without ``warmup_epochs`` (one epoch: the default 1-epoch warm-up
    would not leave any): the default's share of the default epochs. Settings where it fits are kept."""
    epochs = changes.get("epochs")
    if "warmup_epochs" in changes or not isinstance(epochs, int) or isinstance(epochs, bool):
        return {}
    if not 1 <= epochs <= base.warmup_epochs:
        return {}
    return {"warmup_epochs": round(base.warmup_epochs * epochs / base.epochs, 3)}
