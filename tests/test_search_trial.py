"""The trial pipeline with fake cost / training engines: stages, rejection, failure, dedup, early stopping."""
import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import search_fakes
from lowspace.arch import ArchConfig
from lowspace.search.settings import SearchConfig
from lowspace.search.space import SearchSpace, load_space
from lowspace.search.trial import TrialPipeline, accuracy_of, jsonable

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(autouse=True)
def _reset_calls():
    for k in search_fakes.CALLS:
        search_fakes.CALLS[k] = 0


def _config(**kw):
    base = {"space": "demo", "proxy": {"epochs": 4}, "early_stopping": {"kind": "none"}}
    base.update(kw)
    return SearchConfig.from_dict(base)


def _run(config, n, engines=None, space=None, study=None, enqueue=None):
    space = space or load_space(config.space)
    study = study or optuna.create_study(directions=config.directions,
                                         sampler=optuna.samplers.RandomSampler(seed=0))
    for params in enqueue or []:
        study.enqueue_trial(params)
    pipe = TrialPipeline(space, config, engines=engines or search_fakes.fake_engines())
    study.optimize(pipe, n_trials=n, catch=(Exception,))
    return study


def test_complete_trial_records_everything_as_json():
    config = _config()
    study = _run(config, 3)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE
    a = t.user_attrs
    json.dumps(a)  # optuna-dashboard needs JSON-only attributes
    cfg = ArchConfig.from_yaml(a["config"])
    assert cfg.arch_id == a["arch_id"]
    assert a["status"] == "complete"
    assert a["params"] == search_fakes.fake_params(cfg)
    assert a["latency_ms"] == pytest.approx(t.values[1])
    assert a["accuracy"] == pytest.approx(t.values[0])
    assert a["protocol"]["device"] == "cpu" and a["protocol"]["batch_size"] == 1
    assert (a["protocol"]["backend"], a["protocol"]["precision"]) == ("eager", "fp32")  # "auto" on CPU
    assert a["fingerprint"]["torch"] == "fake"
    assert a["proxy"]["epochs_run"] == 4 and len(a["proxy"]["history"]) == 4
    assert {"sample_s", "count_s", "latency_s", "train_s", "total_s"} <= set(a["timings"])
    assert a["worker"]


def test_objectives_follow_the_mode():
    c3 = _config(objectives=["accuracy", "latency", "macs"])
    t = _run(c3, 1).trials[0]
    assert len(t.values) == 3 and t.values[2] == t.user_attrs["macs"]
    cc = _config(mode="constrained", constraints={"max_latency_ms": 100.0}, pruner="none")
    t = _run(cc, 1).trials[0]
    assert len(t.values) == 1 and t.values[0] == t.user_attrs["accuracy"]
    assert t.constraints["latency_ms"] < 0


def test_mac_limit_rejects_before_any_measurement_or_training():
    config = _config(constraints={"max_macs": 1.0})
    study = _run(config, 3)
    assert search_fakes.CALLS["measure"] == 0 and search_fakes.CALLS["train"] == 0
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["status"] == "rejected" and "macs" in t.user_attrs["reason"]
        assert t.constraints["macs"] > 0


def test_latency_limit_rejects_before_training():
    config = _config(constraints={"max_latency_ms": 1e-6})
    study = _run(config, 2)
    assert search_fakes.CALLS["measure"] >= 1 and search_fakes.CALLS["train"] == 0
    assert all(t.user_attrs["status"] == "rejected" and "latency_ms" in t.user_attrs["reason"] for t in study.trials)


def test_invalid_architecture_is_recorded_as_failed_and_the_study_goes_on():
    text = ("base: b1\nparams:\n  a: {choices: ['last:3', all], path: stages.3.attention.placement}\n"
            "  d: {choices: [1, 5], path: stages.3.depth}\n")
    space = SearchSpace.from_text(text)
    config = _config(space="lowformer")
    study = _run(config, 2, space=space, enqueue=[{"a": "last:3", "d": 1}, {"a": "all", "d": 1}])
    bad, good = study.trials
    assert bad.state == TrialState.FAIL
    assert bad.user_attrs["status"] == "failed" and bad.user_attrs["failed_stage"] == "validate"
    assert "placement" in bad.user_attrs["error"]
    assert good.state == TrialState.COMPLETE


def test_out_of_memory_while_timing_fails_the_trial_with_its_error():
    config = _config()
    study = _run(config, 3, engines=search_fakes.fake_engines(oom_over_params=0))
    for t in study.trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["failed_stage"] == "latency"
        assert "out of memory" in t.user_attrs["error"]
    assert search_fakes.CALLS["train"] == 0


def test_an_error_in_training_is_recorded():
    study = _run(_config(), 2, engines=search_fakes.fake_engines(train_error="boom in the loop"))
    for t in study.trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["failed_stage"] == "train"
        assert "RuntimeError: boom in the loop" in t.user_attrs["error"]


def test_throughput_is_recorded_when_asked():
    config = _config(protocol={"throughput_batch": 64})
    t = _run(config, 1).trials[0]
    assert t.user_attrs["throughput"]["batch_size"] == 64
    assert t.user_attrs["images_per_s"] > 0


