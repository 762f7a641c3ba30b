"""Promotion to the full schedule: rungs checked before a study, promotion by non-dominated rank among a rung,
the front of top-rung trials only, the GPU-second budget, resume of an interrupted climb."""
import hashlib
import math

import optuna
import pytest
from optuna.trial import TrialState

import search_fakes
from lowspace.errors import ConfigError
from lowspace.pareto import nondominated_ranks
from lowspace.report import write_report
from lowspace.report.fidelity import fidelity_summary, rung_frame
from lowspace.report.tables import pareto_frame, trials_frame
from lowspace.search import run_search
from lowspace.search._budget import BUDGET_SPENT, trial_gpu_s
from lowspace.search._promotion import build_ladder, crowding_distances, decide, default_rungs
from lowspace.search.settings import PromotionSettings, SearchConfig
from lowspace.search.storage import load_study
from lowspace.search.trial import _make_schedule

RUNGS = [{"epochs": 1}, {"epochs": 2}, {}]  # the proxy trains 4 epochs


def _config(tmp_path, **kw):
    base = {"space": "demo", "n_trials": 3, "storage": f"sqlite:///{tmp_path / 'study.db'}", "study_name": "p",
            "proxy": {"epochs": 4}, "presets": False, "promotion": {"rungs": RUNGS, "eta": 2}}
    base.update(kw)
    return SearchConfig.from_dict(base)


def _score(arch_id: str) -> float:
    """An accuracy that does not follow size (so fronts have several ranks), the same on every rung."""
    return 0.5 + int(hashlib.sha256(arch_id.encode()).hexdigest(), 16) % 1000 / 2500


def _engines(calls: list, interrupt_epochs: int | None = None, epoch_s: float = 0.0):
    """Fake engines; training records (arch_id, epochs, seed) and can be interrupted on a rung."""
    eng = search_fakes.fake_engines(epoch_s=epoch_s)

    def train_proxy(cfg, data, schedule, device, on_epoch=None):
        if interrupt_epochs is not None and schedule.epochs == interrupt_epochs:
            raise KeyboardInterrupt
        calls.append((cfg.arch_id, schedule.epochs, getattr(schedule, "seed", 0)))
        if epoch_s:
            import time
            time.sleep(epoch_s * schedule.epochs)
        return search_fakes.FakeResult(top1=_score(cfg.arch_id) * (0.9 + 0.1 * schedule.epochs / 4),
                                       epochs_run=schedule.epochs)

    eng.train_proxy = train_proxy
    return eng


# ------------------------------------------------------------------ rungs
def test_rungs_are_built_against_the_proxy_schedule():
    ladder = build_ladder(PromotionSettings(rungs=({"epochs": 2, "train_per_class": 1500}, {"epochs": 5}, {}),
                                            repeats_top=3), {"epochs": 10}, _make_schedule)
    full = _make_schedule({"epochs": 10})
    assert [r.schedule.epochs for r in ladder.rungs] == [2, 5, 10] and ladder.rungs[-1].schedule == full
    assert ladder.rungs[0].schedule.train_per_class == 1500 and ladder.rungs[1].schedule.train_per_class is None
    # the warm-up keeps its share of the epochs
    assert ladder.rungs[0].schedule.warmup_epochs == pytest.approx(full.warmup_epochs * 2 / 10)
    assert [s.seed for s in ladder.top_schedules] == [full.seed, full.seed + 1, full.seed + 2]
    assert default_rungs(10, 3) == [{"epochs": 1}, {"epochs": 3}, {}]
    assert default_rungs(4, 2) == [{"epochs": 1}, {"epochs": 2}, {}]
    assert default_rungs(1, 3) == [{}]


