"""``option()``: a dataclass field that carries its own constraints (bounds, choices)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

_KEY = "lowspace.config"


@dataclass(frozen=True)
class Constraint:
    """What a field allows beyond its type. Bounds apply to numbers, choices to any value; both apply to
    each item of a tuple field. ``text``: free text, so surrounding whitespace and "" are allowed."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    text: bool = False

    def check(self, path: str, value: Any) -> None:
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                self.check(f"{path}.{i}", item)
            return
        if value is None:
            return
        if self.choices is not None and not _among(value, self.choices):
            raise ConfigError(path, value, "allowed: " + ", ".join(map(str, self.choices)))
        if _is_number(value) and not self._in_range(value):
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ConfigError(path, value, f"must be {kind} {self.describe_range()}")

    def _in_range(self, v) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def describe_range(self) -> str:
        low = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if low and high and low[0] == ">=" and high[0] == "<=":
            return f"between {_num(low[1])} and {_num(high[1])}"
        parts = [f"{op} {_num(v)}" for op, v in (bound for bound in (low, high) if bound)]
        return " and ".join(parts)

    @property
    def bounded(self) -> bool:
        """Whether numbers here have a lower and an upper bound (or a fixed set of choices)."""
        has_low = self.ge is not None or self.gt is not None
        has_high = self.le is not None or self.lt is not None
        return (has_low and has_high) or self.choices is not None


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices=None, text: bool = False) -> Any:
    """A dataclass field with constraints, checked whenever the config is built (from Python, a dict, YAML
    or ``--set``): ``ge``/``gt``/``le``/``lt`` bound numbers, ``choices`` lists the allowed values, ``text``
    marks free text. No default (and no factory) makes the field required."""
    constraint = Constraint(ge, gt, le, lt, None if choices is None else tuple(choices), text)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: constraint})


def constraint_of(f: dataclasses.Field) -> Constraint:
    """The constraint of a dataclass field (an empty one for plain fields)."""
    return f.metadata.get(_KEY) or _NONE


_NONE = Constraint()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _among(value, choices) -> bool:
    """``value in choices`` without True == 1 or 1.0 == 1 matching across types."""
    return any(type(value) is type(c) and value == c for c in choices)


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e16:
        return str(int(v)) if abs(v) < 1e7 else f"{v:g}"
    if isinstance(v, int) and abs(v) >= 10**7:
        return f"{v:,}".replace(",", "_")
    return str(v) if not (isinstance(v, float) and math.isinf(v)) else "inf"
