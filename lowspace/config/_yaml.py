"""The one YAML loader for every file lowspace reads (configs, spaces, search settings, presets).

Safe by construction: UTF-8 only, at most ``MAX_BYTES`` of text, ``MAX_DEPTH`` levels of nesting and
``MAX_NODES`` values after alias expansion (a "billion laughs" file is refused, not expanded), no duplicate
keys, no tags (``!!python/...``, ``!custom``), no NaN or infinity, integers of at most 30 digits. Dates
stay strings and ``1e-3`` is a number (YAML 1.1 would read a string). Each problem is a one-line
ConfigError naming the file and line. The document remembers the line of every key path.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import NO_VALUE, ConfigError, unknown_key_error
from ._kinds import article

MAX_BYTES = 1_000_000
MAX_DEPTH = 40
MAX_NODES = 100_000
_MAX_INT_CHARS = 30


class _Refused(Exception):
    """A problem found while loading, with the YAML mark where it is and, where known, the node and the key
    path it sits at."""

    def __init__(self, message: str, mark, value: Any = NO_VALUE, node=None, path: tuple = ()):
        super().__init__(message)
        self.message, self.mark, self.value, self.node, self.path = message, mark, value, node, path


class _Loader(yaml.SafeLoader):
    """SafeLoader (the pure-Python composer, so the hooks below run) with lowspace's limits."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if getattr(event, "tag", None) is not None:
            raise _Refused(f"YAML tags are not allowed (found {event.tag})", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_int(loader, node):
    if len(node.value) > _MAX_INT_CHARS:
        raise _Refused(f"integers have at most {_MAX_INT_CHARS} digits", node.start_mark, node.value, node)
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise _Refused("not a valid integer", node.start_mark, node.value, node) from None


def _construct_float(loader, node):
    try:
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
    except (ValueError, OverflowError):
        raise _Refused("not a valid number", node.start_mark, node.value, node) from None
    if not math.isfinite(value):
        raise _Refused("NaN and infinity are not allowed", node.start_mark, node.value, node)
    return value


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class _Dumper(yaml.SafeDumper):
    """Quotes exactly the strings that ``_Loader`` would read as something else."""


_Dumper.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


def dump_yaml(data: Any) -> str:
    """YAML text that :func:`parse_yaml` reads back as ``data``."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True)


# ==================================================================== documents
class YamlDocument:
    """Parsed YAML (``data``), its ``source`` and ``text``, and the line of every key path (``lines``)."""

    def __init__(self, data: Any, lines: dict[tuple, int], source: str | None, what: str, text: str):
        self.data, self.lines, self.source, self.what, self.text = data, lines, source, what, text

    def where(self, *path) -> str:
        """``"file, line N"`` of the deepest key of ``path`` that the document has."""
        keys = tuple(str(p) for p in path)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        line = self.lines.get(keys) if keys or not path else None
        src = self.source or f"<{self.what}>"
        return f"{src}, line {line}" if line else src

    def error(self, path: Sequence, value: Any, allowed: str) -> ConfigError:
        """A ConfigError at ``path`` (a list of keys), naming the file and line."""
        return ConfigError(".".join(map(str, path)), value, allowed, self.where(*path))

    def check_keys(self, path: Sequence, mapping: Mapping, allowed: Sequence[str]) -> None:
        """Raise for the first key of ``mapping`` (found at ``path``) not in ``allowed``."""
        for key in mapping:
            if key not in allowed:
                err = unknown_key_error(".".join(map(str, path)), str(key), allowed)
                raise err.with_source(self.where(*path, key))

    def locate(self, err: ConfigError) -> ConfigError:
        """``err`` naming this document's file and the line of its path (unless it names a source)."""
        return err.with_source(self.where(*err.path.split(".")) if err.path else self.where())


def read_yaml(path: str | Path, what: str = "config") -> YamlDocument:
    """Load a YAML file; every problem (unreadable, too large, not UTF-8, malformed) is a ConfigError."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError("", source, f"cannot read the {what} ({reason})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError("", NO_VALUE, f"file larger than {MAX_BYTES:,} bytes; {article(what)} is small text", source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError("", NO_VALUE, f"not UTF-8 text (byte 0x{raw[err.start]:02x}); {article(what)} is YAML text",
                          f"{source}, line {line}") from None
    return parse_yaml(text, source, what=what)


def parse_yaml(text: str, source: str | None = None, what: str = "config", allow_empty: bool = False) -> YamlDocument:
    """Load YAML text (``source`` names it in errors); an empty document is an error unless ``allow_empty``."""
    name = source or f"<{what}>"
    if len(text) > MAX_BYTES:
        raise ConfigError("", NO_VALUE, f"text longer than {MAX_BYTES:,} characters", name)
    text = text.removeprefix("\ufeff")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if _is_empty(node):
            if allow_empty:
                return YamlDocument(None, {}, source, what, text)
            raise ConfigError("", NO_VALUE, "empty file" if source else "empty document", name)
        lines: dict[tuple, int] = {}
        paths: dict[int, tuple] = {}
        _check_tree(node, lines, paths)
        data = loader.construct_document(node)
    except _Refused as err:
        path = err.path or (paths.get(id(err.node), ()) if err.node is not None else ())
        raise ConfigError(".".join(path), err.value, err.message, _at(name, err.mark)) from None
    except yaml.YAMLError as err:
        raise ConfigError("", NO_VALUE, f"not valid YAML ({_problem(err)})", _at(name, _mark(err, text))) from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(data, lines, source, what, text)


def _is_empty(node) -> bool:
    """No document, or one that holds nothing (``---`` alone, only comments)."""
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
                            and node.value == "")


def _check_tree(root, lines: dict[tuple, int], paths: dict[int, tuple]) -> None:
    """Refuse recursive aliases, duplicate and non-scalar keys, and documents that nest or expand too far;
    record the line of every key path and the path of every node (``paths``: id -> path, the first one for
    aliased nodes). A repeated (aliased) node counts at its expanded size and height without being walked
    again, so a "billion laughs" file is refused in linear time."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    total = 0

    def count(n: int, mark) -> None:
        nonlocal total
        total += n
        if total > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} values after expanding aliases", mark)

    def visit(node, path: tuple, depth: int, stack: set) -> tuple[int, int]:
        if id(node) in stack:
            raise _Refused("a recursive alias (a node that contains itself)", node.start_mark, path=path)
        lines.setdefault(path, node.start_mark.line + 1)
        paths.setdefault(id(node), path)
        if id(node) in sizes:
            size, height = sizes[id(node)]
            count(size, node.start_mark)
        else:
            count(1, node.start_mark)
            size, height = 1, 1
            stack.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for i, child in enumerate(node.value):
                    s, h = visit(child, path + (str(i),), depth + 1, stack)
                    size, height = size + s, max(height, h + 1)
            elif isinstance(node, yaml.MappingNode):
                for key, child in _keys(node, path):
                    lines[path + (key.value,)] = key.start_mark.line + 1
                    s, h = visit(child, path + (key.value,), depth + 1, stack)
                    size, height = size + s + 1, max(height, h + 1)
            stack.discard(id(node))
            sizes[id(node)] = size, height
        if depth + height - 1 > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (counting aliases)", node.start_mark, path=path)
        return size, height

    visit(root, (), 1, set())


def _keys(node, path: tuple):
    """The (key, value) nodes of a mapping at ``path``; refuses duplicate and non-scalar keys."""
    seen: set = set()
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise _Refused("mapping keys must be plain values (not lists or mappings)", key.start_mark, path=path)
        if (key.tag, key.value) in seen:
            raise _Refused("duplicate key", key.start_mark, key.value, path=path)  # the mapping that has it twice
        seen.add((key.tag, key.value))
        yield key, value


def _at(name: str, mark) -> str:
    return f"{name}, line {mark.line + 1}" if mark is not None else name


def _mark(err: yaml.YAMLError, text: str):
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None and isinstance(getattr(err, "position", None), int):  # a ReaderError
        return yaml.Mark("", err.position, text[:err.position].count("\n"), 0, None, None)
    return mark


def _problem(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        code = ord(err.character) if isinstance(err.character, str) else err.character
        return f"character #x{code:04x} is not allowed"
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(err)
    return text


def yaml_value(text: str, name: str) -> Any:
    """One YAML value from a command line (``--set key=VALUE``); "" is null."""
    try:
        return parse_yaml(text, name, what="value", allow_empty=True).data
    except ConfigError as err:
        raise ConfigError("", text, err.allowed, name) from None
