"""``create_model``: a network from a preset name, a YAML path or an ArchConfig, optionally with weights or as a
feature extractor."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from timm.models import FeatureInfo

from ..errors import ConfigError
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict, to_lowspace_keys
from .config import ArchConfig
from .model import LowFormer
from .presets import preset_key, resolve_config


def create_model(spec: str | Path | ArchConfig | dict, pretrained: bool | str | Path | None = None,
                 num_classes: int | None = None, in_chans: int | None = None, resolution: int | None = None,
                 drop_path_rate: float = 0.0, drop_path_skip: int = 0, init: str = "official",
                 features_only: bool = False, out_indices: int | tuple[int, ...] | None = None) -> nn.Module:
    """Build a LowFormer-family model.

    Args:
        spec: preset name (``b1``, ``lowformer_b15``...), YAML path, dict or ArchConfig.
        pretrained: a weights file (official, timm or lowspace format; .pth/.pt/.safetensors), or True to
            fetch timm's published ImageNet weights (``timm/lowformer_*.in1k`` on the Hugging Face hub,
            presets only; needs network access). With a different ``num_classes`` the classifier is left
            freshly initialized; with a different ``in_chans`` the stem conv is adapted as timm does.
        num_classes, in_chans, resolution: override the config's values.
        drop_path_rate, drop_path_skip, init: see :class:`lowspace.arch.model.LowFormer`.
        features_only: return a feature extractor (:class:`StageFeatures`, timm's ``features_only``
            contract) instead: calling it gives the list of stage outputs ``out_indices`` (default: every
            stage), its ``feature_info`` their channels and reductions; the stages after the last one and
            the head are pruned.
    """
    cfg = resolve_config(spec)
    overrides = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans, resolution=resolution).items()
                 if v is not None}
    target = cfg.replace(**overrides) if overrides else cfg
    model = LowFormer(target, drop_path_rate=drop_path_rate, drop_path_skip=drop_path_skip, init=init)
    if pretrained:
        state_dict = _pretrained_state_dict(spec, cfg, pretrained)
        _load_adapted(model, cfg, state_dict)
    return feature_extractor(model, out_indices) if features_only else model


class StageFeatures(nn.Module):
    """A LowFormer as a feature extractor, timm's ``features_only`` contract: calling it returns the list of
    the stage outputs ``out_indices``; ``feature_info`` (a ``timm.models.FeatureInfo``) gives their channels
    and reductions. The stages after the last one taken and the head are pruned from the model."""

    def __init__(self, model: LowFormer, out_indices: int | tuple[int, ...] | None = None):
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices)  # keeps the full feature_info list
        self.feature_info = FeatureInfo([dict(info) for info in model.feature_info], tuple(self.out_indices))
        self.model = model
        self.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier")}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)


def feature_extractor(model: LowFormer, out_indices: int | tuple[int, ...] | None = None) -> StageFeatures:
    """``model`` (pruned in place) as a :class:`StageFeatures` of the stages ``out_indices`` (an int n: the
    last n; default: all)."""
    return StageFeatures(model, out_indices)


def _pretrained_state_dict(spec, cfg: ArchConfig, pretrained) -> dict[str, torch.Tensor]:
    if pretrained is True:
        key = preset_key(str(spec)) if isinstance(spec, str) else None
        if key is None:
            raise ConfigError("pretrained", True, "published weights exist for presets only; give a weights file")
        import timm
        _check_hub_reachable(key)
        try:
            ref = timm.create_model(f"lowformer_{key}", pretrained=True)
        except Exception as err:  # noqa: BLE001 - network / hub failures become one clear message
            raise CheckpointError(f"could not fetch timm's lowformer_{key} weights ({type(err).__name__}: {err}); "
                                  "download them elsewhere and pass the file as pretrained=PATH") from None
        return ref.state_dict()
    return read_state_dict(pretrained)


def _load_adapted(model: LowFormer, source_cfg: ArchConfig, state_dict: dict) -> None:
    """Load weights made for ``source_cfg`` into ``model``, which may differ in classes / input channels."""
    ref = LowFormer(source_cfg, init="torch")
    renamed, _ = to_lowspace_keys(ref, state_dict)
    if model.cfg.in_chans != source_cfg.in_chans and "stem.conv.conv.weight" in renamed:
        from timm.models import adapt_input_conv
        renamed["stem.conv.conv.weight"] = adapt_input_conv(model.cfg.in_chans, renamed["stem.conv.conv.weight"],
                                                            source_cfg.in_chans)
    if model.cfg.num_classes != source_cfg.num_classes:
        renamed = {k: v for k, v in renamed.items() if not k.startswith("head.classifier.")}
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith("head.classifier.")}
        renamed.update(fresh)
    load_checkpoint(model, renamed, strict=True)


def _check_hub_reachable(key: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after the hub client's retries, where the weights' host cannot be reached."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # the hub client reads its local cache
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        raise CheckpointError(f"cannot reach {host} to fetch timm's lowformer_{key} weights ({err}); download "
                              "them elsewhere and pass the file as pretrained=PATH") from None
