"""Resume continues a study: new draws after a resume, duplicates kept out of every count, points that failed
run again, stale trials of dead workers recovered, the space and settings a study was made with enforced
(unless it has no results yet), stop reasons and trial lines that say what happened."""
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

import search_fakes
from lowspace.cli import main
from lowspace.errors import ConfigError
from lowspace.search import abandoned, counted_trials, is_duplicate, outcome_counts, run_search
from lowspace.search._accounting import CHECKING, WAITING, _scan
from lowspace.search._samplers import worker_seed
from lowspace.search.settings import SearchConfig
from lowspace.search.space import load_space
from lowspace.search.storage import StorageError, load_study
from lowspace.search.trial import TrialPipeline, summary_line

TESTS = Path(__file__).resolve().parent
DEMO = TESTS.parent / "search_spaces" / "demo.yaml"
# two architectures only: b0 with its first stage 16 or 24 wide
TWO_ARCHS = "name: two\nbase: b0\nparams:\n  w: {choices: [16, 24], path: stages.0.width}\n"


def _config(tmp_path, **kw):
    base = {"space": "demo", "n_trials": 4, "storage": f"sqlite:///{tmp_path / 'study.db'}", "study_name": "s",
            "proxy": {"epochs": 2}, "early_stopping": {"kind": "none"}, "device": "cpu",
            "protocol": {"device": "cpu"}, "heartbeat": {"heartbeat_interval": 1, "grace_period": 2}}
    base.update(kw)
    return SearchConfig.from_dict(base)


def _cli(tmp_path, *extra):
    return main(["search", "--space", "demo", "--storage", str(tmp_path / "study.db"), "--study-name", "s",
                 "--epochs", "1", "--device", "cpu", "--latency-device", "cpu",
                 "--set", "engines=search_fakes:fake_engines", "--set", "early_stopping.kind=none", *extra])


FAKE_ENGINES = search_fakes.fake_engines


def _interrupting_engines(at_call: int):
    """Fake engines whose ``at_call``-th proxy training is interrupted (Ctrl-C)."""
    eng = FAKE_ENGINES()
    real, calls = eng.train_proxy, {"n": 0}

    def train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    eng.train_proxy = train
    return eng


