"""Trials left RUNNING by workers that died: found, failed and queued again, and the user told.

RDB storages (SQLite, PostgreSQL) have Optuna's heartbeat: a trial whose worker stops beating for the
grace period is failed and retried (``RetryHeartbeatStaleTrialCallback``). Optuna's journal storage has
no heartbeat, so a lowspace worker stamps its running trial (``alive_at``, every heartbeat interval) and a
journal trial without a stamp for the grace period is failed and retried the same way. On every storage,
a trial whose worker ran on this machine in a process that no longer exists is failed at once. Workers
run :func:`recover_stale` when they start and between trials.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._accounting import abandoned

ALIVE_ATTR = "alive_at"


def has_optuna_heartbeat(storage) -> bool:
    """Whether Optuna's own heartbeat watches the trials of ``storage`` (RDB storages opened with one)."""
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def process_gone(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid``, as trials record it) ran on this machine in a process that has
    ended. False for other machines and for what cannot be told."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    try:  # a killed child not yet reaped by its parent still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def last_sign_of_life(t: FrozenTrial) -> float:
    """The latest of a trial's start and its ``alive_at`` stamp (seconds since the epoch)."""
    start = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return max(float(t.user_attrs.get(ALIVE_ATTR) or 0.0), start)


def recover_stale(study: optuna.Study, storage, grace_period_s: float, max_retry: int | None) -> list[str]:
    """Fail the RUNNING trials of dead workers and queue them again (up to ``max_retry`` times per trial);
    returns one line per trial recovered."""
    optuna_beats = has_optuna_heartbeat(storage)
    if optuna_beats:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    notes = []
    if optuna_beats:  # failed by the heartbeat, not ended by its worker
        trials = study.get_trials(deepcopy=False)
        retried = {r.system_attrs.get("failed_trial") for r in trials} | \
            {n for r in trials for n in r.system_attrs.get("retry_history") or ()}
        failed = [t for t in trials if t.number in running and abandoned(t)]
        notes += [f"trial {t.number} (worker {t.user_attrs.get('worker', '?')}) stopped beating: failed"
                  + (" and queued again" if t.number in retried else " (no retries left)") for t in failed]
    now, me = time.time(), f"{socket.gethostname()}:{os.getpid()}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker == me:
            continue  # this process's own trial is alive
        if process_gone(worker):
            why = f"its process {worker} has ended"
        elif not optuna_beats and now - last_sign_of_life(t) > grace_period_s:
            why = f"no sign of life from worker {worker or '?'} for {now - last_sign_of_life(t):.0f} s"
        else:
            continue
        done = _fail_and_retry(study, t.number, max_retry)
        if done:
            notes.append(f"trial {t.number} was left running ({why}): {done}")
    return notes


def _fail_and_retry(study: optuna.Study, number: int, max_retry: int | None) -> str | None:
    """Fail trial ``number`` unless another process finished it first, then queue its retry (within
    ``max_retry``); returns what was done, or None."""
    try:
        failed = study.tell(number, state=TrialState.FAIL)
    except (ValueError, RuntimeError):  # finished meanwhile (by its worker or another recovery)
        return None
    retries = len(failed.system_attrs.get("retry_history") or ()) + 1
    if max_retry is not None and retries > max_retry:
        return "failed (no retries left)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, failed)
    return "failed and queued again"


def running_elsewhere(study: optuna.Study, grace_period_s: float) -> str | None:
    """One line about the trials other workers are running (None if there are none)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return None
    workers = sorted({t.user_attrs.get("worker", "?") for t in running})
    return (f"{len(running)} trial(s) running in other workers ({', '.join(workers[:4])}"
            f"{', ...' if len(workers) > 4 else ''}); if a worker has died, its trial is failed and queued again "
            f"after {grace_period_s:g} s without a sign of life")


class LivenessStamp:
    """Stamps ``alive_at`` on a running trial every ``interval_s`` from a background thread (storages
    without Optuna's heartbeat)."""

    def __init__(self, trial: optuna.Trial, interval_s: float):
        self.trial, self.interval_s = trial, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lowspace-liveness", daemon=True)

    def __enter__(self):
        self.trial.set_user_attr(ALIVE_ATTR, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.trial.set_user_attr(ALIVE_ATTR, time.time())
            except Exception:  # noqa: BLE001 - a missed stamp only makes the trial look older
                pass
