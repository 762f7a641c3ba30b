"""Search on a real PostgreSQL (``LOWSPACE_TEST_PG_URL``; .ci/run starts one): concurrent workers, a worker
killed with SIGKILL mid-trial, workers that draw one architecture at once, resume, failing trials, bad URLs."""
import os
import uuid

import optuna
import pytest

import search_fakes
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import StorageError, load_study, open_storage
from lowspace.search import count_states, is_duplicate, run_search
from test_search_resume import TWO_ARCHS
from test_search_study import TESTS, check_kill_recovery, run_killing_one_worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def study_name(pg_url):
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=pg_url)
    except KeyError:
        pass


def _config(pg_url, name, **kw):
    base = {"space": "demo", "n_trials": 4, "storage": pg_url, "study_name": name, "proxy": {"epochs": 4},
            "early_stopping": {"kind": "none"}, "heartbeat": {"heartbeat_interval": 1, "grace_period": 3}}
    base.update(kw)
    return SearchConfig.from_dict(base)


def test_three_workers_one_killed_mid_trial(pg_url, study_name, monkeypatch):
    n = 6
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LOWSPACE_FAKE_EPOCH_S", "0.3")
    config = _config(pg_url, study_name, n_trials=n, workers=3, engines="search_fakes:fake_engines", presets=False,
                     device="cpu", protocol={"device": "cpu"},
                     # the default grace (4 heartbeats): with 2, a live worker on a busy 2-core machine was once
                     # taken for dead and its trial retried a second time
                     heartbeat={"heartbeat_interval": 1, "max_retry": 2})
    summary, killed = run_killing_one_worker(config, study_name, pg_url)
    assert "exited with errors" in summary.stopped_reason  # the killed worker is reported
    check_kill_recovery(load_study(pg_url, study_name), killed, n, 3)


def test_three_workers_on_two_architectures_train_each_once(pg_url, study_name, monkeypatch, tmp_path):
    """Every draw repeats one of two architectures: whichever worker draws one first trains it, the others
    wait for it and record a duplicate; no architecture is trained twice, no duplicate counts."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LOWSPACE_FAKE_EPOCH_S", "0.5")
    space = tmp_path / "two.yaml"
    space.write_text(TWO_ARCHS)
    config = _config(pg_url, study_name, space=str(space), mode="random", n_trials=2, workers=3, presets=False,
                     engines="search_fakes:fake_engines", device="cpu", protocol={"device": "cpu"})
    summary = run_search(config)
    study = load_study(pg_url, study_name)
    assert summary.complete == 2 and summary.stop == "n_trials", summary.stopped_reason
    evaluated = [t for t in study.trials if not is_duplicate(t)]
    assert sorted(t.state.name for t in evaluated) == ["COMPLETE", "COMPLETE"]
    assert len({t.user_attrs["arch_id"] for t in evaluated}) == 2
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials if is_duplicate(t))


def test_resume_and_failing_trials_on_postgres(pg_url, study_name):
    summary = run_search(_config(pg_url, study_name, n_trials=2), engines=search_fakes.fake_engines())
    assert summary.complete == 2
    # a second run whose candidates run out of memory records them as failed and goes on to its cap
    oom = search_fakes.fake_engines(oom_over_params=0)
    summary = run_search(_config(pg_url, study_name, n_trials=3, max_attempts=4), engines=oom)
    study = load_study(pg_url, study_name)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all("out of memory" in t.user_attrs["error"] for t in failed)
    summary = run_search(_config(pg_url, study_name, n_trials=3, max_attempts=10), engines=search_fakes.fake_engines())
    assert summary.complete == 3 and count_states(study)["COMPLETE"] == 3


def test_bad_postgres_credentials_give_a_clear_error(pg_url):
    from sqlalchemy.engine import make_url
    bad = make_url(pg_url).set(password="wrong-password").render_as_string(hide_password=False)
    with pytest.raises(StorageError) as info:
        open_storage(bad)
    assert "cannot open" in str(info.value) and "wrong-password" not in str(info.value)
    missing = make_url(pg_url).set(database="no_such_db_lowspace").render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="no_such_db_lowspace"):
        open_storage(missing)


def test_workers_on_separate_machines_join_through_the_url(pg_url, study_name):
    """Two independent `lowspace search` runs on one URL (as on two machines) share one study."""
    a = run_search(_config(pg_url, study_name, n_trials=2), engines=search_fakes.fake_engines())
    b = run_search(_config(pg_url, study_name, n_trials=4), engines=search_fakes.fake_engines())
    assert a.complete == 2 and b.complete == 4
