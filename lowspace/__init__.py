"""lowspace: latency-aware design-space exploration of LowFormer-style backbones.

The public API (stable names; all but the errors are imported on first use, so that importing lowspace
does not import torch):

    ArchConfig, ConfigError, create_model, load_checkpoint, export_state_dict,
    count_params, count_macs, measure, deploy
"""
from importlib import metadata
from pathlib import Path

from ._lazy import lazy_exports
from .errors import ConfigError, LowspaceError


def _source_version() -> str:
    """The version a source tree's pyproject.toml declares (a tree that was never installed)."""
    try:
        import tomllib
        return tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError, ImportError):
        return "0+unknown"


try:
    __version__ = metadata.version("lowspace")
except metadata.PackageNotFoundError:
    __version__ = _source_version()

_LAZY = {
    "ArchConfig": "arch.config",
    "create_model": "arch.factory",
    "load_checkpoint": "arch.checkpoint",
    "export_state_dict": "arch.checkpoint",
    "get_preset": "arch.presets",
    "count_params": "cost.count",
    "count_macs": "cost.count",
    "measure": "cost.measure",
    "deploy": "runtime",
}

__all__ = ["ConfigError", "LowspaceError", "__version__", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
