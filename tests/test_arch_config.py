"""ArchConfig: parsing, round trips, arch_id stability and validation errors."""
import copy

import pytest
import yaml

from lowspace import ArchConfig, ConfigError
from lowspace.arch import PRESET_NAMES, get_preset
from lowspace.arch.config import feature_shapes, official_heads


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_round_trips(name):
    cfg = get_preset(name)
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ArchConfig.from_dict(yaml.safe_load(cfg.to_yaml())).arch_id == cfg.arch_id


def test_yaml_file_round_trip(tmp_path):
    cfg = get_preset("b3")
    path = tmp_path / "b3.yaml"
    cfg.to_yaml(path)
    assert ArchConfig.from_yaml(path) == cfg


def test_arch_id_is_pinned():
    # The canonical form is part of the public contract (caches and studies are keyed by it).
    assert get_preset("b1").arch_id == "f71a876ff74b"
    assert get_preset("b0").arch_id == "73fbee2c54c6"


def test_arch_ids_of_presets_differ():
    ids = {get_preset(n).arch_id for n in PRESET_NAMES}
    assert len(ids) == len(PRESET_NAMES)


def test_arch_id_ignores_key_order_defaults_and_metadata():
    base = get_preset("b1").to_dict()
    reordered = {k: base[k] for k in reversed(list(base))}
    reordered["stages"] = [{k: s[k] for k in reversed(list(s))} for s in base["stages"]]
    minimal = copy.deepcopy(base)
    for key in ("name", "recipe", "notes", "in_chans", "num_classes", "act", "mlp_act", "resolution"):
        minimal.pop(key)
    minimal["stages"][2]["attention"] = {"stride": 2, "kernel_size": 5}  # placement/heads/... defaulted
    ids = {ArchConfig.from_dict(d).arch_id for d in (base, reordered, minimal)}
    assert ids == {get_preset("b1").arch_id}


def test_arch_id_equal_for_equivalent_spellings():
    d = get_preset("b1").to_dict()
    e = copy.deepcopy(d)
    e["stages"][2]["attention"]["placement"] = [0, 1, 2, 3, 4]
    e["stages"][2]["attention"]["heads"] = 2
    e["stages"][2]["attention"]["head_dim"] = 32
    e["stages"][2]["local"] = "fused_mbconv"
    e["stages"][3]["expand_ratio"] = 4  # int vs float
    assert ArchConfig.from_dict(e).arch_id == ArchConfig.from_dict(d).arch_id


def test_arch_id_changes_with_architecture():
    d = get_preset("b1").to_dict()
    variants = []
    for path, value in [(("stages", 2, "depth"), 4), (("stages", 3, "attention", "stride"), 2),
                        (("stages", 2, "attention", "placement"), "last:2"), (("resolution",), 256),
                        (("head", "widths"), [1024, 1280]), (("stages", 2, "mlp_ratio"), 2.0)]:
        e = copy.deepcopy(d)
        target = e
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        variants.append(ArchConfig.from_dict(e).arch_id)
    assert len(set(variants + [get_preset("b1").arch_id])) == len(variants) + 1


def test_no_attention_spellings_are_one_architecture():
    e1 = get_preset("e1").to_dict()
    alt = copy.deepcopy(e1)
    for i in (2, 3):
        alt["stages"][i]["attention"] = {"placement": "none", "stride": 4}
        alt["stages"][i]["mlp_ratio"] = 4.0  # irrelevant without attention
    assert ArchConfig.from_dict(alt).arch_id == ArchConfig.from_dict(e1).arch_id


def test_official_head_rule():
    assert official_heads(128) == (2, 32)
    assert official_heads(160) == (2, 40)
    assert official_heads(256) == (4, 32)
    assert official_heads(320) == (5, 32)
    assert official_heads(512) == (8, 32)


def test_placements_resolve():
    d = get_preset("b1").to_dict()
    expected = {"all": (0, 1, 2, 3, 4), "none": (), "last:2": (3, 4), "every:2": (1, 3), "every:1": (0, 1, 2, 3, 4)}
    for spec, blocks in expected.items():
        e = copy.deepcopy(d)
        e["stages"][2]["attention"]["placement"] = spec
        assert ArchConfig.from_dict(e).stages[2].attention_blocks() == blocks


def test_feature_shapes_follow_ceil_division():
    shapes = feature_shapes(get_preset("b1"), 199)
    assert [s.height for s in shapes] == [100, 50, 25, 13, 7]
    assert shapes[3].attention_tokens == 49 and shapes[4].attention_tokens == 49


def _error(data, **kw):
    with pytest.raises(ConfigError) as info:
        ArchConfig.from_dict(data, **kw)
    return info.value


def _b1(**changes):
    d = get_preset("b1").to_dict()
    for path, value in changes.items():
        target = d
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key) if key.isdigit() else key]
        target[keys[-1]] = value
    return d


