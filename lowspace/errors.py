"""Errors raised by lowspace for bad user input.

Every error names *where* the problem is (a file and line, a dotted config path, a CLI flag), the offending
value, and what would have been allowed, on one line, so a user never has to read a traceback from inside
torch. ``docs/config.md`` describes the format.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

_MAX_VALUE_CHARS = 100


class _NoValue:
    """Marks a ConfigError about a place rather than a value (an unreadable file, an empty document)."""

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __reduce__(self):
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()


class LowspaceError(Exception):
    """Base class of all lowspace errors meant for the user."""


class ConfigError(LowspaceError, ValueError):
    """An architecture, recipe, search-space, protocol or command-line value that is not allowed.

    Args:
        path: dotted location of the bad value, e.g. ``stages.2.attention.stride`` ("" for a whole file).
        value: the value found there (``NO_VALUE`` where there is none to show).
        allowed: a short description of what is allowed.
        source: where the value came from: a file, ``"file, line N"``, ``"command line"``.

    The message is one line: ``source: path: got value; allowed``.
    """

    def __init__(self, path: str, value: Any, allowed: str, source: str | None = None):
        self.path = path
        self.value = value
        self.allowed = allowed
        self.source = source
        parts = [_one_line(source)] if source else []
        if path:
            parts.append(_one_line(path))
        got = "" if value is NO_VALUE else f"got {_short_repr(value)}; "
        parts.append(got + _one_line(allowed))
        super().__init__(": ".join(parts))

    def __reduce__(self):  # picklable, so it crosses into and out of worker processes intact
        return (type(self), (self.path, self.value, self.allowed, self.source))

    def within(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix`` put in front of its path (for a config nested at ``prefix``)."""
        if not prefix:
            return self
        path = f"{prefix}.{self.path}" if self.path else prefix
        return ConfigError(path, self.value, self.allowed, self.source)

    def with_source(self, source: str | None) -> "ConfigError":
        """The same error naming ``source`` unless it already names one."""
        if source is None or self.source is not None:
            return self
        return ConfigError(self.path, self.value, self.allowed, source)


def _one_line(text: Any) -> str:
    return re.sub(r"\s*[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]\s*", " ", str(text)).strip()


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails still gets a readable error
        text = f"<{type(value).__name__}>"
    text = _one_line(text)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."


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