@pytest.mark.parametrize("rungs,needle", [
    ([{"epochs": 2}, {"epochs": 5}], "promotion.rungs.1.epochs: got 5; the last rung is the full schedule"),
    ([{"epochs": 2, "train_per_class": 1500}, {"epochs": 5, "train_per_class": 1000}, {}],
     "promotion.rungs.1.train_per_class: got 1000; rungs go up in fidelity"),
    ([{"epochs": 2, "resolutions": [48]}, {"epochs": 5, "resolutions": [32]}, {}],
     "promotion.rungs.1.resolutions"),
    ([{"epochs": 2}, {"epochs": 2, "base_lr": 0.004}, {}], "a rung must train more than the one below it"),
    ([{"epochs": 2, "lrr": 0.1}, {}], "promotion.rungs.0.lrr"),
    ([{"epochs": 2, "warmup_epochs": 3}, {}], "promotion.rungs.0.warmup_epochs"),
])
def test_bad_rungs_are_config_errors_naming_the_rung(rungs, needle):
    with pytest.raises(ConfigError) as info:
        build_ladder(PromotionSettings(rungs=tuple(rungs)), {"epochs": 10}, _make_schedule)
    assert needle in str(info.value)


@pytest.mark.parametrize("promotion,needle", [
    ({"rungs": []}, "promotion.rungs: got []; 1 to 20 rungs"),
    ({"rungs": [{"epochs": 5}, {"epochs": 2}, {}]}, "promotion.rungs.1.epochs: got 2; rungs go up in fidelity"),
    ({"rungs": [{"epochs": 2, "seed": 3}, {}]}, "promotion.rungs.0.seed"),
    ({"rungs": [{"epochs": 0}, {}]}, "promotion.rungs.0.epochs: got 0"),
    ({"rungs": [{"epochs": True}, {}]}, "promotion.rungs.0.epochs: got True"),
    ({"eta": 1}, "promotion.eta"),
    ({"repeats_top": 0}, "promotion.repeats_top"),
])
def test_bad_promotion_settings_fail_when_the_config_is_read(promotion, needle):
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_dict({"promotion": promotion})
    assert needle in str(info.value)


def test_bad_rungs_stop_a_search_before_any_trial(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match="last rung is the full schedule"):
        run_search(_config(tmp_path, promotion={"rungs": [{"epochs": 1}, {"epochs": 2}]}), engines=_engines(calls))
    assert calls == []


# ------------------------------------------------------------------ the decision
def test_crowding_distance_prefers_the_ends_of_a_front():
    d = crowding_distances([[0.0, 3.0], [1.0, 2.0], [3.0, 0.0]])
    assert math.isinf(d[0]) and math.isinf(d[2]) and d[1] == pytest.approx(2.0)


def test_a_candidate_goes_on_only_from_the_top_share_of_its_rung():
    # three fronts of three points (accuracy negated, latency); eta 3: the best 3 of 9 go on
    fronts = [[[-0.9, 3.0], [-0.8, 2.0], [-0.7, 1.0]],
              [[-0.85, 3.5], [-0.75, 2.5], [-0.65, 1.5]],
              [[-0.6, 4.0], [-0.5, 3.0], [-0.4, 2.0]]]
    points = [p for front in fronts for p in front]
    for i, candidate in enumerate(points):
        peers = points[:i] + points[i + 1:]
        decision = decide(candidate, peers, eta=3)
        assert decision.members == 9 and decision.keep == 3
        assert decision.promoted == (i < 3), (i, decision)
        assert decision.rank == i // 3
    # the same front, fewer places: its ends go on before its middle (crowding distance)
    peers = [[-0.9, 3.0], [-0.7, 1.0], [-0.5, 4.0], [-0.4, 3.5], [-0.3, 5.0]]
    middle = decide([-0.8, 2.0], peers, eta=3)
    end = decide([-0.95, 3.5], peers[1:], eta=3)
    assert (middle.keep, middle.ahead, middle.promoted) == (2, 2, False)
    assert end.rank == 0 and end.promoted


