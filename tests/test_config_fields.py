"""The config mechanism: field types, bounds, choices and cross-field checks, from Python, dicts and YAML."""
from __future__ import annotations

import dataclasses
import pickle
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest

from lowspace.arch import ArchConfig
from lowspace.config import Config, option, parse_dataclass
from lowspace.config._fields import constraint_of
from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig


@dataclass(frozen=True)
class Inner(Config):
    size: int = option(4, ge=1, le=64)
    kind: str = option("a", choices=("a", "b"))
    heads: Union[int, Literal["auto"]] = option("auto", ge=1, le=16)
    ratios: tuple[float, ...] = option((1.0,), gt=0, le=8)
    pair: tuple[int, int] = (1, 2)


@dataclass(frozen=True)
class Outer(Config):
    config_kind = "toy config"

    inner: Inner = field(default_factory=Inner)
    extra: Optional[Inner] = None
    items: tuple[Inner, ...] = ()
    rate: float = option(0.5, ge=0, le=1)
    limit: Optional[float] = option(None, gt=0, le=1e6)
    flag: Union[bool, int] = option(False, ge=1, le=10)
    options: dict = field(default_factory=dict)
    note: Optional[str] = option(None, text=True)

    def validate(self) -> None:
        if self.limit is not None and self.rate == 0:
            raise ConfigError("limit", self.limit, "needs rate > 0")


