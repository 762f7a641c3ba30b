"""Dotted overrides (``--set proxy.epochs=2``): typed from the config dataclasses, applied to plain dicts."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, NamedTuple

from ..errors import ConfigError, unknown_key_error
from ._convert import type_hints
from ._fields import Constraint, constraint_of
from ._yaml import yaml_value


class FieldInfo(NamedTuple):
    """What a dotted path of a config class holds: its type, default (``MISSING`` if required or unknown)
    and constraint."""

    type: Any
    default: Any
    constraint: Constraint


def field_info(cls, dotted: str, source: str | None = None) -> FieldInfo:
    """The declared type, default and constraint at a dotted path of config class ``cls`` (``typing.Any``
    inside a free-form dict). Unknown keys raise ConfigError with the closest valid key."""
    tp: Any = cls
    info = FieldInfo(cls, dataclasses.MISSING, Constraint())
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        tp = _without_none(tp)
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
            if part not in fields:
                raise unknown_key_error(here, part, fields, source)
            f = fields[part]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            tp = type_hints(tp)[part]
            info = FieldInfo(tp, default, constraint_of(f))
            continue
        if typing.get_origin(tp) is tuple:
            if not part.isdigit():
                raise ConfigError(dotted, part, f"{here} is a list: use an index", source)
            args = typing.get_args(tp)
            tp = args[0] if args[-1] is Ellipsis else args[min(int(part), len(args) - 1)]
        elif tp is dict or typing.get_origin(tp) is dict:
            args = typing.get_args(tp)
            tp = args[1] if args else Any
        elif tp is Any:
            return FieldInfo(Any, dataclasses.MISSING, Constraint())
        else:
            raise ConfigError(dotted, part, f"{here} is a single value, not a mapping", source)
        info = FieldInfo(tp, dataclasses.MISSING, info.constraint)
    return info


def parse_value(text: str, tp: Any, name: str) -> Any:
    """A command-line string as a value for a field of type ``tp``: YAML (``5``, ``[1, 2]``, ``{a: 1}``,
    ``null``), except that a string-typed field takes the text as it is (``--study-name 2024``)."""
    if _takes_text_only(tp):
        return None if text in ("null", "~") and _allows_none(tp) else text
    return yaml_value(text, name)


def parse_assignment(item: str, cls, source: str = "--set") -> tuple[str, Any]:
    """``"a.b=VALUE"`` as ``("a.b", value)``, typed from config class ``cls``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("", item, "KEY=VALUE with a dotted key, e.g. proxy.epochs=2", source)
    tp = field_info(cls, key, source).type
    return key, parse_value(text, tp, f"{source} {key}")


def apply_overrides(data: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with each dotted key of ``overrides`` set (list entries by index)."""
    out = copy.deepcopy(dict(data or {}))
    for key, value in overrides.items():
        parts = key.split(".")
        node: Any = out
        for part in parts[:-1]:
            child = _child(node, part, key)
            if not isinstance(child, (dict, list)):
                child = {}
                _put(node, part, child, key)
            node = child
        _put(node, parts[-1], copy.deepcopy(value), key)
    return out


def _child(node, part: str, key: str):
    if isinstance(node, list):
        return node[_index(node, part, key)]
    return node.get(part)


def _put(node, part: str, value, key: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, key)] = value
    else:
        node[part] = value


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(key, part, f"an index into a list of {len(node)} entries (0..{len(node) - 1})")
    return int(part)


def _without_none(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _options(tp) -> tuple:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _takes_text_only(tp) -> bool:
    """A str field (optionally null), where YAML must not turn ``2024`` or ``on`` into another type."""
    kinds = [o for o in _options(tp) if o is not type(None)]
    return bool(kinds) and all(o is str or (typing.get_origin(o) is Literal and
                                            all(isinstance(a, str) for a in typing.get_args(o))) for o in kinds)


def _allows_none(tp) -> bool:
    return type(None) in _options(tp)
