"""Architecture configs, blocks, the model, presets and checkpoint interop."""
from .checkpoint import CheckpointError, LoadReport, export_state_dict, load_checkpoint
from .config import (ArchConfig, AttentionConfig, DownsampleConfig, HeadConfig, StageConfig, StemConfig,
                     feature_shapes, validate)
from .factory import create_model
from .model import LowFormer, init_weights, pretrained_cfg_for, set_drop_path
from .presets import PRESET_NAMES, PUBLISHED_PRESETS, get_preset, preset_key, resolve_config

__all__ = [
    "ArchConfig", "AttentionConfig", "DownsampleConfig", "HeadConfig", "StageConfig", "StemConfig",
    "feature_shapes", "validate", "create_model", "LowFormer", "init_weights", "set_drop_path",
    "pretrained_cfg_for",
    "PRESET_NAMES", "PUBLISHED_PRESETS", "get_preset", "preset_key", "resolve_config",
    "CheckpointError", "LoadReport", "export_state_dict", "load_checkpoint",
]