# ------------------------------------------------------------------ studies
def _rung_members(trials, rung: int, before: int) -> list:
    """(number, point) of the architectures that finished ``rung`` in trials numbered up to ``before``."""
    out, seen = [], set()
    for t in trials:
        acc = (t.user_attrs.get("rung_accuracy") or {}).get(str(rung))
        if t.number <= before and acc is not None and t.user_attrs["arch_id"] not in seen:
            seen.add(t.user_attrs["arch_id"])
            out.append((t.number, [-acc, t.user_attrs["latency_ms"]]))
    return out


@pytest.mark.slow  # a study of about ten trials
def test_a_study_promotes_by_rank_and_its_front_has_only_top_rung_trials(tmp_path):
    calls = []
    summary = run_search(_config(tmp_path, promotion={"rungs": RUNGS, "eta": 3}), engines=_engines(calls))
    study = load_study(tmp_path / "study.db", "p")
    trials = study.get_trials(deepcopy=False)
    assert summary.complete == 3 == sum(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        a = t.user_attrs
        for rung in (0, 1):
            decision = (a.get("rung_decision") or {}).get(str(rung))
            if decision is None:
                continue
            # one worker: the rung's members are the architectures of this and earlier trials that finished it
            members = _rung_members(trials, rung, t.number)
            ranks = nondominated_ranks([p for _, p in members])
            mine = ranks[[n for n, _ in members].index(t.number)]
            keep = math.ceil(len(members) / 3)
            assert (decision["members"], decision["keep"], decision["rank"]) == (len(members), keep, mine)
            if decision["promoted"]:
                assert sum(r < mine for r in ranks) < keep
                assert str(rung + 1) in a["rung_accuracy"]
            else:
                assert sum(r <= mine for r in ranks) - 1 >= keep
                assert a["status"] == "stopped" and a["rung"] == rung and str(rung + 1) not in a["rung_accuracy"]
                assert "not promoted at rung" in a["reason"]
    assert summary.outcomes["stopped"] >= 1
    # complete trials reached the last rung; their objective is the last rung's accuracy
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("duplicate_of") is not None:
            continue  # reuses another trial's results
        assert a["rung"] == 2 and t.values[0] == a["accuracy"] == a["rung_accuracy"]["2"]
        assert set(a["rung_gpu_s"]) == {"0", "1", "2"}
    # each architecture trained each rung it reached once
    trained = [(arch, e) for arch, e, _ in calls]
    assert len(trained) == len(set(trained))
    # the front is made of top-rung trials only, also where a stopped one would dominate at its rung
    front = pareto_frame(trials_frame(study))
    assert len(front) >= 1
    assert all(study.trials[n].user_attrs["rung"] == 2 for n in front["number"])
    rungs = rung_frame(study)
    top = rungs[rungs["rung"] == 2]
    assert set(top.loc[top["front"], "number"]) == set(front["number"])
    summary_table = fidelity_summary(rungs)
    assert list(summary_table["architectures"]) == [len(rungs[rungs["rung"] == k]) for k in (0, 1, 2)]
    assert list(summary_table["label"]) == ["epochs=1", "epochs=2", "full"]
    report = write_report(study, tmp_path / "out", png=False)
    assert {"fidelity.csv", "fidelity.md"} <= {p.name for p in report.files}
    assert "## Rung 0 (epochs=1)" in (tmp_path / "out" / "fidelity.md").read_text()


def test_named_points_always_reach_the_full_schedule_and_repeats_train_seeds(tmp_path):
    calls = []
    config = _config(tmp_path, presets=True, n_trials=2, promotion={"rungs": RUNGS, "eta": 100, "repeats_top": 2})
    run_search(config, engines=_engines(calls))
    study = load_study(tmp_path / "study.db", "p")
    points = [t for t in study.trials if t.user_attrs.get("point")]
    assert len(points) == 2 and all(t.state == TrialState.COMPLETE for t in points)
    a = points[0].user_attrs
    assert len(a["top_accuracies"]) == 2 and a["accuracy"] == pytest.approx(sum(a["top_accuracies"]) / 2)
    assert sorted(s for arch, e, s in calls if arch == a["arch_id"] and e == 4) == [0, 1]


def test_gpu_second_budget_stops_the_study(tmp_path):
    calls = []
    config = _config(tmp_path, n_trials=50, budget_gpu_s=0.2)
    summary = run_search(config, engines=_engines(calls, epoch_s=0.01))
    assert summary.stop == "budget" and BUDGET_SPENT in summary.stopped_reason and summary.complete < 50
    study = load_study(tmp_path / "study.db", "p")
    spent = [trial_gpu_s(t) for t in study.trials]
    assert sum(spent) >= 0.2 > sum(spent[:-1])  # no trial started once the budget was spent
    # every rung counts
    assert all(trial_gpu_s(t) >= sum(t.user_attrs["rung_gpu_s"].values()) > 0 for t in study.trials
               if t.user_attrs.get("duplicate_of") is None)


def test_gpu_seconds_of_a_trial_count_every_rung_and_the_measurement():
    dist = optuna.distributions.FloatDistribution(0, 1)
    t = optuna.trial.create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions={"x": dist},
                                  user_attrs={"timings": {"latency_s": 0.5, "train_s": 9.0, "count_s": 2.0},
                                              "rung_gpu_s": {"0": 1.0, "1": 3.0}})
    assert trial_gpu_s(t) == pytest.approx(4.5)
    plain = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, params={"x": 0.5},
                                      distributions={"x": dist}, user_attrs={"timings": {"train_s": 9.0}})
    assert trial_gpu_s(plain) == pytest.approx(9.0)


