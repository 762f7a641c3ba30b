"""The SQLite measurement cache: round trips, keys, location, concurrent writers (first record wins), killed
writers, corrupt files rebuilt, noisy measurements never cached."""
import json
import multiprocessing
import os
import signal
import sqlite3
import time
import warnings
from pathlib import Path

import pytest

from lowspace.cost.cache import CacheError, CacheRebuilt, MeasurementCache, default_cache_path

PROTOCOL = {"device": "cpu", "backend": "eager", "precision": "fp32", "batch_size": 1, "resolution": 224}


def test_round_trip_and_keys(tmp_path):
    cache = MeasurementCache(tmp_path / "m.sqlite")
    assert cache.get("arch:abc", PROTOCOL, "fp1") is None
    cache.put("arch:abc", PROTOCOL, "fp1", {"status": "ok", "median_ms": 1.5})
    # protocol key order does not matter; identity, protocol and fingerprint all do
    assert cache.get("arch:abc", dict(reversed(list(PROTOCOL.items()))), "fp1")["median_ms"] == 1.5
    assert cache.get("arch:abd", PROTOCOL, "fp1") is None
    assert cache.get("arch:abc", {**PROTOCOL, "batch_size": 2}, "fp1") is None
    assert cache.get("arch:abc", PROTOCOL, "fp2") is None
    # the first record under a key stays; a later put gets it back
    assert cache.put("arch:abc", PROTOCOL, "fp1", {"status": "ok", "median_ms": 1.25})["median_ms"] == 1.5
    cache.put("timm:efficientvit_b1", PROTOCOL, "fp1", {"status": "ok", "median_ms": 2.0})
    assert len(cache) == 2
    assert [r["median_ms"] for r in cache.records("arch:abc")] == [1.5]
    assert cache.integrity_ok()
    with sqlite3.connect(cache.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache.clear() == 2 and len(cache) == 0


def test_locations(tmp_path, monkeypatch):
    assert default_cache_path() == Path(os.environ["LOWSPACE_CACHE_DIR"]) / "measurements.sqlite"
    monkeypatch.delenv("LOWSPACE_CACHE_DIR")
    import platformdirs
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(tmp_path / "user" / app))
    assert default_cache_path() == tmp_path / "user" / "lowspace" / "measurements.sqlite"
    (tmp_path / "dir").mkdir()
    assert MeasurementCache(tmp_path / "dir").path == tmp_path / "dir" / "measurements.sqlite"


