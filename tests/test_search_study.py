"""Studies end to end with fake engines: SQLite default, resume, interrupts, killed workers, storage errors."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

import search_fakes
from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import StorageError, load_study, normalize_storage, open_storage
from lowspace.search import count_states, run_search

TESTS = Path(__file__).resolve().parent


def _config(tmp_path, **kw):
    base = {"space": "demo", "n_trials": 6, "storage": f"sqlite:///{tmp_path / 'study.db'}", "study_name": "s",
            "proxy": {"epochs": 2}, "early_stopping": {"kind": "none"}, "heartbeat": {"heartbeat_interval": 1,
                                                                                        "grace_period": 2}}
    base.update(kw)
    return SearchConfig.from_dict(base)


def test_search_reaches_n_complete_trials_with_presets_first(tmp_path):
    config = _config(tmp_path)
    summary = run_search(config, engines=search_fakes.fake_engines())
    assert summary.complete == 6 and summary.stop == "n_trials" and summary.ok
    assert summary.stopped_reason == "reached n_trials: 6 complete trials"
    study = load_study(tmp_path / "study.db")  # a plain .db path works too
    assert study.trials[0].user_attrs["point"] == "base" and study.trials[1].user_attrs["point"] == "small"
    assert study.user_attrs["lowspace_config"]["mode"] == "pareto"
    assert study.user_attrs["objectives"] == ["accuracy", "latency"]
    assert "demo" in study.user_attrs["space_yaml"]


def test_default_storage_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = SearchConfig.from_dict({"space": "demo", "n_trials": 2, "proxy": {"epochs": 1}})
    summary = run_search(config, engines=search_fakes.fake_engines())
    assert (tmp_path / "lowspace.db").exists()
    assert summary.study_name == "demo-pareto" and summary.complete == 2


def test_rerun_resumes_and_counts_only_complete_trials(tmp_path):
    run_search(_config(tmp_path, n_trials=3), engines=search_fakes.fake_engines())
    search_fakes.CALLS["train"] = 0
    summary = run_search(_config(tmp_path, n_trials=5), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    assert count_states(study)["COMPLETE"] == 5 == summary.complete
    assert search_fakes.CALLS["train"] <= 2  # the first three were not redone
    again = run_search(_config(tmp_path, n_trials=5), engines=search_fakes.fake_engines())
    assert again.ran == 0


def test_rejected_and_failed_trials_do_not_count(tmp_path):
    config = _config(tmp_path, n_trials=3, constraints={"max_macs": 25_000 * 32})
    summary = run_search(config, engines=search_fakes.fake_engines())
    states = summary.states
    assert states["COMPLETE"] == 3 and states.get("PRUNED", 0) >= 1


def test_attempt_cap_stops_a_hopeless_search(tmp_path):
    config = _config(tmp_path, n_trials=1, constraints={"max_macs": 1.0})  # default cap: 10 * 1 + 20 attempts
    summary = run_search(config, engines=search_fakes.fake_engines())
    assert summary.complete == 0 and summary.stop == "gave_up" and not summary.ok
    assert summary.stopped_reason.startswith("gave up after 30 trials with 0 of 1 complete trials (")
    assert "rejected" in summary.stopped_reason and "relax the constraints" in summary.stopped_reason


def test_max_attempts_reached_with_complete_trials_is_no_give_up(tmp_path):
    config = _config(tmp_path, n_trials=5, max_attempts=3)
    summary = run_search(config, engines=search_fakes.fake_engines())
    assert summary.complete == 3 and summary.stop == "max_attempts" and summary.ok
    assert summary.stopped_reason == "stopped at max_attempts (3 trials started) with 3 of 5 complete trials"


def test_interrupt_marks_the_trial_failed_and_rerun_resumes(tmp_path):
    calls = {"n": 0}
    eng = search_fakes.fake_engines()
    real = eng.train_proxy

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    eng.train_proxy = interrupting
    with pytest.raises(KeyboardInterrupt):
        run_search(_config(tmp_path), engines=eng)
    study = load_study(tmp_path / "study.db", "s")
    assert count_states(study) == {"COMPLETE": 2, "FAIL": 1}
    summary = run_search(_config(tmp_path), engines=search_fakes.fake_engines())
    assert summary.complete == 6
    assert study.trials[2].state == TrialState.FAIL


def test_resume_with_another_mode_or_protocol_is_refused(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    with pytest.raises(ConfigError, match="was created with mode 'pareto'"):
        run_search(_config(tmp_path, n_trials=1, mode="random"), engines=search_fakes.fake_engines())
    with pytest.raises(ConfigError, match="would not be comparable"):
        run_search(_config(tmp_path, n_trials=1, protocol={"batch_size": 8}), engines=search_fakes.fake_engines())


def test_resume_compares_the_proxy_with_its_defaults_filled_in(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    resolved = study.user_attrs["proxy_resolved"]
    assert resolved["epochs"] == 2 and "fast_groupnorm" in resolved and "base_lr" in resolved
    # writing out a default explicitly is the same schedule
    same = {"epochs": 2, "base_lr": resolved["base_lr"]}
    run_search(_config(tmp_path, n_trials=1, proxy=same), engines=search_fakes.fake_engines())
    # naming a field only on resume is compared against the value the study recorded for it
    with pytest.raises(ConfigError, match="proxy.base_lr"):
        run_search(_config(tmp_path, n_trials=1, proxy={"epochs": 2, "base_lr": resolved["base_lr"] * 2}),
                   engines=search_fakes.fake_engines())


def test_resume_of_a_study_without_resolved_proxy_warns_about_new_keys(tmp_path):
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    study.set_user_attr("proxy_resolved", None)  # as written by older lowspace
    with pytest.warns(UserWarning, match="recorded no proxy.base_lr; resuming with proxy.base_lr=0.5"):
        run_search(_config(tmp_path, n_trials=1, proxy={"epochs": 2, "base_lr": 0.5}),
                   engines=search_fakes.fake_engines())
    with pytest.raises(ConfigError, match="proxy.epochs"):
        run_search(_config(tmp_path, n_trials=1, proxy={"epochs": 3}), engines=search_fakes.fake_engines())
    # data options are recorded as given: one more is a different data set, not a missing record
    with pytest.raises(ConfigError, match="data.train_fraction"):
        run_search(_config(tmp_path, n_trials=1, data={"dataset": "fashion_mnist", "train_fraction": 0.5}),
                   engines=search_fakes.fake_engines())


def test_resume_of_a_study_timed_before_cudnn_benchmark_was_recorded(tmp_path):
    # lowspace used to time trials with cuDNN autotuning without recording it; such a study resumes only
    # with protocol.cudnn_benchmark: true, not with today's default (false)
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    study = load_study(tmp_path / "study.db", "s")
    stored = study.user_attrs["lowspace_config"]
    assert stored["protocol"]["cudnn_benchmark"] is False
    del stored["protocol"]["cudnn_benchmark"]
    study.set_user_attr("lowspace_config", stored)
    with pytest.raises(ConfigError, match="protocol.cudnn_benchmark.*'cudnn_benchmark': True"):
        run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    assert run_search(_config(tmp_path, n_trials=2, protocol={"cudnn_benchmark": True}),
                      engines=search_fakes.fake_engines()).complete == 2


def test_journal_storage(tmp_path):
    config = _config(tmp_path, n_trials=2, storage=f"journal:{tmp_path / 'study.log'}")
    assert run_search(config, engines=search_fakes.fake_engines()).complete == 2
    assert count_states(load_study(f"journal:{tmp_path / 'study.log'}"))["COMPLETE"] == 2


def test_constrained_and_random_modes_run(tmp_path):
    c = _config(tmp_path, mode="constrained", constraints={"max_latency_ms": 3.0}, study_name="c",
                proxy={"epochs": 3})
    assert run_search(c, engines=search_fakes.fake_engines()).complete == 6
    study = load_study(tmp_path / "study.db", "c")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(t.constraints["latency_ms"] <= 0 for t in done)
    r = _config(tmp_path, mode="random", study_name="r", n_trials=4)
    assert run_search(r, engines=search_fakes.fake_engines()).complete == 4
    assert load_study(tmp_path / "study.db", "r").user_attrs["sampler"] == "random"


def test_nsga2_breeds_a_second_generation(tmp_path):
    # population max(8, n_trials // 4) = 8: trials after the first eight are bred from it
    config = _config(tmp_path, sampler="nsga2", n_trials=11, study_name="nsga2")
    assert run_search(config, engines=search_fakes.fake_engines()).complete == 11
    study = load_study(tmp_path / "study.db", "nsga2")
    generations = [t.system_attrs.get("NSGAIISampler:generation") for t in study.trials]
    assert max(g for g in generations if g is not None) >= 1


@pytest.mark.slow  # fits a Gaussian process per trial
def test_gp_sampler_proposes_after_its_start_up_trials(tmp_path, monkeypatch):
    import optuna
    proposals = []
    real = optuna.samplers.GPSampler.sample_relative

    def spy(self, study, trial, search_space):
        params = real(self, study, trial, search_space)
        proposals.append(bool(params))
        return params

    monkeypatch.setattr(optuna.samplers.GPSampler, "sample_relative", spy)
    config = _config(tmp_path, sampler="gp", n_trials=7, study_name="gp")  # 4 start-up trials
    assert run_search(config, engines=search_fakes.fake_engines()).complete == 7
    assert sum(proposals) >= 2  # the model proposed the last trials


def test_bad_storage_urls_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected one of"):
        normalize_storage("study.txt")
    with pytest.raises(StorageError, match="not a valid storage URL|driver is not installed"):
        open_storage("nosuchdb://user@host/db")
    with pytest.raises(StorageError, match="cannot open") as info:
        open_storage("postgresql+psycopg://u:secret@127.0.0.1:1/db")
    assert "secret" not in str(info.value)
    with pytest.raises(StorageError, match="no such study file"):
        load_study(tmp_path / "missing.db")
    run_search(_config(tmp_path, n_trials=1), engines=search_fakes.fake_engines())
    with pytest.raises(StorageError, match="did you mean 's'"):
        load_study(tmp_path / "study.db", "ss")


def test_opening_retries_while_another_process_creates_the_same_schema(tmp_path, monkeypatch):
    import optuna.storages
    real, calls = optuna.storages.RDBStorage, []

    class IntegrityError(Exception):  # what sqlalchemy raises for the loser of a concurrent CREATE TABLE
        pass

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
        return real(*args, **kwargs)
    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    assert open_storage(f"sqlite:///{tmp_path / 'raced.db'}") is not None and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda *a, **k: (calls.append(1), 1 / 0))
    with pytest.raises(StorageError, match="ZeroDivisionError"):  # any other error is not retried
        open_storage(f"sqlite:///{tmp_path / 'other.db'}")
    assert len(calls) == 1


def test_bad_space_file_is_reported_before_anything_runs(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("base: b1\nparams:\n  d: {low: 1, high: 3, path: stages.2.deep}\n")
    with pytest.raises(ConfigError, match=r"space.yaml, line 3"):
        run_search(_config(tmp_path, space=str(bad)), engines=search_fakes.fake_engines())
    assert not (tmp_path / "study.db").exists() or count_states(load_study(tmp_path / "study.db")) == {}


# ------------------------------------------------------------------ worker processes
def check_kill_recovery(study, killed_number: int, n_trials: int, n_workers: int) -> None:
    """The killed trial failed (heartbeat), was retried once and completed; nothing lost or doubled."""
    states = count_states(study)
    assert n_trials <= states["COMPLETE"] <= n_trials + n_workers - 1
    assert states.get("RUNNING", 0) == 0
    killed = study.trials[killed_number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len({t.number for t in complete}) == len(complete)
    # every complete trial finished its proxy run or reused a finished one
    assert all(t.user_attrs["status"] == "complete" for t in complete)


def run_killing_one_worker(config: SearchConfig, study_name: str, storage) -> tuple:
    """Run ``config`` (several worker processes) in a thread, SIGKILL the first worker seen training, wait.

    Returns (summary, number of the killed trial)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_search(config)), daemon=True)
    thread.start()
    end = time.monotonic() + 90
    study = None
    while study is None and time.monotonic() < end:
        try:
            study = load_study(storage, study_name)
        except StorageError:
            time.sleep(0.2)
    assert study is not None, "the study was never created"
    victim = None
    while victim is None and time.monotonic() < end:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("stage") == "train":
                victim = t
                break
        time.sleep(0.05)
    assert victim is not None, "no worker started training"
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    return result["summary"], victim.number


