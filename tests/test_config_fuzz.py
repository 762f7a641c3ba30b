"""Property: any YAML text (or file bytes) gives a valid config or a ConfigError, never another exception."""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowspace import ArchConfig
from lowspace.arch import get_preset
from lowspace.config import parse_assignment, read_yaml
from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig
from lowspace.search.space import SearchSpace, space_dir

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["auto", "all", "none", "last:2", "every:0", "all\n", " 3", "1e400", "lowformer"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(node, prefix=()):
    """Every key path of a nested dict/list."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


def _mutated(base: dict, data) -> dict:
    """``base`` with a few values replaced by arbitrary ones (or keys added) at random paths."""
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(doc))))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            parent[data.draw(st.text(max_size=8))] = data.draw(values)
        else:
            parent[path[-1]] = data.draw(values)
    return doc


def _loads_or_config_error(load, text: str) -> None:
    try:
        load(text)
    except ConfigError as err:
        assert "\n" not in str(err)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_as_an_arch_config(text):
    _loads_or_config_error(ArchConfig.from_yaml, text + "\n")


@FUZZ
@given(st.data())
def test_mutated_presets_as_yaml_text(data):
    doc = _mutated(get_preset(data.draw(st.sampled_from(["b0", "b1", "e3"]))).to_dict(), data)
    _loads_or_config_error(ArchConfig.from_yaml, yaml.safe_dump(doc, allow_unicode=True) + "\n")


@FUZZ
@given(st.data())
def test_mutated_search_configs_as_yaml_text(data):
    base = SearchConfig.from_dict({"mode": "constrained", "constraints": {"max_macs": 5e7},
                                   "proxy": {"epochs": 2}}).to_dict()
    doc = _mutated(base, data)
    _loads_or_config_error(SearchConfig.from_yaml, yaml.safe_dump(doc, allow_unicode=True) + "\n")


@pytest.mark.slow  # every space builds and checks a few dozen architectures
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_spaces_as_yaml_text(data):
    base = read_yaml(space_dir() / "demo.yaml").data
    doc = _mutated(base, data)
    _loads_or_config_error(SearchSpace.from_text, yaml.safe_dump(doc, allow_unicode=True) + "\n")


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_a_config_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(raw)
    try:
        ArchConfig.from_yaml(path)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err)


@FUZZ
@given(st.sampled_from(["n_trials", "seed", "objectives", "study_name", "proxy.epochs", "protocol.options.x",
                        "constraints.max_macs", "heartbeat", "report.export", "protocol.cudnn_benchmark"]),
       st.text(max_size=40))
def test_arbitrary_set_values(key, text):
    def load(item):
        SearchConfig.from_dict({}, dict([parse_assignment(item, SearchConfig)]))
    _loads_or_config_error(load, f"{key}={text}")
