"""The published LowFormer presets, stored as YAML configs in ``lowformer_presets/``."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError, closest
from .config import ArchConfig

PRESET_NAMES = ("b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3")
PUBLISHED_PRESETS = ("b0", "b1", "b15", "b3", "e1", "e2", "e3")
_ALIASES = {"b1.5": "b15", "b1_5": "b15"}


def data_dir(env: str, repo_dir: str, packaged: str) -> Path:
    """A data folder: the env override, the source checkout's folder, or the copy inside an installed wheel."""
    if os.environ.get(env):
        return Path(os.environ[env])
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / repo_dir, here / packaged):
        if candidate.is_dir():
            return candidate
    return here.parent / repo_dir


def preset_dir() -> Path:
    """Folder holding the preset YAML files (``LOWSPACE_PRESETS`` overrides)."""
    return data_dir("LOWSPACE_PRESETS", "lowformer_presets", "_presets")


def preset_key(name: str) -> str | None:
    """Normalize ``B1``, ``lowformer_b1``, ``b1.5`` ... to a preset key, or None if it is not a preset."""
    key = name.lower().removeprefix("lowformer_").removeprefix("lowformer-")
    key = _ALIASES.get(key, key)
    return key if key in PRESET_NAMES else None


@lru_cache(maxsize=None)
def _load(key: str) -> ArchConfig:
    return ArchConfig.from_yaml(preset_dir() / f"{key}.yaml")


def get_preset(name: str) -> ArchConfig:
    """The ArchConfig of a preset by name (``b0``, ``b1``, ``b15``, ``b2``, ``b3``, ``e1``-``e3``)."""
    key = preset_key(name)
    if key is None:
        hint = closest(name.lower(), PRESET_NAMES)
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError("preset", name, "known presets: " + ", ".join(PRESET_NAMES) + extra)
    return _load(key)


def resolve_config(spec) -> ArchConfig:
    """An ArchConfig from a preset name, a YAML path, a dict or an ArchConfig."""
    if isinstance(spec, ArchConfig):
        return spec
    if isinstance(spec, dict):
        return ArchConfig.from_dict(spec)
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if isinstance(spec, str) and preset_key(text):
            return get_preset(text)
        path = Path(text)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.exists():
                raise ConfigError("config", text, "no such file")
            return ArchConfig.from_yaml(path)
        return get_preset(text)  # raises with the list of presets
    raise ConfigError("config", spec, "a preset name, a YAML path, a dict or an ArchConfig")
