"""The worker loop: run trials of the shared study until it has ``n_trials`` complete ones.

Only COMPLETE trials count (rejected, stopped and failed ones do not). Optuna's ``MaxTrialsCallback``
stops a worker once enough trials are complete or, where trials beat (RDB storages), complete or
running elsewhere; the worker then waits for the running ones and takes over any that fail, since the
heartbeat fails a dead worker's trial and enqueues its retry. A race between workers can add at most
workers - 1 complete trials.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from ._setup import create_or_load_study, storage_for, uses_heartbeat
from .settings import SearchConfig
from .space import SearchSpace, load_space
from .storage import display_url, normalize_storage
from .trial import Engines, TrialPipeline


@dataclass
class SearchSummary:
    """What a search (or one worker) did."""

    study_name: str
    storage: str
    n_trials: int
    states: dict[str, int] = field(default_factory=dict)
    ran: int = 0
    stopped_reason: str = ""

    @property
    def complete(self) -> int:
        return self.states.get("COMPLETE", 0)


def count_states(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (COMPLETE, RUNNING, WAITING, PRUNED, FAIL)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


class _AttemptCap:
    """Stops the study once ``cap`` trials have been started (WAITING ones, enqueued but not run, aside)."""

    def __init__(self, cap: int):
        self.cap = cap

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        started = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=started)) >= self.cap:
            study.stop()


def _stop_reason(states: dict[str, int], config: SearchConfig, deadline: float | None) -> str:
    if states.get("COMPLETE", 0) >= config.n_trials:
        return "reached n_trials"
    attempts = sum(v for k, v in states.items() if k != "WAITING")
    if attempts >= config.attempts_cap:
        return (f"gave up after {attempts} trials: too many candidates were rejected, stopped or failed (raise "
                "max_attempts or relax the constraints)")
    if deadline is not None and time.monotonic() > deadline:
        return "timeout"
    return ""


def _fail_stale(study: optuna.Study) -> None:
    """Fail the running trials of dead workers now (Optuna does it only when a trial starts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(config: SearchConfig, worker_index: int = 0, engines: Engines | None = None, data: Any = None,
               on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               space: SearchSpace | None = None, poll_s: float | None = None, storage=None) -> SearchSummary:
    """Run trials until the study has ``config.n_trials`` complete ones (or the attempt cap / timeout).

    ``on_trial(study, frozen_trial)`` is called after every trial this worker runs.
    """
    space = space or load_space(config.space)
    storage = storage if storage is not None else storage_for(config)
    study = create_or_load_study(config, space, storage, worker_index, enqueue=worker_index == 0)
    pipeline = TrialPipeline(space, config, engines=engines, data=data)
    _ = pipeline.data  # a missing data set is one clear error now, not a failure in every trial
    summary = SearchSummary(study.study_name, display_url(normalize_storage(config.storage)), config.n_trials)
    poll = poll_s if poll_s is not None else min(5.0, float(config.heartbeat.heartbeat_interval))
    deadline = None if config.timeout_s is None else time.monotonic() + config.timeout_s
    heartbeat = uses_heartbeat(storage)
    counted = (TrialState.COMPLETE, TrialState.RUNNING) if heartbeat else (TrialState.COMPLETE,)

    def ran(st: optuna.Study, frozen: FrozenTrial) -> None:
        summary.ran += 1
        if on_trial is not None:
            on_trial(st, frozen)

    callbacks = [ran, MaxTrialsCallback(config.n_trials, states=counted), _AttemptCap(config.attempts_cap)]
    while True:
        _fail_stale(study)
        states = count_states(study)
        summary.stopped_reason = _stop_reason(states, config, deadline)
        if summary.stopped_reason:
            break
        if heartbeat and states.get("COMPLETE", 0) + states.get("RUNNING", 0) >= config.n_trials:
            time.sleep(poll)  # the last trials are running elsewhere; take over if one of them fails
            continue
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        study.optimize(pipeline, timeout=timeout, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
    summary.states = count_states(study)
    return summary
