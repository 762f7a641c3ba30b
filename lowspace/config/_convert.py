"""Type conversion of plain values (as read from YAML) into the types a config dataclass declares.

Supported: bool, int, float, str, None, Any, Literal, Union / Optional, tuple[X, ...], tuple[X, Y],
dict / dict[str, X], and nested dataclasses. Every error is a ConfigError naming the dotted path.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Mapping, Union

from ..errors import ConfigError, unknown_key_error
from ._fields import Constraint, constraint_of

_UNIONS = (Union, types.UnionType)
_MAX_INT_DIGITS = 30


@lru_cache(maxsize=None)
def type_hints(cls) -> dict[str, Any]:
    """The resolved field types of a dataclass."""
    return typing.get_type_hints(cls)


def convert_fields(obj) -> None:
    """Convert and check every field of the dataclass instance ``obj`` in place (paths relative to it)."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = convert_field(hints[f.name], value, f.name, constraint_of(f))
        if new is not value:
            object.__setattr__(obj, f.name, new)


def convert_field(tp, value, path: str, constraint: Constraint) -> Any:
    """``value`` converted to ``tp`` and checked against the field's ``constraint``."""
    value = convert(tp, value, path, constraint.text)
    constraint.check(path, value)
    return value


def convert(tp, value, path: str, text: bool = False) -> Any:
    """``value`` as type ``tp`` (lists become tuples, ints become floats); raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return check_finite(value, path)
    if origin in _UNIONS:
        return _union(tp, value, path, text)
    if origin is Literal:
        return _literal(tp, value, path)
    if origin is tuple:
        return _tuple(tp, value, path, text)
    if tp is dict or origin is dict:
        return _dict(tp, value, path)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if value is None and tp is not type(None):
        raise ConfigError(path or "<root>", None, f"expected {describe(tp)}")
    return _scalar(tp, value, path, text)


def parse_dataclass(tp, value, path: str = ""):
    """An instance of dataclass ``tp`` from a mapping (an instance passes as it is)."""
    if isinstance(value, tp):
        return value
    names = [f.name for f in dataclasses.fields(tp) if f.init]
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, f"expected {describe(tp)} with keys: {', '.join(names)}")
    for key in value:
        if key not in names:
            raise unknown_key_error(path, str(key), names)
    kwargs: dict[str, Any] = {}
    hints = type_hints(tp)
    own_checks = _is_config(tp)
    for f in dataclasses.fields(tp):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init:
                raise ConfigError(sub, None, "this field is required")
            continue
        raw = value[f.name]
        # A Config converts and checks its own fields on construction (paths relative to it).
        kwargs[f.name] = raw if own_checks else convert_field(hints[f.name], raw, sub, constraint_of(f))
    try:
        return tp(**kwargs)
    except ConfigError as err:
        raise (err.within(path) if own_checks else err) from None


def _is_config(tp) -> bool:
    from ._base import Config
    return issubclass(tp, Config)


def check_finite(value, path: str):
    """``value`` unchanged, unless a float anywhere in it is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, value, "NaN and infinity are not allowed")
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{path}.{i}")
    return value


def _scalar(tp, value, path: str, text: bool):
    where = path or "<root>"
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if len(str(abs(value))) > _MAX_INT_DIGITS:
                raise ConfigError(where, value, "an integer of at most 30 digits")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:
                raise ConfigError(where, value, "a finite number") from None
            if not math.isfinite(out):
                raise ConfigError(where, value, "a finite number (NaN and infinity are not allowed)")
            return out
    elif tp is str:
        if isinstance(value, str):
            if not text and (not value or value != value.strip()):
                raise ConfigError(where, value, "a non-empty string without surrounding whitespace")
            return value
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise ConfigError(where, value, f"expected {describe(tp)}")


def _literal(tp, value, path: str):
    options = typing.get_args(tp)
    for opt in options:
        if type(opt) is type(value) and opt == value:
            return value
    raise ConfigError(path or "<root>", value, "allowed: " + ", ".join(map(str, options)))


def _tuple(tp, value, path: str, text: bool):
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path or "<root>", value, f"expected {describe(tp)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{path}.{i}", text) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(path or "<root>", list(value), f"expected {describe(tp)}")
    return tuple(convert(a, v, f"{path}.{i}", text) for i, (a, v) in enumerate(zip(args, value)))


def _dict(tp, value, path: str):
    if not isinstance(value, Mapping):
        raise ConfigError(path or "<root>", value, f"expected {describe(tp)}")
    args = typing.get_args(tp)
    key_tp, value_tp = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        sub = f"{path}.{k}" if path else str(k)
        out[convert(key_tp, k, sub) if key_tp is not Any else k] = convert(value_tp, v, sub)
    return out


def _kind(value) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str" if isinstance(value, str) else "other"


def _kind_of_type(tp) -> str:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "mapping"
    if origin is tuple:
        return "list"
    if origin is Literal:
        return "literal"
    return {bool: "bool", int: "number", float: "number", str: "str"}.get(tp, "other")


def _union(tp, value, path: str, text: bool):
    options = [o for o in typing.get_args(tp) if o is not type(None)]
    if value is None:
        if len(options) < len(typing.get_args(tp)):
            return None
        raise ConfigError(path or "<root>", None, f"expected {describe(tp)}")
    # bool before int, so True stays a bool where both are allowed
    ordered = sorted(options, key=lambda o: o is not bool)
    errors = []
    for opt in ordered:
        try:
            return convert(opt, value, path, text)
        except ConfigError as err:
            errors.append((opt, err))
    # A value of a kind that only one option takes: that option's (deeper) error says more.
    shaped = [err for opt, err in errors if _kind_of_type(opt) == _kind(value)]
    if len(shaped) == 1:
        raise shaped[0]
    raise ConfigError(path or "<root>", value, f"expected {describe(tp)}")


def describe(tp) -> str:
    """A reader's name for a type: "an integer", "a list of numbers", "an integer or 'auto'"."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UNIONS:
        names = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            names.append("null")
        return " or ".join(names)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list [{', '.join(describe(a) for a in args)}]"
    if tp is dict or origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null", Any: "any value"}.get(tp, str(tp))


def _plural(tp) -> str:
    name = describe(tp)
    for article in ("an ", "a "):
        if name.startswith(article):
            name = name[len(article):]
            break
    plural = {"true or false": "booleans", "mapping": "mappings"}.get(name)
    return plural or (name + "s" if " " not in name else name)
