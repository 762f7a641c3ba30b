"""Architecture configs, blocks, the model, presets and checkpoint interop.

Names are imported from their modules on first use, so that reading a config does not import torch or timm.
"""
from .._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
