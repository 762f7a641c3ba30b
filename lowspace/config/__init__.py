"""One config mechanism for every lowspace config; here, the safe YAML loader every config file goes through."""
from ._yaml import YamlDocument, dump_yaml, parse_yaml, read_yaml

__all__ = ["YamlDocument", "read_yaml", "parse_yaml", "dump_yaml"]
