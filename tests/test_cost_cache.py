"""The SQLite measurement cache: round trips, keys, location, concurrent writers, killed writers."""
import json
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from lowspace.cost.cache import CacheError, MeasurementCache, default_cache_path

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
    cache.put("arch:abc", PROTOCOL, "fp1", {"status": "ok", "median_ms": 1.25})  # replaces
    cache.put("timm:efficientvit_b1", PROTOCOL, "fp1", {"status": "ok", "median_ms": 2.0})
    assert len(cache) == 2
    assert [r["median_ms"] for r in cache.records("arch:abc")] == [1.25]
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


def test_unusable_file_raises_cache_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(CacheError, match="bad.sqlite"):
        MeasurementCache(bad).get("x", PROTOCOL, "fp")


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


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    n = 60
    go = FORK.Event()
    procs = [FORK.Process(target=_write, args=(path, tag, n, go)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
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
