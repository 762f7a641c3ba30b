"""lowspace: latency-aware design-space exploration of LowFormer-style backbones.

The public API (stable names; all but the errors are imported on first use, so that importing lowspace
does not import torch):

    ArchConfig, ConfigError, create_model, load_checkpoint, export_state_dict,
    count_params, count_macs, measure, deploy
"""
from importlib import import_module, metadata

from .errors import ConfigError, LowspaceError

try:
    __version__ = metadata.version("lowspace")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "ArchConfig": "lowspace.arch.config",
    "create_model": "lowspace.arch.factory",
    "load_checkpoint": "lowspace.arch.checkpoint",
    "export_state_dict": "lowspace.arch.checkpoint",
    "get_preset": "lowspace.arch.presets",
    "count_params": "lowspace.cost.count",
    "count_macs": "lowspace.cost.count",
    "measure": "lowspace.cost.measure",
    "deploy": "lowspace.runtime",
}

__all__ = ["ConfigError", "LowspaceError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lowspace' has no attribute {name!r}")