def test_corrupt_file_is_moved_aside_reported_once_and_rebuilt(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    cache = MeasurementCache(bad)
    with pytest.warns(CacheRebuilt, match=r"bad.sqlite was not usable .*moved it to bad.sqlite.corrupt-"):
        assert cache.get("x", PROTOCOL, "fp") is None
    aside = list(tmp_path.glob("bad.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage" * 1000
    cache.put("x", PROTOCOL, "fp", {"status": "ok"})
    assert MeasurementCache(bad).get("x", PROTOCOL, "fp") == {"status": "ok"} and cache.integrity_ok()
    bad.unlink()
    bad.write_bytes(b"garbage again" * 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per file and process
        assert "was not usable" in MeasurementCache(bad).check()
    assert MeasurementCache(bad).check() is None


def test_cache_that_cannot_be_created_raises_cache_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CacheError, match="cannot open the measurement cache"):
        MeasurementCache(tmp_path / "file" / "m.sqlite").get("x", PROTOCOL, "fp")


# Writers are forked processes (cheap: no new interpreter); they only use sqlite3 through the cache.
FORK = multiprocessing.get_context("fork")


def _write(path, tag, n, go, progress=None):
    cache = MeasurementCache(path, timeout_s=60)
    go.wait(60)  # start together with the other writer
    i = 0
    while n < 0 or i < n:
        cache.put(f"arch:{tag}{i}", {"batch_size": i}, "fp", {"status": "ok", "median_ms": float(i), "tag": tag})
        i += 1
        if progress is not None:
            progress.value = i


def _run_together(procs, go) -> None:
    """Start ``procs``, release them at once through the event ``go``, and require each to exit cleanly."""
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    n = 60
    go = FORK.Event()
    _run_together([FORK.Process(target=_write, args=(path, tag, n, go)) for tag in ("a", "b")], go)
    cache = MeasurementCache(path)
    assert len(cache) == 2 * n
    assert cache.integrity_ok()
    for tag in ("a", "b"):
        for i in (0, n // 2, n - 1):
            assert cache.get(f"arch:{tag}{i}", {"batch_size": i}, "fp") == {"status": "ok", "median_ms": float(i),
                                                                              "tag": tag}


def test_writer_killed_mid_stream_leaves_a_readable_cache(tmp_path):
    path = tmp_path / "killed.sqlite"
    go, progress = FORK.Event(), FORK.Value("i", 0)
    proc = FORK.Process(target=_write, args=(path, "k", -1, go, progress))  # writes until killed
    proc.start()
    go.set()
    deadline = time.monotonic() + 60
    while progress.value < 20:
        assert time.monotonic() < deadline and proc.is_alive(), "the writer made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    cache = MeasurementCache(path)
    assert cache.integrity_ok()
    rows = cache.records()
    assert len(rows) >= 20 and all(r["status"] == "ok" and r["tag"] == "k" for r in rows)
    cache.put("arch:after", PROTOCOL, "fp", {"status": "ok"})  # still writable
    assert cache.get("arch:after", PROTOCOL, "fp") == {"status": "ok"}


def _put_one(path, tag, go, results):
    go.wait(60)
    stored = MeasurementCache(path, timeout_s=60).put("arch:same", PROTOCOL, "fp", {"status": "ok", "tag": tag})
    results.put((tag, stored["tag"]))


def test_concurrent_writers_of_one_key_agree_on_the_first_record(tmp_path):
    path = tmp_path / "same.sqlite"
    MeasurementCache(path).check()
    go, results = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_put_one, args=(path, f"w{i}", go, results)) for i in range(4)]
    _run_together(procs, go)
    got = dict(results.get(timeout=10) for _ in procs)
    stored = MeasurementCache(path).get("arch:same", PROTOCOL, "fp")["tag"]
    assert set(got) == {"w0", "w1", "w2", "w3"} and set(got.values()) == {stored}


def _write_then_hang_in_transaction(path, inside):
    cache = MeasurementCache(path)
    cache.put("arch:committed", {}, "fp", {"status": "ok"})
    with cache._connect() as conn:
        conn.execute("BEGIN IMMEDIATE")
        for i in range(500):
            conn.execute("INSERT INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
                         (f"k{i}", f"arch:open{i}", "{}", "fp", 0.0, json.dumps({"status": "ok"})))
        inside.set()
        time.sleep(600)


def test_writer_killed_inside_a_transaction_loses_only_that_transaction(tmp_path):
    path = tmp_path / "txn.sqlite"
    inside = FORK.Event()
    proc = FORK.Process(target=_write_then_hang_in_transaction, args=(path, inside))
    proc.start()
    try:
        assert inside.wait(60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    cache = MeasurementCache(path, timeout_s=10)
    assert cache.integrity_ok()
    assert cache.records() == [{"status": "ok"}]
    assert cache.get("arch:committed", {}, "fp") == {"status": "ok"}
    cache.put("arch:next", {}, "fp", {"status": "ok"})  # the dead writer's lock is gone
    assert len(cache) == 2


def test_source_hash_follows_the_files_that_shape_a_measurement(tmp_path):
    from lowspace.cost.fingerprint import source_hash
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "model.py").write_text("WIDTH = 8\n")
    (tmp_path / "cost").mkdir()
    (tmp_path / "cost" / "measure.py").write_text("REPEATS = 5\n")
    (tmp_path / "cost" / "count.py").write_text("X = 1\n")
    before = source_hash(tmp_path)
    (tmp_path / "cost" / "count.py").write_text("X = 2\n")  # counting does not shape a latency
    assert source_hash.__wrapped__(tmp_path) == before
    (tmp_path / "arch" / "model.py").write_text("WIDTH = 16\n")
    assert source_hash.__wrapped__(tmp_path) != before
    assert len(source_hash()) == 16 and source_hash() != before


def test_a_new_lowspace_version_or_source_never_reuses_a_cached_measurement(tmp_path, monkeypatch):
    from lowspace.cost import fingerprint as fp_mod
    from lowspace.cost.measure import measure
    quick = dict(resolution=32, cache=tmp_path / "c.sqlite", chunk_ms=2.0, warmup_ms=2.0, max_time_s=0.5,
                 min_chunks=3, target_spread=1e9)
    first = measure("b0", **quick)
    assert first.fingerprint["lowspace_source"] == fp_mod.source_hash() and first.fingerprint["lowspace"]
    assert measure("b0", **quick).cached
    monkeypatch.setattr(fp_mod, "source_hash", lambda: "edited-source")
    assert not measure("b0", **quick).cached
    monkeypatch.setattr(fp_mod, "__version__", "99.0")
    again = measure("b0", **quick)
    assert not again.cached and again.fingerprint["lowspace"] == "99.0"


QUICK = dict(resolution=32, chunk_ms=2.0, warmup_ms=2.0, max_time_s=0.2, min_chunks=3)


def test_a_measurement_that_stays_noisy_is_measured_twice_flagged_and_not_cached(tmp_path, monkeypatch):
    from lowspace.cost import measure as measure_mod
    runs = []
    real = measure_mod._measure_local
    monkeypatch.setattr(measure_mod, "_measure_local", lambda **kw: runs.append(1) or real(**kw))
    noisy = measure_mod.measure("b0", cache=tmp_path / "c.sqlite", target_spread=1e-9, **QUICK)
    assert len(runs) == 2 and noisy.status == "ok" and noisy.noisy
    assert any("in two measurements: not cached" in w for w in noisy.warnings)
    assert len(MeasurementCache(tmp_path / "c.sqlite")) == 0
    steady = measure_mod.measure("b0", cache=tmp_path / "c.sqlite", target_spread=1e9, **QUICK)
    assert len(runs) == 3 and not steady.noisy and len(MeasurementCache(tmp_path / "c.sqlite")) == 1


def test_a_later_writer_returns_the_record_stored_first(tmp_path):
    from lowspace.cost.fingerprint import fingerprint, fingerprint_key
    from lowspace.cost.measure import measure
    from lowspace.cost.protocol import Protocol
    from lowspace.cost.spec import resolve_spec
    cache = MeasurementCache(tmp_path / "c.sqlite")
    record = Protocol(device="cpu", resolution=32).record(32, resolve_spec("b0").in_chans)
    key = (resolve_spec("b0").identity(32), record, fingerprint_key(fingerprint("cpu")))
    real_put = cache.put

    def another_process_first(identity, protocol, fp_key, rec):  # a writer that stored its record just before
        real_put(identity, protocol, fp_key, {**rec, "median_ms": 123.0, "measured_at": "earlier"})
        return real_put(identity, protocol, fp_key, rec)

    cache.put = another_process_first
    m = measure("b0", cache=cache, target_spread=1e9, **QUICK)
    assert m.cached and m.median_ms == 123.0 and "measured this network first" in m.warnings[-1]
    assert cache.get(*key)["median_ms"] == 123.0
