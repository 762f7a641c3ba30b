"""Architecture configs, blocks, the model, presets and checkpoint interop.

Names are imported from their modules on first use, so that reading a config does not import torch or timm.
"""
from importlib import import_module

_LAZY = {
    **dict.fromkeys(("CheckpointError", "LoadReport", "export_state_dict", "load_checkpoint"), "checkpoint"),
    **dict.fromkeys(("ArchConfig", "AttentionConfig", "DownsampleConfig", "HeadConfig", "StageConfig",
                     "StemConfig", "feature_shapes", "validate"), "config"),
    "create_model": "factory",
    **dict.fromkeys(("LowFormer", "init_weights", "pretrained_cfg_for", "set_drop_path"), "model"),
    **dict.fromkeys(("PRESET_NAMES", "PUBLISHED_PRESETS", "get_preset", "preset_key", "resolve_config"),
                    "presets"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