def test_same_architecture_twice_reuses_results():
    config = _config()
    space = load_space("demo")
    point = space.point("base")
    study = _run(config, 3, enqueue=[point, point, point])
    first, second, third = study.trials
    assert search_fakes.CALLS["train"] == 1 and search_fakes.CALLS["measure"] == 1
    assert second.user_attrs["duplicate_of"] == first.number == third.user_attrs["duplicate_of"]
    # a duplicate is no second complete trial: FAIL keeps it out of samplers and counts
    assert first.state == TrialState.COMPLETE and second.state == third.state == TrialState.FAIL
    assert second.user_attrs["status"] == "duplicate" and "same architecture as trial 0" in second.user_attrs["reason"]
    assert second.user_attrs["arch_id"] == first.user_attrs["arch_id"]


def test_rejected_duplicates_are_rejected_again_without_work():
    config = _config(constraints={"max_macs": 1.0})
    space = load_space("demo")
    study = _run(config, 2, enqueue=[space.point("base")] * 2)
    assert search_fakes.CALLS["count"] == 1
    assert study.trials[0].state == TrialState.PRUNED and study.trials[0].constraints["macs"] > 0
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].user_attrs["duplicate_of"] == 0


def test_constrained_mode_prunes_with_optuna_pruner():
    config = _config(mode="constrained", constraints={"max_latency_ms": 1000.0}, pruner="median")
    space = load_space("demo")
    big = {"width": 16, "depth1": 2, "depth2": 3, "depth3": 3, "expand": 4, "attn2": "all", "stride2": 1, "mlp": 2,
           "head": "small"}
    small = space.point("small")
    study = _run(config, 6, enqueue=[dict(big, depth1=d) for d in (0, 1, 2)] +
                 [dict(big, depth2=d) for d in (1, 2)] + [small])
    last = study.trials[-1]
    assert last.state == TrialState.PRUNED
    assert last.user_attrs["status"] == "stopped" and "MedianPruner" in last.user_attrs["reason"]
    assert last.user_attrs["proxy"]["epochs_run"] < 4


def test_pareto_halving_stops_dominated_candidates():
    config = _config(early_stopping={"kind": "halving", "min_epochs": 1, "eta": 2, "min_peers": 2})
    space = load_space("demo")
    small = space.point("small")
    # larger nets: slower and (in the fakes) more accurate, so all three sit on one front; then a candidate
    # as slow as the largest but less accurate at every rung is dominated
    sizes = [dict(small, width=w) for w in (8, 12, 16)]
    study = _run(config, 3, enqueue=sizes)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all("1" in t.user_attrs["rungs"] and "2" in t.user_attrs["rungs"] for t in study.trials)

    def worse_engines():
        eng = search_fakes.fake_engines()
        base_train = eng.train_proxy

        def train(cfg, data, schedule, device, on_epoch=None):
            def scaled(epoch, metrics):
                return on_epoch(epoch, {**metrics, "top1": metrics["top1"] * 0.5})
            r = base_train(cfg, data, schedule, device, on_epoch=scaled)
            r.top1 *= 0.5
            return r
        eng.train_proxy = train
        return eng

    study.enqueue_trial(dict(small, width=16, depth1=1))
    pipe = TrialPipeline(space, config, engines=worse_engines())
    study.optimize(pipe, n_trials=1, catch=(Exception,))
    t = study.trials[-1]
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["status"] == "stopped" and "halving" in t.user_attrs["reason"]
    assert t.user_attrs["proxy"]["epochs_run"] == 1


def test_protocol_settings_map_onto_the_cost_protocol_and_timing():
    from lowspace.cost import Protocol, Timing
    from lowspace.errors import ConfigError
    config = _config(protocol={"batch_size": 4, "resolution": 48, "cudnn_benchmark": 3,
                               "options": {"target_spread": 0.1, "reparam": True, "isolate": True}})
    pipe = TrialPipeline(load_space("demo"), config, engines=search_fakes.fake_engines())
    assert pipe.protocol == Protocol(device="cpu", batch_size=4, resolution=48, reparam=True, cudnn_benchmark=3)
    assert pipe.timing == Timing(target_spread=0.1) and pipe.run_options == {"isolate": True}
    with pytest.raises(ConfigError, match="did you mean 'warmup_ms'") as info:
        TrialPipeline(load_space("demo"), _config(protocol={"options": {"warmup": 5}}),
                      engines=search_fakes.fake_engines())
    assert info.value.path == "protocol.options.warmup"


def test_jsonable_and_accuracy_helpers():
    assert jsonable({"a": float("nan"), "b": (1, 2), 3: {"x": float("inf")}}) == {"a": None, "b": [1, 2],
                                                                                  "3": {"x": None}}
    assert accuracy_of({"val_top1": 0.5}) == 0.5 and accuracy_of({"loss": 1.0}) is None
    assert yaml.safe_load(yaml.safe_dump(jsonable({"k": [1.0]}))) == {"k": [1.0]}
