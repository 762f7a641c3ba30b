"""Dotted overrides: ``--set a.b=v`` typed from the config classes, applied to plain dicts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from lowspace.config import Config, apply_overrides, field_info, option, parse_assignment
from lowspace.errors import ConfigError


@dataclass(frozen=True)
class Part(Config):
    epochs: int = option(2, ge=1, le=100)
    mode: str = option("a", choices=("a", "b"))


@dataclass(frozen=True)
class Whole(Config):
    name: Optional[str] = None
    part: Part = field(default_factory=Part)
    parts: tuple[Part, ...] = ()
    extra: dict = field(default_factory=dict)


def test_values_are_yaml_except_for_text_fields():
    assert parse_assignment("part.epochs=5", Whole) == ("part.epochs", 5)
    assert parse_assignment("extra.betas=[0.9, 0.99]", Whole) == ("extra.betas", [0.9, 0.99])
    assert parse_assignment("extra.lr=1e-3", Whole) == ("extra.lr", 0.001)
    assert parse_assignment("name=2024", Whole) == ("name", "2024")  # a string field keeps the text
    assert parse_assignment("name=null", Whole) == ("name", None)
    assert parse_assignment("part.mode=b", Whole) == ("part.mode", "b")
    assert parse_assignment(" extra.x = ", Whole) == ("extra.x", None)


@pytest.mark.parametrize("item, needle", [
    ("part.epoch=3", "--set: part.epoch: got 'epoch'; unknown key; did you mean 'epochs'?"),
    ("extra.lr=[unclosed", "--set extra.lr: got '[unclosed'; not valid YAML"),
    ("extra.lr=.nan", "--set extra.lr: got '.nan'; NaN and infinity are not allowed"),
    ("part.epochs.x=1", "part.epochs is a single value"),
    ("novalue", "KEY=VALUE"),
    ("=3", "KEY=VALUE"),
])
def test_bad_assignments_are_one_line_errors(item, needle):
    with pytest.raises(ConfigError) as info:
        parse_assignment(item, Whole)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_wrong_type_is_caught_when_the_config_is_built():
    key, value = parse_assignment("part.epochs=[1, 2]", Whole)
    with pytest.raises(ConfigError) as info:
        Whole.from_dict({}, {key: value}, override_source="command line")
    assert str(info.value) == "command line: part.epochs: got [1, 2]; expected an integer"


def test_apply_overrides_copies_and_reaches_into_lists():
    data = {"part": {"epochs": 1}, "parts": [{"epochs": 1}, {"epochs": 2}], "extra": None}
    out = apply_overrides(data, {"part.mode": "b", "parts.1.epochs": 5, "extra.a.b": 1, "name": None})
    assert out == {"part": {"epochs": 1, "mode": "b"}, "parts": [{"epochs": 1}, {"epochs": 5}],
                   "extra": {"a": {"b": 1}}, "name": None}
    assert data["part"] == {"epochs": 1}  # the input is left alone
    with pytest.raises(ConfigError, match="an index into a list of 2 entries"):
        apply_overrides(data, {"parts.7.epochs": 1})


def test_field_info_reads_types_defaults_and_constraints():
    info = field_info(Whole, "part.mode")
    assert info.type is str and info.default == "a" and info.constraint.choices == ("a", "b")
    assert field_info(Whole, "parts.0.epochs").constraint.le == 100
    assert field_info(Whole, "extra.anything.deeper").type is not None
