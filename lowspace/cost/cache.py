"""The measurement cache: one SQLite file, safe for several processes.

A record is keyed by (network identity, protocol, environment fingerprint key): an arch_id for our configs,
``timm:NAME`` for timm models; networks without a known identity are not cached. SQLite runs in WAL mode
with a busy timeout, every write is one transaction (a killed writer leaves the last committed state),
and "database is locked" errors are retried with back-off. Keep the file on a local disk: SQLite locking
is not reliable on NFS.

The first record stored under a key stays: a process that measured the same network at the same time
gets that record back from :meth:`MeasurementCache.put`, so every process uses one value. A file that is
not a usable database is moved aside (``measurements.sqlite.corrupt-TIME``), reported once per process
with a :class:`CacheRebuilt` warning, and started afresh.

Location: ``path`` if given, else ``$LOWSPACE_CACHE_DIR/measurements.sqlite``, else the user cache dir
(``platformdirs.user_cache_dir("lowspace")``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..errors import LowspaceError

__all__ = ["MeasurementCache", "CacheError", "CacheRebuilt", "default_cache_path", "protocol_key"]

FILENAME = "measurements.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    protocol TEXT NOT NULL,
    fingerprint_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_identity ON measurements (identity);
"""


class CacheError(LowspaceError):
    """The cache file cannot be used (no permission, locked for too long, cannot be rebuilt)."""


class CacheRebuilt(UserWarning):
    """A corrupt cache file was moved aside and a new one started."""


_REPORTED: set[str] = set()  # cache files whose rebuild this process has reported


def default_cache_path() -> Path:
    """``$LOWSPACE_CACHE_DIR/measurements.sqlite`` or the same file in the user cache dir."""
    root = os.environ.get("LOWSPACE_CACHE_DIR")
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("lowspace")
    return Path(root) / FILENAME


def protocol_key(protocol: dict[str, Any]) -> str:
    """Canonical JSON of a protocol dict (sorted keys): equal protocols give equal strings."""
    return json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str)


def _record_key(identity: str, protocol: dict[str, Any], fingerprint_key: str) -> str:
    blob = "\n".join((identity, protocol_key(protocol), fingerprint_key))
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_busy(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


class MeasurementCache:
    """SQLite store of measurement records (plain dicts, as ``Measurement.to_dict()`` gives).

    Args:
        path: the database file (default: :func:`default_cache_path`); a directory means ``DIR/measurements.sqlite``.
        timeout_s: how long one operation may wait for other processes' locks before :class:`CacheError`.
    """

    def __init__(self, path: str | Path | None = None, timeout_s: float = 60.0):
        path = default_cache_path() if path is None else Path(path)
        if path.is_dir():
            path = path / FILENAME
        self.path = path
        self.timeout_s = timeout_s
        self._ready = False
        self.rebuilt: str | None = None  # what the last rebuild of a corrupt file did

    def __repr__(self) -> str:
        return f"MeasurementCache({str(self.path)!r})"

    # ---------------------------------------------------------------- connection handling
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise CacheError(f"cannot open the measurement cache {self.path}: {err}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            if not self._ready:
                self._init(conn)
            yield conn
        finally:
            conn.close()

    def _init(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory: still correct, just slower
            conn.execute("PRAGMA journal_mode = DELETE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)  # IF NOT EXISTS: each is atomic and idempotent
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._ready = True

    def _run(self, fn):
        """Call ``fn(conn)``, retrying while other processes hold the lock, up to ``timeout_s``; a file that
        is not a usable database is rebuilt once."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.01
        rebuilt = False
        while True:
            try:
                with self._connect() as conn:
                    return fn(conn)
            except sqlite3.OperationalError as err:
                if not _is_busy(err) or time.monotonic() > deadline:
                    raise CacheError(f"measurement cache {self.path}: {err}") from None
            except sqlite3.DatabaseError as err:  # not a database, or a damaged one
                if rebuilt:
                    raise CacheError(f"measurement cache {self.path} is not usable ({err}) even after it was "
                                     "rebuilt; pass another path") from None
                self._rebuild(err)
                rebuilt = True
                continue
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)

    def _rebuild(self, err: sqlite3.DatabaseError) -> None:
        """Move a corrupt file (and its WAL side files) aside, unless another process did so already."""
        from filelock import FileLock
        self._ready = False
        with FileLock(str(self.path) + ".lock", timeout=self.timeout_s):
            if _usable(self.path):
                return  # another process rebuilt it meanwhile
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            try:
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    side = Path(str(self.path) + suffix)
                    if side.exists():
                        os.replace(side, Path(str(aside) + suffix))
            except OSError as move_err:
                raise CacheError(f"measurement cache {self.path} is not usable ({err}) and cannot be moved aside "
                                 f"({move_err.strerror}); delete it or pass another path") from None
        self.rebuilt = (f"the measurement cache {self.path} was not usable ({err}); moved it to {aside.name} "
                        "and started a new one (earlier measurements will be taken again)")
        if str(self.path) not in _REPORTED:
            _REPORTED.add(str(self.path))
            warnings.warn(self.rebuilt, CacheRebuilt, stacklevel=4)

    def check(self) -> str | None:
        """Open the cache once (rebuilding a corrupt file); returns what was done about a corrupt file, or
        None. Raises CacheError if the cache cannot be used at all."""
        self.rebuilt = None
        self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM measurements").fetchone())
        return self.rebuilt

    # ---------------------------------------------------------------- records
    def get(self, identity: str, protocol: dict[str, Any], fingerprint_key: str) -> dict[str, Any] | None:
        """The stored record for this network, protocol and environment, or None."""
        key = _record_key(identity, protocol, fingerprint_key)

        def read(conn):
            row = conn.execute("SELECT record FROM measurements WHERE key = ?", (key,)).fetchone()
            return None if row is None else json.loads(row[0])
        return self._run(read)

    def put(self, identity: str, protocol: dict[str, Any], fingerprint_key: str,
            record: dict[str, Any]) -> dict[str, Any]:
        """Store a record unless one is stored under the key already; returns the stored one (``record``
        itself, or the earlier record of a process that measured first)."""
        key = _record_key(identity, protocol, fingerprint_key)
        values = (key, identity, protocol_key(protocol), fingerprint_key, time.time(),
                  json.dumps(record, sort_keys=True, default=str))

        def write(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?)", values)
                stored = conn.execute("SELECT record FROM measurements WHERE key = ?", (key,)).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return json.loads(stored)
        return self._run(write)

    def records(self, identity: str | None = None) -> list[dict[str, Any]]:
        """Every stored record (of one network if ``identity`` is given), oldest first."""
        def read(conn):
            if identity is None:
                rows = conn.execute("SELECT record FROM measurements ORDER BY created_at").fetchall()
            else:
                rows = conn.execute("SELECT record FROM measurements WHERE identity = ? ORDER BY created_at",
                                    (identity,)).fetchall()
            return [json.loads(r[0]) for r in rows]
        return self._run(read)

    def __len__(self) -> int:
        return self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    def clear(self) -> int:
        """Delete every record; returns how many there were."""
        def wipe(conn):
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute("DELETE FROM measurements").rowcount
            conn.execute("COMMIT")
            return n
        return self._run(wipe)

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check."""
        return self._run(lambda conn: conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def _usable(path: Path) -> bool:
    """Whether ``path`` is missing (a new file will do) or a database SQLite can read."""
    if not path.exists():
        return True
    try:
        conn = sqlite3.connect(str(path), timeout=5)
        try:
            return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.OperationalError as err:
        return _is_busy(err)  # in use by another process: a database
    except sqlite3.DatabaseError:
        return False
