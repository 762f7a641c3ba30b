"""The search config file: parsing, overrides, validation errors with file and line."""
from pathlib import Path

import pytest

from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig
from lowspace.search.space import load_space

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_parses_and_names_a_loadable_space():
    cfg = SearchConfig.from_yaml(REPO / "experiments" / "demo" / "demo.yaml")
    assert cfg.mode == "pareto" and cfg.n_trials >= 8
    assert cfg.out and cfg.storage and cfg.storage.startswith("sqlite:///")
    space = load_space(cfg.space)
    assert space.base.resolution <= 64


def test_overrides_win_and_exponents_are_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("space: demo\nn_trials: 5\nconstraints: {max_macs: 50e6}\nproxy: {epochs: 3}\n")
    cfg = SearchConfig.from_yaml(path, {"n_trials": 7, "proxy.epochs": 1, "protocol.batch_size": 2, "seed": None})
    assert cfg.n_trials == 7 and cfg.proxy == {"epochs": 1} and cfg.protocol.batch_size == 2
    assert cfg.constraints.max_macs == 50e6 and cfg.seed is None


def test_an_error_in_an_overridden_value_names_the_override(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("space: demo\nn_trials: 5\n")
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_yaml(path, {"n_trials": 0}, override_source="command line")
    assert str(info.value).startswith("command line: n_trials: got 0")


def test_defaults_by_mode():
    assert SearchConfig().sampler_name == "tpe" and SearchConfig().directions == ["maximize", "minimize"]
    assert SearchConfig(mode="random").sampler_name == "random"
    c = SearchConfig.from_dict({"mode": "constrained", "constraints": {"max_latency_ms": 2}})
    assert c.directions == ["maximize"] and c.objective_names == ["accuracy"]
    assert not c.uses_promotion and SearchConfig().uses_promotion and not SearchConfig().uses_halving


@pytest.mark.parametrize("text,needle", [
    ("mode: paretoo\n", "allowed: pareto, constrained, random"),
    ("n_trial: 5\n", "did you mean 'n_trials'"),
    ("protocol: {batchsize: 2}\n", "protocol.batchsize"),
    ("objectives: [latency, accuracy]\n", "accuracy first"),
    ("objectives: [accuracy, latency, flops]\n", "allowed: accuracy, latency, macs"),
    ("mode: constrained\n", "needs at least one of"),
    ("n_trials: -1\n", "must be an integer between 1 and"),
    ("constraints: {max_macs: lots}\n", "expected a number or null"),
    ("sampler: cmaes\n", "allowed: tpe, nsga2, gp, random"),
    ("engines: nothing\n", "module:function"),
    ("early_stopping: {eta: 1}\n", "must be an integer between 2 and"),
    ("protocol: {cudnn_benchmark: 0}\n", "protocol.cudnn_benchmark"),
    ("protocol: {cudnn_benchmark: fast}\n", "expected true or false or an integer"),
    ("protocol: {options: {cudnn_benchmark: true}}\n", "use protocol.cudnn_benchmark"),
    ("protocol: {options: {cache: false}}\n", "protocol.options.cache"),
    ("workers: 1000000\n", "must be an integer between 1 and 1024"),
    ("timeout_s: .nan\n", "NaN and infinity are not allowed"),
    ("timeout_s: -1\n", "must be a number > 0"),
    ("seed: -1\n", "must be an integer between 0 and"),
    ("heartbeat: {max_retry: -1}\n", "heartbeat.max_retry"),
    ("mode: 'pareto '\n", "without surrounding whitespace"),
    ("device: tpu\n", "allowed: auto, cpu, mps, cuda or cuda:N"),
    ("n_trials: 5\nn_trials: 6\n", "duplicate key"),
])
def test_bad_configs_name_file_line_and_key(tmp_path, text, needle):
    path = tmp_path / "search.yaml"
    path.write_text("space: demo\n" + text)
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_yaml(path)
    assert needle in str(info.value)
    assert "search.yaml" in str(info.value)
    if "line" in str(info.value):
        assert f"line {text.count(chr(10)) + 1}" in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read the search config"):
        SearchConfig.from_yaml("/nonexistent/search.yaml")


def test_an_empty_config_file_is_an_error(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="search.yaml: empty file"):
        SearchConfig.from_yaml(path)


def test_to_dict_round_trips():
    cfg = SearchConfig.from_dict({"mode": "constrained", "constraints": {"max_macs": 1e8}, "proxy": {"epochs": 2},
                                  "protocol": {"cudnn_benchmark": 3, "options": {"max_time_s": 1.0}}})
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["objectives"] == ["accuracy", "latency"]


def test_cudnn_benchmark_flag_sets_the_protocol_field():
    from lowspace.cli import build_parser
    from lowspace.cli.search import config_from_args
    parser = build_parser()
    config = config_from_args(parser.parse_args(["search", "--space", "demo", "--cudnn-benchmark", "on"]))
    assert config.protocol.cudnn_benchmark is True
    config = config_from_args(parser.parse_args(["search", "--space", "demo", "--cudnn-benchmark", "3"]))
    assert config.protocol.cudnn_benchmark == 3
    assert config_from_args(parser.parse_args(["search", "--space", "demo"])).protocol.cudnn_benchmark is False



def test_flags_are_shorthands_for_config_fields():
    from lowspace.cli import build_parser
    from lowspace.cli.search import config_from_args
    args = build_parser().parse_args(["search", "--space", "demo", "--n-trials", "3", "--epochs", "2", "--no-presets",
                                      "--objectives", "accuracy,latency,macs", "--study-name", "2024",
                                      "--max-macs", "5e7", "--timeout", "60", "--set", "heartbeat.max_retry=0",
                                      "--set", "proxy.base_lr=1e-3", "--set", "n_trials=4"])
    cfg = config_from_args(args)
    assert (cfg.n_trials, cfg.presets, cfg.study_name, cfg.timeout_s) == (4, False, "2024", 60.0)
    assert cfg.objectives == ("accuracy", "latency", "macs") and cfg.constraints.max_macs == 5e7
    assert cfg.proxy == {"epochs": 2, "base_lr": 0.001} and cfg.heartbeat.max_retry == 0


@pytest.mark.parametrize("argv, needle", [
    (["--seed", "-1"], "command line: seed: got -1; must be an integer between 0 and"),
    (["--timeout", "-1"], "command line: timeout_s: got -1.0; must be a number > 0"),
    (["--n-trials", "many"], "command line: n_trials: got 'many'; expected an integer"),
    (["--mode", "pareto\n"], "command line: mode: got 'pareto\\n'"),
    (["--set", "proxy.epochs=[unclosed"], "--set proxy.epochs: got '[unclosed'; not valid YAML"),
    (["--set", "proxy.base_lr=.nan"], "--set proxy.base_lr: got '.nan'; NaN and infinity are not allowed"),
    (["--set", "n_trial=3"], "--set: n_trial: got 'n_trial'; unknown key; did you mean 'n_trials'?"),
    (["--set", "workers=1000000"], "command line: workers: got 1000000; must be an integer between 1 and 1024"),
    (["--set", "proxy.epochs=0"], "proxy.epochs"),
])
def test_bad_command_lines_stop_before_any_study(tmp_path, monkeypatch, capsys, argv, needle):
    from lowspace.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--space", "demo", "--device", "cpu", "--latency-device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # no study storage was created


def test_an_empty_config_file_on_the_command_line(tmp_path, capsys):
    from lowspace.cli import main
    path = tmp_path / "search.yaml"
    path.write_text("")
    assert main(["search", "--config", str(path)]) == 2
    assert f"{path}: empty file" in capsys.readouterr().err