def test_unknown_key_names_path_and_suggests():
    d = _b1()
    d["stages"][2]["attention"]["strid"] = 2
    err = _error(d)
    assert err.path == "stages.2.attention.strid"
    assert "did you mean 'stride'" in str(err)


def test_wrong_type_names_path():
    err = _error(_b1(stages__1__width="wide"))
    assert err.path == "stages.1.width" and "integer" in str(err)
    err = _error(_b1(stages__1__depth=True))
    assert err.path == "stages.1.depth"


@pytest.mark.parametrize("changes, path, fragment", [
    ({"stages__2__block": "transformer"}, "stages.2.block", "fused_mbconv"),
    ({"stages__2__attention__stride": 3}, "stages.2.attention.stride", "1, 2, 4"),
    ({"stages__2__attention__placement": "last:9"}, "stages.2.attention.placement", "only 5 blocks"),
    ({"stages__2__attention__placement": "some"}, "stages.2.attention.placement", "last:K"),
    ({"stages__2__attention__placement": [0, 7]}, "stages.2.attention.placement.1", "0..4"),
    ({"stages__2__attention__heads": 3}, "stages.2.attention.heads", "do not divide"),
    ({"stages__2__attention__head_dim": 7}, "stages.2.attention.head_dim", "does not divide"),
    ({"stages__2__kernel_size": 4}, "stages.2.kernel_size", "1, 3, 5, 7, 9"),
    ({"stages__0__downsample__stride": 3}, "stages.0.downsample.stride", "1, 2"),
    ({"stages__0__downsample": None}, "stages.0.downsample", "keeps the width"),
    ({"stages__2__expand_ratio": 0}, "stages.2.expand_ratio", "> 0"),
    ({"act": "mish"}, "act", "hardswish"),
    ({"resolution": 4}, "resolution", "between 8"),
    ({"head__widths": [1, 2, 3]}, "head.widths", "at most two"),
    ({"stages": []}, "stages", "at least one"),
    ({"num_classes": 10**12}, "num_classes", "between 0 and 1000000"),
    ({"num_classes": 2**63}, "num_classes", "between 0 and 1000000"),
    ({"stages__2__mlp_ratio": 0.001}, "stages.2.mlp_ratio", "rounds to 0 hidden channels"),
    ({"stages__2__attention__placement": "all\n"}, "stages.2.attention.placement", "surrounding whitespace"),
    ({"stages__2__attention__placement": "last:0"}, "stages.2.attention.placement", "between 1 and 64"),
    ({"stages__2__attention__heads": "auto "}, "stages.2.attention.heads", "an integer or 'auto'"),
    ({"stages__2__width": 10**6}, "stages.2.width", "between 1 and 8192"),
    ({"head__dropout": float("nan")}, "head.dropout", "NaN"),
    ({"resolution": 224.0}, "resolution", "expected an integer"),
])
def test_bad_values_raise_config_error(changes, path, fragment):
    err = _error(_b1(**changes))
    assert err.path == path
    assert fragment in str(err)


def test_empty_stage_rejected():
    d = _b1(stages__1__downsample=None, stages__1__width=32)
    err = _error(d)
    assert err.path == "stages.1.depth"


def test_missing_required_field():
    d = _b1()
    del d["stages"][0]["width"]
    assert _error(d).path == "stages.0.width"


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {width: 32, depth: 1, kernel_size: 2}\n")
    err = pytest.raises(ConfigError, ArchConfig.from_yaml, bad).value
    assert str(bad) in str(err) and err.path == "stages.0.kernel_size"
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    assert str(broken) in str(pytest.raises(ConfigError, ArchConfig.from_yaml, broken).value)
    missing = tmp_path / "missing.yaml"
    assert "cannot read" in str(pytest.raises(ConfigError, ArchConfig.from_yaml, missing).value)


def test_yaml_text_errors_name_the_line(tmp_path):
    text = get_preset("b1").to_yaml().replace("kernel_size: 5", "kernel_size: 4", 1)
    err = pytest.raises(ConfigError, ArchConfig.from_yaml, text).value
    line = text[:text.index("kernel_size: 4")].count("\n") + 1
    assert err.path.endswith("kernel_size") and f"<architecture config>, line {line}:" in str(err)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert str(pytest.raises(ConfigError, ArchConfig.from_yaml, empty).value) == f"{empty}: empty file"


def test_python_construction_validates_and_normalizes():
    from lowspace.arch import StageConfig
    cfg = ArchConfig(stages=[StageConfig(width=32, depth=1, expand_ratio=6)])
    assert isinstance(cfg.stages, tuple) and cfg.stages[0].expand_ratio == 6.0
    with pytest.raises(ConfigError):
        ArchConfig(stages=[StageConfig(width=32, depth=1, block="conv")])
