"""The one YAML loader: every unsafe or malformed input is a one-line ConfigError naming the file and line."""
import pytest

from lowspace.config import dump_yaml, parse_yaml, read_yaml
from lowspace.config._yaml import MAX_BYTES, MAX_DEPTH
from lowspace.errors import ConfigError


def _error(text: str, name: str = "f.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, name)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text, needle", [
    ("a: 1\nb: 2\na: 3\n", "f.yaml, line 3: got 'a'; duplicate key"),
    ("a: {b: 1, b: 2}\n", "line 1: a: got 'b'; duplicate key"),
    ("l:\n  - {x: 1}\n  - {x: 1, x: 2}\n", "line 3: l.1: got 'x'; duplicate key"),
    ("a: !!python/object/apply:os.system [ls]\n", "line 1: YAML tags are not allowed"),
    ("a: !custom 1\n", "YAML tags are not allowed (found !custom)"),
    ("x: 1\na: .nan\n", "line 2: a: got '.nan'; NaN and infinity are not allowed"),
    ("a: {b: [1, -.inf]}\n", "line 1: a.b.1: got '-.inf'; NaN and infinity are not allowed"),
    ("a: -.inf\n", "NaN and infinity are not allowed"),
    ("a: 1e999\n", "NaN and infinity are not allowed"),
    ("a: " + "9" * 40 + "\n", "integers have at most 30 digits"),
    ("a: [1,\n", "f.yaml, line 2: not valid YAML"),
    ("a: \x00\n", "line 1: not valid YAML (character #x0000 is not allowed)"),
    ("a: &x [*x]\n", "a recursive alias"),
    ("a: &x {<<: *x}\n", "a recursive alias"),
    ("? [1, 2]\n: 3\n", "mapping keys must be plain values"),
    ("a: 1\n---\nb: 2\n", "not valid YAML (expected a single document"),
    ("# only a comment\n", "f.yaml: empty file"),
    ("---\n...\n", "f.yaml: empty file"),
    ("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", f"nested deeper than {MAX_DEPTH} levels"),
])
def test_refused_documents(text, needle):
    assert needle in _error(text)


def test_malformed_yaml_names_the_file_not_a_placeholder(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: 1\nb: [2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value).startswith(f"{path}, line 3: not valid YAML")
    assert "<unicode string>" not in str(info.value)


def test_billion_laughs_is_refused():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    assert "values after expanding aliases" in _error("\n".join(levels) + "\n")


def test_a_long_alias_chain_counts_as_nesting():
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    assert "counting aliases" in _error(chain)


def test_small_anchors_and_merge_keys_still_work():
    doc = parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", "f.yaml")
    assert doc.data == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}


def test_binary_file_names_file_and_line(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"a: 1\nb: 2\nc: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path, what="space")
    assert str(info.value) == f"{path}, line 3: not UTF-8 text (byte 0xff); a space is YAML text"


def test_large_and_unreadable_files(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_BYTES + "\n")
    assert "larger than" in str(pytest.raises(ConfigError, read_yaml, big).value)
    assert "cannot read the space (" in str(pytest.raises(ConfigError, read_yaml, tmp_path, "space").value)
    assert "cannot read" in str(pytest.raises(ConfigError, read_yaml, tmp_path / "missing.yaml").value)


def test_scalars_read_as_a_config_author_means_them():
    data = parse_yaml("lr: 1e-3\nmacs: 50e6\nday: 2024-02-30\nname: '1e5'\nn: 7\n").data
    assert data == {"lr": 0.001, "macs": 50e6, "day": "2024-02-30", "name": "1e5", "n": 7}


def test_lines_of_keys_and_where():
    doc = parse_yaml("a:\n  b: 1\n  c:\n    - 2\n    - {d: 3}\n", "f.yaml")
    assert doc.where("a", "c", "1", "d") == "f.yaml, line 5"
    assert doc.where("a", "missing") == "f.yaml, line 1"  # the deepest key the file has
    assert doc.where("zzz") == "f.yaml"
    err = doc.locate(ConfigError("a.b", 1, "too small"))
    assert str(err) == "f.yaml, line 2: a.b: got 1; too small"


@pytest.mark.parametrize("value", ["1e5", "2024-01-01", "on", "null", "012", "1_000", ".inf", "a: b", "#x", " lead"])
def test_dump_quotes_what_the_loader_would_read_as_another_type(value):
    data = {"s": value, "n": [1, 2.5, None, True]}
    assert parse_yaml(dump_yaml(data)).data == data
