"""The search config file: parsing, overrides, validation errors with file and line."""
from pathlib import Path

import pytest

from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig, apply_overrides
from lowspace.search.space import load_space

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_parses_and_names_a_loadable_space():
    cfg = SearchConfig.from_yaml(REPO / "experiments" / "demo" / "demo.yaml")
    assert cfg.mode == "pareto" and cfg.n_trials >= 8
    assert cfg.out and cfg.storage and cfg.storage.startswith("sqlite:///")
    space = load_space(cfg.space)
    assert space.base.resolution <= 64


def test_overrides_win_and_numbers_in_strings_are_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("space: demo\nn_trials: 5\nconstraints: {max_macs: 50e6}\nproxy: {epochs: 3}\n")
    cfg = SearchConfig.from_yaml(path, {"n_trials": 7, "proxy.epochs": 1, "protocol.batch_size": 2, "seed": None})
    assert cfg.n_trials == 7 and cfg.proxy == {"epochs": 1} and cfg.protocol.batch_size == 2
    assert cfg.constraints.max_macs == 50e6 and cfg.seed == 0
    assert apply_overrides({"a": {"b": 1}}, {"a.c": 2, "d": None}) == {"a": {"b": 1, "c": 2}}


def test_defaults_by_mode():
    assert SearchConfig().sampler_name == "tpe" and SearchConfig().directions == ["maximize", "minimize"]
    assert SearchConfig(mode="random").sampler_name == "random"
    c = SearchConfig.from_dict({"mode": "constrained", "constraints": {"max_latency_ms": 2}})
    assert c.directions == ["maximize"] and c.objective_names == ["accuracy"]
    assert not c.uses_halving and SearchConfig().uses_halving


@pytest.mark.parametrize("text,needle", [
    ("mode: paretoo\n", "allowed: pareto, constrained, random"),
    ("n_trial: 5\n", "did you mean 'n_trials'"),
    ("protocol: {batchsize: 2}\n", "protocol.batchsize"),
    ("objectives: [latency, accuracy]\n", "accuracy first"),
    ("objectives: [accuracy, latency, flops]\n", "allowed: accuracy, latency, macs"),
    ("mode: constrained\n", "needs at least one of"),
    ("n_trials: -1\n", "positive integer"),
    ("constraints: {max_macs: lots}\n", "expected float | None"),
    ("sampler: cmaes\n", "allowed: tpe, nsga2, gp, random"),
    ("engines: nothing\n", "module:function"),
    ("early_stopping: {eta: 1}\n", "integer >= 2"),
    ("protocol: {cudnn_benchmark: 0}\n", "protocol.cudnn_benchmark"),
    ("protocol: {cudnn_benchmark: fast}\n", "expected bool | int"),
    ("protocol: {options: {cudnn_benchmark: true}}\n", "use protocol.cudnn_benchmark"),
    ("protocol: {options: {cache: false}}\n", "protocol.options.cache"),
])
def test_bad_configs_name_file_line_and_key(tmp_path, text, needle):
    path = tmp_path / "search.yaml"
    path.write_text("space: demo\n" + text)
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_yaml(path)
    assert needle in str(info.value)
    assert "search.yaml" in str(info.value)
    if "line" in str(info.value):
        assert "line 2" in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read the search config"):
        SearchConfig.from_yaml("/nonexistent/search.yaml")


def test_cudnn_benchmark_flag_sets_the_protocol_field():
    from lowspace.cli import build_parser
    from lowspace.cli.search import config_from_args
    parser = build_parser()
    config = config_from_args(parser.parse_args(["search", "--space", "demo", "--cudnn-benchmark", "on"]))
    assert config.protocol.cudnn_benchmark is True
    config = config_from_args(parser.parse_args(["search", "--space", "demo", "--cudnn-benchmark", "3"]))
    assert config.protocol.cudnn_benchmark == 3
    assert config_from_args(parser.parse_args(["search", "--space", "demo"])).protocol.cudnn_benchmark is False