def _error(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(data)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("data, path, needle", [
    ({"inner": {"size": 0}}, "inner.size", "must be an integer between 1 and 64"),
    ({"inner": {"size": True}}, "inner.size", "expected an integer"),
    ({"inner": {"size": 2.0}}, "inner.size", "expected an integer"),
    ({"inner": {"size": 10**40}}, "inner.size", "at most 30 digits"),
    ({"inner": {"kind": "c"}}, "inner.kind", "allowed: a, b"),
    ({"inner": {"kind": "a\n"}}, "inner.kind", "without surrounding whitespace"),
    ({"inner": {"kind": ""}}, "inner.kind", "non-empty string"),
    ({"inner": {"heads": "automatic"}}, "inner.heads", "expected an integer or 'auto'"),
    ({"inner": {"heads": 0}}, "inner.heads", "between 1 and 16"),
    ({"inner": {"ratios": [1, 0]}}, "inner.ratios.1", "must be a number > 0 and <= 8"),
    ({"inner": {"ratios": 2}}, "inner.ratios", "expected a list of numbers"),
    ({"inner": {"pair": [1, 2, 3]}}, "inner.pair", "expected a list of 2 integers"),
    ({"inner": {"siz": 3}}, "inner.siz", "did you mean 'size'?"),
    ({"extra": {"kind": "z"}}, "extra.kind", "allowed: a, b"),
    ({"extra": 3}, "extra", "expected a mapping or null"),
    ({"items": [{}, {"size": -1}]}, "items.1.size", "between 1 and 64"),
    ({"rate": float("nan")}, "rate", "NaN and infinity are not allowed"),
    ({"rate": float("inf")}, "rate", "NaN and infinity are not allowed"),
    ({"rate": 10**400}, "rate", "a finite number"),
    ({"limit": 0}, "limit", "must be a number > 0 and <= 1000000"),
    ({"flag": 0}, "flag", "between 1 and 10"),
    ({"flag": "yes"}, "flag", "expected true or false or an integer"),
    ({"options": {"a": [1.0, float("nan")]}}, "options.a.1", "NaN and infinity"),
    ({"rate": 0, "limit": 5}, "limit", "needs rate > 0"),
    ({"inner": None}, "inner", "expected a mapping"),
])
def test_bad_values_name_path_value_and_what_is_allowed(data, path, needle):
    err = _error(data)
    assert err.path == path and needle in str(err)


def test_values_are_normalized():
    cfg = Outer.from_dict({"inner": {"ratios": [1, 2]}, "rate": 1, "flag": True, "items": [{"size": 2}],
                           "note": "  free text\n"})
    assert cfg.inner.ratios == (1.0, 2.0) and isinstance(cfg.rate, float) and cfg.flag is True
    assert cfg.items == (Inner(size=2),) and cfg.note == "  free text\n"
    assert Outer.from_dict({"flag": 3}).flag == 3


def test_python_construction_is_checked_with_relative_paths():
    assert Outer(inner=Inner(ratios=[2])).inner.ratios == (2.0,)
    with pytest.raises(ConfigError) as info:
        Inner(size=100)
    assert info.value.path == "size"
    with pytest.raises(ConfigError) as info:
        Outer(items=[{"size": 100}])  # a mapping for a nested config is parsed, its path prefixed
    assert info.value.path == "items.0.size"


def test_round_trips_and_replace():
    cfg = Outer.from_dict({"inner": {"heads": 4}, "items": [{"kind": "b"}], "options": {"x": [1, 2]}})
    assert Outer.from_dict(cfg.to_dict()) == cfg
    assert Outer.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.to_dict()["inner"]["ratios"] == [1.0]
    assert cfg.replace(rate=0.25).rate == 0.25
    with pytest.raises(ConfigError, match="did you mean 'rate'"):
        cfg.replace(rat=0.25)
    with pytest.raises(ConfigError, match="rate"):
        cfg.replace(rate=2)


def test_required_field_and_root_type():
    @dataclass(frozen=True)
    class Needs(Config):
        width: int = option(ge=1, le=8)

    assert str(pytest.raises(ConfigError, Needs.from_dict, {}).value) == "width: got None; this field is required"
    assert "expected a mapping with keys: width" in str(pytest.raises(ConfigError, Needs.from_dict, [1]).value)


def test_yaml_errors_name_file_line_and_path(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("rate: 0.5\ninner:\n  size: 3\n  kind: c\n")
    with pytest.raises(ConfigError) as info:
        Outer.from_yaml(path)
    assert str(info.value) == f"{path}, line 4: inner.kind: got 'c'; allowed: a, b"
    path.write_text("- 1\n")
    assert "a toy config is a YAML mapping" in str(pytest.raises(ConfigError, Outer.from_yaml, path).value)
    assert "cannot read the toy config" in str(pytest.raises(ConfigError, Outer.from_yaml, tmp_path / "no.yaml").value)


def test_overrides_are_applied_and_named_in_errors(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("rate: 0.5\ninner: {size: 3}\n")
    cfg = Outer.from_yaml(path, {"inner.kind": "b", "items": [{}]})
    assert cfg.inner == Inner(size=3, kind="b") and cfg.items == (Inner(),)
    with pytest.raises(ConfigError) as info:
        Outer.from_yaml(path, {"inner.size": 99}, override_source="command line")
    assert str(info.value).startswith("command line: inner.size: got 99")


def test_plain_dataclasses_parse_too():
    @dataclass(frozen=True)
    class Plain:
        n: int = 1
        tags: tuple[str, ...] = ()

    assert parse_dataclass(Plain, {"n": 2, "tags": ["x"]}) == Plain(2, ("x",))
    with pytest.raises(ConfigError, match="section.n: got 'two'; expected an integer"):
        parse_dataclass(Plain, {"n": "two"}, "section")


def test_config_error_survives_pickling():
    err = _error({"inner": {"size": 0}}).with_source("x.yaml, line 2")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.value, back.allowed, back.source, str(back)) == (err.path, err.value, err.allowed,
                                                                             err.source, str(err))


def _numeric_fields(cls, seen: set):
    """"Class.field" of every int or float field in a config class tree."""
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        todo = [hints[f.name]]
        while todo:
            tp = todo.pop()
            if dataclasses.is_dataclass(tp):
                yield from _numeric_fields(tp, seen)
            elif tp in (int, float):
                yield f"{cls.__name__}.{f.name}", constraint_of(f)
            else:
                todo.extend(a for a in typing.get_args(tp) if a is not Ellipsis)


@pytest.mark.parametrize("root", [ArchConfig, SearchConfig])
def test_every_numeric_field_of_the_configs_is_bounded(root):
    fields = list(_numeric_fields(root, set()))
    assert len(fields) > 5
    assert [name for name, c in fields if not c.bounded] == []
