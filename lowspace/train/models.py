"""What a training run trains: a LowFormer config or a timm model built from scratch.

:func:`model_source` is the one place that decides between the two. A LowFormer config (preset name, YAML
path, dict, ArchConfig) is an :class:`~lowspace.arch.ArchConfig`; a timm model is a :class:`TimmModel`, built
by the engine once the data is known (``timm.create_model(name, pretrained=False, in_chans=<data's channels>,
num_classes=<data's classes>)``), so peers train with the same recipe, data, seeds, checkpoints and evaluation
as a config does::

    from lowspace.train import TimmModel, fit
    fit(TimmModel.named("resnet10t"), "fashion_mnist", "b1", "runs/resnet10t", epochs=10)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import NO_VALUE, ConfigError

TIMM_PREFIX = "timm:"
MAX_SUGGESTIONS = 5


@dataclass(frozen=True)
class TimmModel:
    """A timm architecture (a name of ``timm.list_models()``) to train from random weights."""

    name: str

    @classmethod
    def named(cls, name: str, flag: str = "--timm") -> "TimmModel":
        """The timm model ``name`` (a ``timm:`` prefix is dropped); an unknown name is a one-line ConfigError
        naming ``flag`` with the closest timm names."""
        text = str(name).strip().removeprefix(TIMM_PREFIX)
        import timm
        if not text or not timm.is_model(text):
            raise ConfigError(flag, name, "a timm model name (timm.list_models()); " + _suggest(text))
        return cls(text)

    @property
    def label(self) -> str:
        """The name runs and reports show: ``timm:NAME``."""
        return TIMM_PREFIX + self.name

    @property
    def arch_id(self) -> str:
        """The key reports and caches use for it (a LowFormer config's is a hash): ``timm:NAME``."""
        return self.label

    @property
    def resolution(self) -> int:
        """The model's own input side (timm's default ``input_size``), used where a recipe names none."""
        import timm
        return int(timm.get_pretrained_cfg(self.name).input_size[-1])

    def build(self, num_classes: int, in_chans: int, drop_path: float = 0.0, img_size: int | None = None) -> nn.Module:
        """The model with random weights (the global torch seed decides them) for ``in_chans`` channels and
        ``num_classes`` classes, evaluated by lowspace's rule (crop 0.95, bicubic) unless the recipe sets one.
        ``drop_path`` and ``img_size`` (the side it is trained and evaluated at: LeViT's attention biases
        depend on it) are passed where the architecture takes them."""
        from ..arch.model import EVAL_CROP_PCT, EVAL_INTERPOLATION
        optional = {"drop_path_rate": drop_path or None, "img_size": img_size}
        model = _create(self.name, dict(pretrained=False, in_chans=in_chans, num_classes=num_classes),
                        {k: v for k, v in optional.items() if v is not None})
        model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, crop_pct=EVAL_CROP_PCT,
                                    interpolation=EVAL_INTERPOLATION)
        return model


def _create(name: str, required: dict, optional: dict) -> nn.Module:
    """``timm.create_model(name, **required, **optional)``, leaving out each optional argument the
    architecture does not take (timm raises TypeError naming it)."""
    import timm
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(name, **required, **optional)
        except TypeError as err:
            unknown = next((k for k in optional if f"'{k}'" in str(err)), None)
            if unknown is None:
                raise
            del optional[unknown]


def _suggest(text: str) -> str:
    """Close timm names for a 'did you mean' hint: names matching ``*text*``, else difflib's closest ones."""
    import difflib

    import timm
    names = timm.list_models()
    found = timm.list_models(f"*{text}*") if text else []
    if not found and text:
        stem = text.split("_")[0]
        found = difflib.get_close_matches(text, names, n=MAX_SUGGESTIONS, cutoff=0.6) or \
            fnmatch.filter(names, f"{stem}*")
    if not found:
        return "see timm.list_models('PATTERN*')"
    shown = ", ".join(found[:MAX_SUGGESTIONS]) + (", ..." if len(found) > MAX_SUGGESTIONS else "")
    return f"did you mean {shown}?"


def model_source(config=None, timm: str | None = None):
    """What to train: the ArchConfig of ``config`` or the :class:`TimmModel` ``timm`` (exactly one of the two;
    a ``TimmModel`` or a ``timm:NAME`` string as ``config`` is taken as a timm model too)."""
    from ..arch import resolve_config
    if isinstance(config, TimmModel):
        config, timm = None, config.name if timm is None else timm
    elif isinstance(config, str) and config.startswith(TIMM_PREFIX):
        config, timm = None, config if timm is None else timm
    if config is None and timm is None:
        raise ConfigError("config", NO_VALUE, "a LowFormer config (preset name or YAML path) or --timm NAME")
    if config is not None and timm is not None:
        raise ConfigError("--timm", timm, f"either a LowFormer config ({config}) or --timm NAME, not both")
    return TimmModel.named(timm) if timm is not None else resolve_config(config)


def build_timm(source: TimmModel, num_classes: int, in_chans: int, drop_path: float, seed: int,
               img_size: int | None = None) -> nn.Module:
    """``source`` built for the data, its weights drawn from ``seed`` (the recipe's, as a config's are)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return source.build(num_classes, in_chans, drop_path, img_size)
