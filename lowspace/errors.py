"""Errors raised by lowspace for bad user input.

Every error names *where* the problem is (a dotted config path, a file, a CLI flag), the offending
value, and what would have been allowed, so a user never has to read a traceback from inside torch.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class LowspaceError(Exception):
    """Base class of all lowspace errors meant for the user."""


class ConfigError(LowspaceError, ValueError):
    """An architecture, recipe, search-space or protocol value that is not allowed.

    Args:
        path: dotted location of the bad value, e.g. ``stages.2.attention.stride``.
        value: the value found there.
        allowed: a short description of what is allowed.
        source: optional file the value came from.
    """

    def __init__(self, path: str, value: Any, allowed: str, source: str | None = None):
        self.path = path
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: got {value!r}; {allowed}")

    def __reduce__(self):  # picklable, so it crosses into and out of worker processes intact
        return (type(self), (self.path, self.value, self.allowed, self.source))


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most similar to ``name`` (for 'did you mean' hints), or None."""
    matches = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_key_error(path: str, key: str, options: Iterable[str], source: str | None = None) -> ConfigError:
    """A ConfigError for a key that is not a field, suggesting the closest valid name."""
    options = sorted(options)
    hint = closest(key, options)
    allowed = f"unknown key; did you mean {hint!r}? " if hint else "unknown key; "
    allowed += "valid keys: " + ", ".join(options)
    return ConfigError(f"{path}.{key}" if path else key, key, allowed, source)
