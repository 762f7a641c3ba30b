"""YAML documents that remember the line of every key, so errors can say where the bad value is."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import yaml

from ..errors import ConfigError, unknown_key_error


class YamlDoc:
    """Parsed YAML (``data``) plus the line of every key path (``lines``)."""

    def __init__(self, text: str, source: str | None, kind: str = "file"):
        self.source = source
        self.kind = kind
        try:
            self.data = yaml.safe_load(text)
            node = yaml.compose(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{source or '<' + kind + '>'}" + (f", line {mark.line + 1}" if mark else "")
            raise ConfigError("<yaml>", None, f"not valid YAML ({getattr(err, 'problem', err)})", where) from None
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                self.lines[path + (str(key),)] = k.start_mark.line + 1
                self._walk(v, path + (str(key),))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (str(i),))

    def where(self, *path) -> str:
        """``"file, line N"`` of the deepest known prefix of ``path``."""
        keys = tuple(str(p) for p in path)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        line = self.lines.get(keys) if keys or not path else None  # a missing key has no line
        src = self.source or f"<{self.kind}>"
        return f"{src}, line {line}" if line else src

    def error(self, path: Sequence, value: Any, allowed: str) -> ConfigError:
        return ConfigError(".".join(map(str, path)) or "<root>", value, allowed, self.where(*path))

    def check_keys(self, path: Sequence, mapping: Mapping, allowed: Sequence[str]) -> None:
        """Raise for the first key of ``mapping`` (found at ``path``) not in ``allowed``."""
        for key in mapping:
            if key not in allowed:
                err = unknown_key_error(".".join(map(str, path)), str(key), allowed)
                raise ConfigError(err.path, err.value, err.allowed, self.where(*path, key))
