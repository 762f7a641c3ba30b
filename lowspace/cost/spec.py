"""What to count or time: a LowFormer config, a timm model name, or any ``nn.Module``, behind one interface.

``resolve_spec`` accepts an :class:`~lowspace.arch.ArchConfig`, a dict, a preset name (``b1``,
``lowformer_b1``), a YAML path, a timm model name (``efficientvit_b1``), ``timm:NAME`` (timm's model even
where we have a preset of that name: ``timm:lowformer_b1`` is timm's twin of our ``b1``), or an
``nn.Module``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..arch import ArchConfig, LowFormer, preset_key, resolve_config
from ..arch.presets import PRESET_NAMES
from ..errors import ConfigError, closest

TIMM_PREFIX = "timm:"


@dataclass
class ModelSpec:
    """A resolved model description.

    kind: ``config`` (a LowFormer config of ours), ``timm`` (a timm model by name) or ``module``.
    implementation: ``lowspace``, ``timm`` or ``module`` (the bench table's implementation column).
    preset: the preset key for configs that are presets (so the bench can add timm's twin).
    """

    kind: str
    name: str
    implementation: str
    config: ArchConfig | None = None
    timm_name: str | None = None
    module: nn.Module | None = None
    preset: str | None = None

    @property
    def default_resolution(self) -> int:
        if self.config is not None:
            return self.config.resolution
        if self.kind == "timm":
            import timm
            return int(timm.get_pretrained_cfg(self.timm_name).input_size[-1])
        cfg = getattr(self.module, "cfg", None)
        return int(cfg.resolution) if isinstance(cfg, ArchConfig) else 224

    def resolution(self, requested: int | None = None) -> int:
        """``requested``, or the model's own input side where it is None."""
        return self.default_resolution if requested is None else requested

    @property
    def in_chans(self) -> int:
        if self.config is not None:
            return self.config.in_chans
        if self.kind == "timm":
            import timm
            return int(timm.get_pretrained_cfg(self.timm_name).input_size[0])
        cfg = getattr(self.module, "cfg", None)
        if isinstance(cfg, ArchConfig):
            return cfg.in_chans
        return int(getattr(self.module, "in_chans", 3))

    def identity(self, resolution: int | None = None) -> str | None:
        """Cache identity of the network (None: unknown, do not cache).

        Configs use the arch_id of the config at the measured resolution, so the same network measured at
        the same size has one identity whatever resolution its YAML names.
        """
        cfg = self.config
        if cfg is None and isinstance(self.module, LowFormer):
            cfg = self.module.cfg  # a LowFormer is assumed to be the network its cfg describes
        if cfg is not None:
            if resolution is not None and resolution != cfg.resolution:
                cfg = cfg.replace(resolution=resolution)
            return f"arch:{cfg.arch_id}"
        if self.kind == "timm":
            return f"timm:{self.timm_name}"
        return None

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The network in eval mode on ``device`` (built there directly; random weights for configs and timm)."""
        if self.module is not None:
            return self.module.eval().to(device)
        with torch.device(device):
            if self.config is not None:
                # PyTorch's default init: faster than the training init and irrelevant for counting/timing
                model = LowFormer(self.config, init="torch")
            else:
                import timm
                model = timm.create_model(self.timm_name, pretrained=False)
        return model.eval()


def _timm_spec(name: str, original: str) -> ModelSpec:
    import timm
    if not timm.is_model(name):
        names = timm.list_models()
        hint = closest(name, names)
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError("model", original, "not a timm model name (see timm.list_models())" + extra)
    return ModelSpec("timm", name, "timm", timm_name=name)


def resolve_spec(obj: Any) -> ModelSpec:
    """A :class:`ModelSpec` for anything the cost engine accepts (see the module docstring)."""
    if isinstance(obj, ModelSpec):
        return obj
    if isinstance(obj, nn.Module):
        cfg = getattr(obj, "cfg", None)
        name = (cfg.name if isinstance(cfg, ArchConfig) else None) or type(obj).__name__
        impl = "lowspace" if isinstance(obj, LowFormer) else "module"
        return ModelSpec("module", name, impl, module=obj)
    if isinstance(obj, (ArchConfig, dict)):
        cfg = resolve_config(obj)
        return ModelSpec("config", cfg.name or cfg.arch_id, "lowspace", config=cfg)
    if isinstance(obj, (str, Path)):
        text = str(obj)
        if isinstance(obj, str) and text.startswith(TIMM_PREFIX):
            return _timm_spec(text[len(TIMM_PREFIX):], text)
        key = preset_key(text) if isinstance(obj, str) else None
        if key is not None:
            cfg = resolve_config(key)
            return ModelSpec("config", key, "lowspace", config=cfg, preset=key)
        path = Path(text)
        if isinstance(obj, Path) or path.suffix in (".yaml", ".yml") or path.exists():
            cfg = resolve_config(path)  # raises ConfigError naming the file
            return ModelSpec("config", cfg.name or path.stem, "lowspace", config=cfg)
        try:
            import timm
        except ImportError:  # pragma: no cover - timm is a dependency
            timm = None
        if timm is not None and timm.is_model(text):
            return ModelSpec("timm", text, "timm", timm_name=text)
        hint = closest(text.lower(), PRESET_NAMES)
        if hint is None and timm is not None:
            hint = closest(text, timm.list_models())
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError("model", text, "not a preset (" + ", ".join(PRESET_NAMES) + "), an existing YAML "
                          "config or a timm model name" + extra)
    raise ConfigError("model", type(obj).__name__, "an ArchConfig, dict, preset name, YAML path, timm model "
                      "name or nn.Module")