@pytest.mark.slow  # worker processes, one killed with SIGKILL
def test_local_workers_one_killed_mid_trial(tmp_path, monkeypatch):
    """`--workers 2` on the SQLite default: a worker killed mid-trial; heartbeat fails it, a worker retries it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LOWSPACE_FAKE_EPOCH_S", "0.3")
    config = _config(tmp_path, n_trials=4, workers=2, presets=False, engines="search_fakes:fake_engines",
                     device="cpu", out=str(tmp_path / "out"))
    summary, killed = run_killing_one_worker(config, "s", tmp_path / "study.db")
    assert "exited with errors" in summary.stopped_reason
    check_kill_recovery(load_study(tmp_path / "study.db", "s"), killed, 4, 2)
    logs = sorted((tmp_path / "out" / "workers").glob("worker*.log"))
    assert len(logs) == 2 and any("done: reached n_trials: " in p.read_text() for p in logs)


def test_worker_environments_pin_gpus_or_cpu(monkeypatch):
    from lowspace.search._launch import worker_environments
    envs = worker_environments(3, "cpu")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["", "", ""]
    assert all(int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    envs = worker_environments(3, "auto")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert all(int(e["LOWSPACE_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 3) for e in envs)


def test_bad_protocol_and_missing_data_fail_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="allowed: eager"):
        run_search(_config(tmp_path, protocol={"backend": "warp"}), engines=search_fakes.fake_engines())
    from lowspace.data import DataError
    from lowspace.search.trial import _load_data
    eng = search_fakes.fake_engines()
    eng.load_data = _load_data
    with pytest.raises(DataError, match="no such directory"):
        run_search(_config(tmp_path, study_name="d", data={"dataset": str(tmp_path / "nowhere")}), engines=eng)
    with pytest.raises(StorageError):  # checked before the study was created
        load_study(tmp_path / "study.db", "d")
