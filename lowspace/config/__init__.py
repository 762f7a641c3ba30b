"""One config mechanism for every lowspace config: dataclass fields declare their constraints.

::

    @dataclass(frozen=True)
    class Stem(Config):
        width: int = option(16, ge=1, le=8192)
        block: str = option("fused_mbconv", choices=("fused_mbconv", "mbconv"))

        def validate(self):                      # checks across fields only
            ...

    Stem.from_yaml("stem.yaml", overrides={"width": 32})   # errors: file, line, dotted path, value

See ``docs/config.md``.
"""
from ._base import Config, to_plain
from ._convert import convert, parse_dataclass
from ._fields import option
from ._kinds import article, check_kind, file_kind
from ._overrides import FieldInfo, apply_overrides, field_info, parse_assignment, parse_value
from ._yaml import YamlDocument, dump_yaml, parse_yaml, read_yaml

__all__ = ["Config", "option", "parse_dataclass", "convert", "to_plain", "apply_overrides", "field_info", "FieldInfo",
           "parse_assignment", "parse_value", "YamlDocument", "read_yaml", "parse_yaml", "dump_yaml", "check_kind",
           "file_kind", "article"]