@pytest.mark.slow  # three searches on one study
def test_resume_continues_an_interrupted_climb(tmp_path):
    calls = []
    config = _config(tmp_path, presets=True, n_trials=3)
    with pytest.raises(KeyboardInterrupt):  # the first named point is interrupted on the full schedule
        run_search(config, engines=_engines(calls, interrupt_epochs=4))
    study = load_study(tmp_path / "study.db", "p")
    first = study.trials[0]
    assert first.state == TrialState.FAIL and set(first.user_attrs["rung_accuracy"]) == {"0", "1"}
    before = len(study.trials)

    calls.clear()
    run_search(config, engines=_engines(calls))
    study = load_study(tmp_path / "study.db", "p")
    again = [t for t in study.trials if t.user_attrs.get("continues") == 0]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    arch = first.user_attrs["arch_id"]
    assert [e for a, e, _ in calls if a == arch] == [4]  # rungs 0 and 1 were not trained again
    assert {k: again[0].user_attrs["rung_accuracy"][k] for k in ("0", "1")} == first.user_attrs["rung_accuracy"]
    # decisions after the resume count the rung members recorded before it
    new = next(t for t in study.trials[before:] if t.user_attrs.get("continues") is None
               and "0" in (t.user_attrs.get("rung_decision") or {}))
    assert new.user_attrs["rung_decision"]["0"]["members"] == len(_rung_members(study.trials, 0, new.number))
    assert new.user_attrs["rung_decision"]["0"]["members"] > len(_rung_members(study.trials[before:], 0, new.number))
    # a second resume enqueues nothing more
    run_search(config, engines=_engines(calls))
    assert len([t for t in load_study(tmp_path / "study.db", "p").trials if t.user_attrs.get("continues") == 0]) == 1


@pytest.mark.slow  # four searches on one study
def test_resume_with_other_rungs_or_early_stopping_is_refused(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=_engines([]))
    with pytest.raises(ConfigError, match="promotion.rungs"):
        run_search(_config(tmp_path, promotion={"rungs": [{"epochs": 2}, {}], "eta": 2}), engines=_engines([]))
    with pytest.raises(ConfigError, match="promotion.eta"):
        run_search(_config(tmp_path, promotion={"rungs": RUNGS, "eta": 3}), engines=_engines([]))
    with pytest.raises(ConfigError, match="early_stopping.kind"):
        run_search(_config(tmp_path, early_stopping={"kind": "halving"}), engines=_engines([]))
