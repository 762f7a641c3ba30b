"""``Config``: the base of every config dataclass (validation on construction, dict and YAML round trips)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from ..errors import ConfigError, unknown_key_error
from ._convert import convert_fields, parse_dataclass
from ._kinds import article, check_kind
from ._overrides import apply_overrides
from ._yaml import YamlDocument, dump_yaml, parse_yaml, read_yaml

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for (frozen or plain) dataclasses whose fields declare their constraints with ``option()``.

    Constructing one, from Python or through :meth:`from_dict` / :meth:`from_yaml`, converts every field
    to its declared type (lists to tuples, ints to floats), checks bounds and choices, refuses NaN, inf,
    bools for numbers and stray whitespace, then calls :meth:`validate` for the checks that involve
    several fields. Errors are ConfigErrors naming the dotted path, the value and what is allowed.
    """

    #: what a file of this config is called in errors ("cannot read the search config")
    config_kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        convert_fields(self)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise ConfigError with a path relative to this config."""

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
                  override_source: str = "overrides") -> C:
        """Parse a plain dict; dotted ``overrides`` (``{"proxy.epochs": 2}``) are applied first."""
        data = apply_overrides(data, overrides) if overrides else data
        try:
            return parse_dataclass(cls, data)
        except ConfigError as err:
            if overrides and _under(err.path, overrides):
                raise err.with_source(override_source) from None
            raise

    @classmethod
    def from_yaml(cls: type[C], path_or_text: str | Path, overrides: Mapping[str, Any] | None = None, *,
                  override_source: str = "overrides") -> C:
        """Read a YAML file (a ``Path``, or a ``str`` without newlines) or YAML text (a ``str`` with one)."""
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            doc = parse_yaml(path_or_text, what=cls.config_kind)
        else:
            doc = read_yaml(path_or_text, what=cls.config_kind)
        return cls.from_document(doc, overrides=overrides, override_source=override_source)

    @classmethod
    def from_document(cls: type[C], doc: YamlDocument, overrides: Mapping[str, Any] | None = None, *,
                      override_source: str = "overrides") -> C:
        """Parse a loaded YAML document; errors name its file and the line of the bad key."""
        if not isinstance(doc.data, Mapping):
            raise doc.error([], doc.data, f"{article(cls.config_kind)} is a YAML mapping of its fields")
        check_kind(doc, cls.config_kind, [f.name for f in dataclasses.fields(cls) if f.init])
        try:
            return cls.from_dict(doc.data, overrides=overrides, override_source=override_source)
        except ConfigError as err:
            raise doc.locate(err) from None

    def replace(self: C, **changes) -> C:
        """A copy with fields changed, validated again (unknown names raise ConfigError)."""
        names = [f.name for f in dataclasses.fields(self) if f.init]
        for key in changes:
            if key not in names:
                raise unknown_key_error("", key, names)
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists; ``from_dict(to_dict())`` gives an equal config."""
        return to_plain(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written (atomically) to ``path`` if given."""
        text = dump_yaml(self.to_dict())
        if path is not None:
            from ..io import atomic_write_text
            atomic_write_text(path, text)
        return text


def to_plain(obj: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, recursively (what YAML and JSON can hold)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _under(path: str, overrides: Mapping[str, Any]) -> bool:
    """Whether ``path`` is an overridden key or lies inside one."""
    return any(path == key or path.startswith(key + ".") for key in overrides)
