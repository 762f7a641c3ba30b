"""Property: any YAML text (or file bytes) gives a valid config or a one-line ConfigError, never another
exception, and nothing that plain YAML would read as a duplicate key, a tag, NaN or infinity is accepted.

A longer campaign: ``LOWSPACE_FUZZ_SCALE=100 nice -n 10 pytest tests/test_config_fuzz.py`` (each property
runs 100 times as many examples).
"""
from __future__ import annotations

import copy
import math
import os
import random
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowspace import ArchConfig
from lowspace.arch import get_preset
from lowspace.arch.presets import preset_dir
from lowspace.config import parse_assignment, read_yaml
from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig
from lowspace.search.space import SearchSpace, space_dir

SCALE = int(os.environ.get("LOWSPACE_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = Path(__file__).parent.parent

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


def _loads_or_config_error(load, text: str):
    """The loaded object, or None after a one-line ConfigError."""
    try:
        return load(text)
    except ConfigError as err:
        assert "\n" not in str(err)
        return None


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
@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# ==================================================================== YAML text mutated as text
def _must_refuse(text: str) -> str | None:
    """Why lowspace must refuse ``text``, judged by plain PyYAML (None if it need not): not valid YAML, more
    than one document, a tag, a duplicate key, NaN or infinity."""
    try:
        events = list(yaml.parse(text, Loader=yaml.SafeLoader))
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return "not valid YAML"
    if len(documents) > 1:
        return "several documents"
    if any(getattr(e, "tag", None) for e in events):
        return "a tag"
    if documents and documents[0] is not None:
        return _bad_node(documents[0], set())
    return None


def _bad_node(node, seen: set) -> str | None:
    if id(node) in seen:
        return None
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:float":
            value = yaml.SafeLoader(node.value).construct_yaml_float(node)
            if not math.isfinite(value):
                return "NaN or infinity"
        return None
    if isinstance(node, yaml.MappingNode):
        keys = [(k.tag, k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(keys) != len(set(keys)):
            return "a duplicate key"
        children = [n for pair in node.value for n in pair]
    else:
        children = list(node.value)
    return next((why for why in (_bad_node(c, seen) for c in children) if why), None)


NASTY = [".nan", "-.inf", "!!python/name:os.system ", "!x ", "&a ", "*a", "<<: *a\n", "{", "}", "[", "]", ",",
         ": ", "- ", "? ", "\t", "\n", "\n---\n", "#", "'", '"', "1e400", "1.0e+400", "9" * 35, "0x1F", "~",
         "null", "yes", "\ufeff", "\x00", "\u00e9", "all\n", "1e-3", "-1", "0.0001"]
NUMBERS = ["0", "-1", "1000000000000", str(2 ** 63), "0.001", "1e-9", ".nan", "65537", "99999"]


def _mutate_text(text: str, data) -> str:
    """``text`` after one to four random edits: a nasty token inserted, a line repeated, removed or
    re-indented, a number replaced."""
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "repeat", "drop", "indent", "number"]))
        i = data.draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "insert" or not lines:
            line = lines[i] if lines else ""
            at = data.draw(st.integers(0, len(line)))
            lines[i:i + 1] = [line[:at] + data.draw(st.sampled_from(NASTY)) + line[at:]]
        elif op == "repeat":
            lines.insert(data.draw(st.integers(i, len(lines))), lines[i])
        elif op == "drop":
            del lines[i]
        elif op == "indent":
            lines[i] = ("  " + lines[i]) if data.draw(st.booleans()) else lines[i].removeprefix("  ")
        else:
            numbers = list(re.finditer(r"(?<![\w.])\d+(\.\d+)?", lines[i]))
            if numbers:
                m = data.draw(st.sampled_from(numbers))
                lines[i] = lines[i][:m.start()] + data.draw(st.sampled_from(NUMBERS)) + lines[i][m.end():]
    return "".join(lines)


def _check_text(load, text: str):
    """Loading ``text`` gives a one-line ConfigError or an object; the object only if plain YAML sees
    nothing that must be refused."""
    loaded = _loads_or_config_error(load, text if "\n" in text else text + "\n")
    if loaded is not None:
        why = _must_refuse(text)
        assert why is None, f"accepted a document with {why}"
    return loaded


ARCH_TEXTS = [(preset_dir() / f"{name}.yaml").read_text() for name in ("b0", "b1", "e3")]
SEARCH_TEXTS = [(REPO / "experiments/demo/demo.yaml").read_text(),
                (REPO / "tests/bad_inputs/files/search/ok.yaml").read_text()]
SPACE_TEXTS = [(space_dir() / "demo.yaml").read_text(), (REPO / "tests/bad_inputs/files/space/ok.yaml").read_text()
               .replace("../arch/tiny.yaml", "b0").replace("stages.1", "stages.3").replace("stages.0", "stages.2")]


@FUZZ
@given(st.data())
def test_arch_config_text_mutated_as_text(data):
    cfg = _check_text(ArchConfig.from_yaml, _mutate_text(data.draw(st.sampled_from(ARCH_TEXTS)), data))
    if cfg is not None:  # what was accepted is a config that writes and reads back as itself
        assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg


@FUZZ
@given(st.data())
def test_search_config_text_mutated_as_text(data):
    cfg = _check_text(SearchConfig.from_yaml, _mutate_text(data.draw(st.sampled_from(SEARCH_TEXTS)), data))
    if cfg is not None:
        assert SearchConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.slow  # every space builds and checks a few dozen architectures
@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_space_text_mutated_as_text(data):
    space = _check_text(SearchSpace.from_text, _mutate_text(data.draw(st.sampled_from(SPACE_TEXTS)), data))
    if space is None:
        return
    for values in space.points.values():  # the points were checked when the space was loaded
        space.build(values)
    try:
        space.build(space.sample(random.Random(data.draw(st.integers(0, 1000)))))
    except ConfigError as err:  # a combination of choices that does not fit: said on one line
        assert "\n" not in str(err)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_as_a_search_config(text):
    _check_text(SearchConfig.from_yaml, text)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_as_a_space(text):
    _check_text(SearchSpace.from_text, text)
