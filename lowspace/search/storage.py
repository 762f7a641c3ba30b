"""Study storage: SQLite by default, any SQLAlchemy URL (PostgreSQL for clusters), or a journal file.

Accepted specs: ``None`` (``lowspace.db`` in the working directory), ``sqlite:///path.db``,
``postgresql+psycopg://user:pw@host/db`` (any SQLAlchemy URL), ``journal:path.log``, or a plain path to an
existing ``.db`` / ``.sqlite`` file (or a ``.log`` / ``.journal`` file for journals).

RDB storages get a heartbeat: a trial whose worker dies is failed after the grace period and retried
(``RetryHeartbeatStaleTrialCallback``). Journal files have no heartbeat in Optuna; lowspace's workers
stamp their running trials instead, with the same interval, grace period and retries
(:mod:`lowspace.search._stale`), and on every storage a trial whose worker process on this machine has
ended is failed and retried as soon as a worker starts or finishes a trial.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from ..errors import ConfigError, LowspaceError

DEFAULT_STORAGE = "lowspace.db"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
URL_FORMS = ("sqlite:///PATH.db", "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB (any SQLAlchemy URL)",
             "journal:PATH", "a path to a .db file")


class StorageError(LowspaceError):
    """A study storage that cannot be opened or a study that cannot be found."""


def normalize_storage(spec: str | Path | None) -> str:
    """The storage URL for a spec (see the module docstring); raises ConfigError for unknown forms."""
    if spec is None or str(spec) == "":
        return f"sqlite:///{Path(DEFAULT_STORAGE).resolve()}"
    text = str(spec)
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        if not path:
            raise ConfigError("storage", text, "journal:PATH needs a file path")
        return "journal:" + str(Path(path).expanduser().resolve())
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if path.suffix in _SQLITE_SUFFIXES:
        return f"sqlite:///{path.resolve()}"
    if path.suffix in _JOURNAL_SUFFIXES:
        return "journal:" + str(path.resolve())
    raise ConfigError("storage", text, "expected one of: " + "; ".join(URL_FORMS))


def display_url(url: str) -> str:
    """The URL with any password hidden."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url.split("@")[-1]


def open_storage(spec: str | Path | None, heartbeat_interval: int | None = 30, grace_period: int | None = None,
                 max_retry: int | None = 2, create: bool = True):
    """An optuna storage for ``spec``.

    Args:
        heartbeat_interval: seconds between heartbeats of running trials (RDB only; None disables).
        grace_period: seconds without heartbeat before a trial is failed (default 4 x interval).
        max_retry: retries of a trial whose worker died (None: no retry).
        create: for SQLite files, whether a missing file may be created (False for reports).
    """
    import optuna
    from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    url = normalize_storage(spec)
    shown = display_url(url)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not create and not path.exists():
            raise StorageError(f"storage {shown}: no such journal file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))  # reads the whole journal
        except OSError as err:
            raise StorageError(f"storage {shown}: cannot open the journal file ({err.strerror})") from None
        except Exception as err:  # noqa: BLE001 - bad JSON, bad UTF-8, or records Optuna cannot replay
            raise StorageError(f"storage {shown}: not a readable Optuna journal file ({_reason(err)}); move it "
                               "aside or give another file") from None
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            if not create and not Path(db).exists():
                raise StorageError(f"storage {shown}: no such study file")
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"storage {shown}: cannot create its folder ({err.strerror})") from None
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    logging.getLogger("optuna").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {}
            if heartbeat_interval:
                kwargs = dict(heartbeat_interval=int(heartbeat_interval),
                              grace_period=int(grace_period or 4 * heartbeat_interval),
                              heartbeat_stale_trial_callback=None if max_retry is None else
                              RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
            storage = _create_rdb(url, engine_kwargs, kwargs)
        if url.startswith("sqlite"):
            _use_wal(storage)
        return storage
    except ModuleNotFoundError as err:
        raise StorageError(f"storage {shown}: the database driver is not installed ({err.name}); for PostgreSQL "
                           "use postgresql+psycopg://... (psycopg 3 is a lowspace dependency)") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy raises many kinds; all mean "cannot open"
        text = str(getattr(err, "orig", None) or err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
        kind = type(err).__name__
        if kind == "ArgumentError" or "Could not parse" in reason or "Can't load plugin" in reason:
            raise StorageError(f"storage {shown}: not a valid storage URL ({reason}); expected one of: "
                               + "; ".join(URL_FORMS)) from None
        raise StorageError(f"storage {shown}: cannot open ({kind}: {reason})") from None


def _create_rdb(url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 5):
    """RDBStorage, retried when another process is creating the same schema at the same moment (workers starting
    together on a new PostgreSQL database: one of them loses the race with a duplicate-key or "already exists"
    error, and the schema is there on its next try)."""
    from optuna.storages import RDBStorage
    for attempt in range(1, attempts):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as err:  # noqa: BLE001 - sqlalchemy's error kinds vary by driver
            text = str(getattr(err, "orig", None) or err)
            if not (type(err).__name__ == "IntegrityError" or "already exists" in text):
                raise
            time.sleep(0.2 * attempt)
    return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)  # the last try: its error is the caller's


def _reason(err: Exception) -> str:
    """The first line of an exception, shortened, with its kind."""
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _use_wal(storage) -> None:
    """Write-ahead logging for SQLite studies: every trial writes a few dozen attributes, and a commit no
    longer waits for a full fsync. A killed process loses nothing; only an OS crash may lose the last
    commits (still a consistent database)."""
    from sqlalchemy import event
    event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # connections opened during set-up reconnect with the pragmas


def study_names(storage) -> list[str]:
    import optuna
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(spec, study_name: str | None = None, storage=None):
    """Open an existing study for reading (reports, export). With one study in the storage, the name may
    be omitted."""
    import optuna
    storage = storage or open_storage(spec, heartbeat_interval=None, create=False)
    names = study_names(storage)
    if study_name is None:
        if len(names) == 1:
            study_name = names[0]
        elif not names:
            raise StorageError(f"storage {display_url(normalize_storage(spec))}: holds no study")
        else:
            raise StorageError(f"storage {display_url(normalize_storage(spec))} holds several studies; pick one "
                               "with --study-name: " + ", ".join(names))
    if study_name not in names:
        from ..errors import closest
        hint = closest(study_name, names)
        raise StorageError(f"no study named {study_name!r} in {display_url(normalize_storage(spec))}"
                           + (f"; did you mean {hint!r}?" if hint else "")
                           + " (studies: " + (", ".join(names) or "none") + ")")
    return optuna.load_study(study_name=study_name, storage=storage)