def _complete_archs(study) -> list[str]:
    return [t.user_attrs["arch_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


# ------------------------------------------------------------------ resume draws new architectures
def test_a_resumed_random_study_draws_new_architectures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search_fakes, "fake_engines", lambda: _interrupting_engines(at_call=5))
    assert _cli(tmp_path, "--mode", "random", "--n-trials", "6", "--seed", "3") == 130  # Ctrl-C in the 5th
    monkeypatch.undo()
    study = load_study(tmp_path / "study.db", "s")
    first_run = {t.number for t in study.trials}
    assert len(_complete_archs(study)) == 4
    assert _cli(tmp_path, "--mode", "random", "--n-trials", "6", "--seed", "3") == 0
    study = load_study(tmp_path / "study.db", "s")
    archs = _complete_archs(study)
    assert len(archs) == len(set(archs)) == len(counted_trials(study)) == 6
    assert outcome_counts(study)["duplicate"] == 0
    seeds = {t.user_attrs["sampler_seed"] for t in study.trials if t.number not in first_run}
    assert seeds and seeds.isdisjoint({t.user_attrs.get("sampler_seed") for t in study.trials
                                       if t.number in first_run})
    assert "reached n_trials: 6 complete trials" in capsys.readouterr().err


def test_worker_seeds_differ_by_worker_and_by_run():
    seeds = {worker_seed(0, w, n) for w in range(4) for n in (0, 2, 7)}
    assert len(seeds) == 12 and worker_seed(0, 1, 7) == worker_seed(0, 1, 7)
    assert worker_seed(None, 1, 7) is None


# ------------------------------------------------------------------ duplicates
def test_duplicates_never_count_as_complete_trials(tmp_path):
    space = tmp_path / "two.yaml"
    space.write_text(TWO_ARCHS)
    config = _config(tmp_path, space=str(space), mode="random", n_trials=2)
    summary = run_search(config, engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    assert summary.complete == 2 == len(set(_complete_archs(study))) == len(_complete_archs(study))
    dups = [t for t in study.trials if is_duplicate(t)]
    assert all(t.state == TrialState.FAIL and t.user_attrs["status"] == "duplicate" and not abandoned(t)
               for t in dups)
    assert outcome_counts(study)["duplicate"] == len(dups)
    # asking for a third architecture of a two-architecture space: every draw is a duplicate, none counts
    more = run_search(_config(tmp_path, space=str(space), mode="random", n_trials=3, max_attempts=12),
                      engines=search_fakes.fake_engines())
    assert more.complete == 2 and more.stop == "max_attempts"
    assert more.stopped_reason == f"stopped at max_attempts (12 trials started) with 2 of 3 complete trials " \
                                  f"({more.outcomes['duplicate']} duplicates)"
    assert more.outcomes["duplicate"] == 10


def _running_trial(study, space, point: str, stage: str, worker: str = "elsewhere:1"):
    """A trial running the space's point ``point`` in another (pretend) worker."""
    study.enqueue_trial(space.point(point))
    trial = study.ask()
    params = space.suggest(trial)
    trial.set_user_attr("arch_id", space.build(params).arch_id)
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("stage", stage)
    return trial


def _pipeline_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    config = _config(tmp_path)
    return config, optuna.create_study(storage=storage, directions=config.directions), storage


@pytest.mark.parametrize("original_ends", ["complete", "failed"])
def test_an_architecture_running_elsewhere_is_waited_for_not_trained_twice(tmp_path, original_ends):
    config, study, storage = _pipeline_study(tmp_path)
    space = load_space("demo")
    original = _running_trial(study, space, "base", "train")

    def finish():
        time.sleep(1.0)
        other = optuna.load_study(study_name=study.study_name, storage=storage)
        if original_ends == "complete":
            original.set_user_attr("status", "complete")
            other.tell(original.number, [0.8, 1.0])
        else:
            other.tell(original.number, state=TrialState.FAIL)

    thread = threading.Thread(target=finish)
    thread.start()
    for key in search_fakes.CALLS:
        search_fakes.CALLS[key] = 0
    study.enqueue_trial(space.point("base"))
    study.optimize(TrialPipeline(space, config, engines=search_fakes.fake_engines()), n_trials=1, catch=(Exception,))
    thread.join()
    mine = study.trials[-1]
    if original_ends == "complete":
        assert mine.state == TrialState.FAIL and mine.user_attrs["duplicate_of"] == original.number
        assert search_fakes.CALLS["train"] == 0
    else:  # the original failed: the waiting trial trains the architecture itself
        assert mine.state == TrialState.COMPLETE and search_fakes.CALLS["train"] == 1


def test_two_trials_drawing_one_architecture_at_once_agree_who_trains_it(tmp_path):
    _, study, _ = _pipeline_study(tmp_path)
    space = load_space("demo")
    low, high = (_running_trial(study, space, "base", CHECKING) for _ in range(2))
    arch = low.user_attrs["arch_id"]
    assert _scan(high, arch) == (None, study.trials[low.number], False)  # the lower number goes first
    assert _scan(low, arch)[:2] == (None, None) and _scan(low, arch)[2]  # ... once the higher one has yielded
    high.set_user_attr("stage", WAITING)
    assert _scan(low, arch) == (None, None, False)


# ------------------------------------------------------------------ points and stale trials
def test_a_point_interrupted_during_training_runs_again_on_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_search(_config(tmp_path, n_trials=3), engines=_interrupting_engines(at_call=1))
    study = load_study(tmp_path / "study.db", "s")
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["point"] == "base"
    assert not abandoned(study.trials[0])  # lowspace ended it itself, at the moment it stopped
    run_search(_config(tmp_path, n_trials=3), engines=search_fakes.fake_engines())
    done = {t.user_attrs.get("point") for t in load_study(tmp_path / "study.db", "s").trials
            if t.state == TrialState.COMPLETE}
    assert {"base", "small"} <= done


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_journal_trials_of_dead_workers_are_failed_retried_and_reported(tmp_path, capsys):
    journal = f"journal:{tmp_path / 'study.log'}"
    assert _cli(tmp_path, "--storage", journal, "--n-trials", "1", "--no-presets") == 0
    study = load_study(journal, "s")
    space = load_space("demo")
    gone = _running_trial(study, space, "base", "train", worker=f"{socket.gethostname()}:{_dead_pid()}")
    silent = _running_trial(study, space, "small", "train", worker="otherhost:7")
    silent.set_user_attr("alive_at", time.time() - 1000)
    time.sleep(1.5)  # the silent trial started longer ago than the grace period
    assert _cli(tmp_path, "--storage", journal, "--n-trials", "3", "--no-presets",
                "--set", "heartbeat.heartbeat_interval=1", "--set", "heartbeat.grace_period=1") == 0
    err = capsys.readouterr().err
    assert f"trial {gone.number} was left running (its process" in err and "has ended): failed and queued" in err
    assert f"trial {silent.number} was left running (no sign of life from worker otherhost:7" in err
    study = load_study(journal, "s")
    for t in (gone, silent):
        assert study.trials[t.number].state == TrialState.FAIL and abandoned(study.trials[t.number])
        retry = [r for r in study.trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == t.params
    assert all("alive_at" in t.user_attrs for t in study.trials if t.number > silent.number)


# ------------------------------------------------------------------ what a study was made with
def test_resume_with_another_space_is_refused_before_any_trial(tmp_path, capsys):
    assert _cli(tmp_path, "--n-trials", "1") == 0
    edited = tmp_path / "demo.yaml"
    edited.write_text(DEMO.read_text().replace("choices: [8, 12, 16]", "choices: [8, 12, 20]"))
    n_before = len(load_study(tmp_path / "study.db", "s").trials)
    assert _cli(tmp_path, "--n-trials", "2", "--space", str(edited)) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lowspace search: error: space: got ") and "Traceback" not in err
    assert "study 's' was made with another search space" in last and "pick another --study-name" in last
    assert len(load_study(tmp_path / "study.db", "s").trials) == n_before
    # formatting, comments, descriptions and points are not the space
    cosmetic = tmp_path / "cosmetic.yaml"
    cosmetic.write_text("# the same space\n" + DEMO.read_text().replace("description: Small", "description: Tiny"))
    assert _cli(tmp_path, "--n-trials", "2", "--space", str(cosmetic)) == 0


def test_a_study_made_before_the_space_hash_is_checked_against_its_trials(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    study.set_user_attr("space_hash", None)
    study.set_user_attr("space_yaml", "")  # as an older lowspace left it
    edited = tmp_path / "demo.yaml"
    edited.write_text(DEMO.read_text().replace("choices: [8, 12, 16]", "choices: [8, 12, 20]"))
    with pytest.raises(ConfigError, match="parameter 'width' is CategoricalDistribution"):
        run_search(_config(tmp_path, n_trials=2, space=str(edited)), engines=search_fakes.fake_engines())


def test_a_study_without_results_is_made_again_with_new_settings(tmp_path):
    failing = search_fakes.fake_engines(train_error="a bug in the first settings")
    first = run_search(_config(tmp_path, max_attempts=2), engines=failing)
    assert first.outcomes["failed"] == 2 and first.complete == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_search(_config(tmp_path, proxy={"epochs": 3}), engines=search_fakes.fake_engines())
    assert not [w for w in caught if "recorded no" in str(w.message)]
    assert again.complete == 4 and any("had no results yet; made it again" in n for n in again.notes)
    study = load_study(tmp_path / "study.db", "s")
    assert study.user_attrs["lowspace_config"]["proxy"] == {"epochs": 3} and outcome_counts(study)["failed"] == 0
    assert study.metric_names == ["accuracy", "latency"]
    with pytest.raises(ConfigError, match="proxy.epochs"):  # now it has results: the settings are kept
        run_search(_config(tmp_path, proxy={"epochs": 2}), engines=search_fakes.fake_engines())


def test_a_study_that_recorded_few_proxy_fields_warns_once(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    load_study(tmp_path / "study.db", "s").set_user_attr("proxy_resolved", {"epochs": 2})
    with pytest.warns(UserWarning) as record:
        run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    texts = [str(w.message) for w in record if "recorded no" in str(w.message)]
    assert len(texts) == 1 and "proxy.base_lr" in texts[0] and "proxy.warmup_epochs" in texts[0]


def test_a_changed_deploy_default_is_refused_on_resume(tmp_path):
    deploy = {"device": "cpu", "deploy": True}
    run_search(_config(tmp_path, n_trials=1, protocol=deploy), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    recorded = study.user_attrs["deploy_resolved"]
    assert recorded["groupnorm"] == "native" and recorded["fold_bn"] is True  # resolved on the CPU
    run_search(_config(tmp_path, n_trials=2, protocol=deploy), engines=search_fakes.fake_engines())  # same: resumes
    study.set_user_attr("deploy_resolved", {**recorded, "groupnorm": "channels_last"})  # as an older default
    changed = r"^protocol.deploy_resolved.groupnorm: got 'native'.*groupnorm='channels_last'"
    with pytest.raises(ConfigError, match=changed):
        run_search(_config(tmp_path, n_trials=3, protocol=deploy), engines=search_fakes.fake_engines())
    # a switch added to lowspace after the study was made: at its default (off) it resumes, with a warning
    study.set_user_attr("deploy_resolved", {k: v for k, v in recorded.items() if k != "triton_attention"})
    with pytest.warns(UserWarning, match="recorded no deploy switch triton_attention"):
        run_search(_config(tmp_path, n_trials=3, protocol=deploy), engines=search_fakes.fake_engines())
    study.set_user_attr("deploy_resolved", None)  # a study made before the record: not checked
    assert run_search(_config(tmp_path, n_trials=3, protocol=deploy), engines=search_fakes.fake_engines()).complete == 3


def test_a_missing_gpu_is_refused_before_the_study_exists(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _cli(tmp_path, "--n-trials", "1", "--device", "cuda") == 2
    assert "device: got 'cuda'; no CUDA device is visible here" in capsys.readouterr().err
    with pytest.raises(StorageError):
        load_study(tmp_path / "study.db", "s")


# ------------------------------------------------------------------ what the user reads
def test_a_timeout_stop_says_what_happened(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWSPACE_FAKE_EPOCH_S", "0.4")
    assert _cli(tmp_path, "--n-trials", "30", "--timeout", "1.5", "--max-macs", str(25_000 * 32)) == 0
    err = capsys.readouterr().err
    study = load_study(tmp_path / "study.db", "s")
    done, rejected = len(counted_trials(study)), outcome_counts(study)["rejected"]
    assert f"stopped at the 1.5 s timeout with {done} of 30 complete trials" in err
    assert (f"{rejected} rejected" in err) == (rejected > 0)
    assert study.metric_names == ["accuracy", "latency"]
    assert all(t.constraints["macs"] > 0 for t in study.trials if t.user_attrs.get("status") == "rejected")


def test_the_eta_ends_at_the_timeout():
    from lowspace.search._progress import _eta_column
    column = _eta_column(time.monotonic() + 10)
    assert str(column.render(SimpleNamespace(time_remaining=3600.0))) in ("eta 0:00:09", "eta 0:00:10")
    assert str(column.render(SimpleNamespace(time_remaining=5.0))) == "eta 0:00:05"
    assert str(_eta_column(None).render(SimpleNamespace(time_remaining=None))) == "eta -:--:--"


def test_trial_lines_say_cached_and_noisy_latencies(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWSPACE_CACHE_DIR", str(tmp_path / "cache"))
    eng = search_fakes.fake_engines()
    real = eng.measure

    def measure(*args, **kwargs):
        m = real(*args, **kwargs)
        m.cached, m.noisy = True, True
        return m

    eng.measure = measure
    config, study, _ = _pipeline_study(tmp_path)
    study.optimize(TrialPipeline(load_space("demo"), config, engines=eng), n_trials=1)
    t = study.trials[0]
    assert t.user_attrs["latency"]["cache"] == str(tmp_path / "cache" / "measurements.sqlite")
    line = summary_line(t)
    assert f"(cached in {tmp_path / 'cache' / 'measurements.sqlite'})" in line
    assert "! noisy latency: spread 20% above the 2% target" in line


def test_a_corrupt_measurement_cache_is_reported_by_the_search(tmp_path, capsys):
    cache = Path(os.environ["LOWSPACE_CACHE_DIR"]) / "measurements.sqlite"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"not a database" * 100)
    assert _cli(tmp_path, "--n-trials", "1") == 0
    err = capsys.readouterr().err
    assert "note: the measurement cache" in err and "was not usable" in err and "moved it to" in err
    assert list(cache.parent.glob("measurements.sqlite.corrupt-*"))


# ------------------------------------------------------------------ several workers, one small space
@pytest.mark.slow  # three worker processes
def test_three_workers_on_a_two_architecture_space_train_each_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LOWSPACE_FAKE_EPOCH_S", "0.5")
    space = tmp_path / "two.yaml"
    space.write_text(TWO_ARCHS)
    config = _config(tmp_path, space=str(space), mode="random", n_trials=2, workers=3, presets=False,
                     engines="search_fakes:fake_engines")
    summary = run_search(config)
    study = load_study(tmp_path / "study.db", "s")
    assert summary.complete == 2 and summary.stop == "n_trials", summary.stopped_reason
    evaluated = [t for t in study.trials if not is_duplicate(t)]
    assert sorted(t.state.name for t in evaluated) == ["COMPLETE", "COMPLETE"]
    assert len({t.user_attrs["arch_id"] for t in evaluated}) == 2


def test_a_trial_whose_worker_died_after_its_last_stage_is_reported_when_the_heartbeat_fails_it(tmp_path):
    from lowspace.search._stale import recover_stale
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'beat.db'}", heartbeat_interval=1, grace_period=1,
                                         failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1))
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("worker", "elsewhere:1")
    trial.set_user_attr("status", "complete")  # set just before the result is told; the worker died in between
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    notes = recover_stale(study, storage, grace_period_s=1, max_retry=1)
    assert notes == [f"trial {trial.number} (worker elsewhere:1) stopped beating: failed and queued again"]
    assert abandoned(study.trials[trial.number])
