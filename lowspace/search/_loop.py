"""The worker loop: run trials of the shared study until it has ``n_trials`` complete ones (or its trials have
spent ``budget_gpu_s``, see :mod:`._budget`).

Only counted trials count (:func:`~._accounting.counted_trials`: complete, one per architecture; rejected,
stopped, duplicate and failed ones do not). A worker stops starting trials once enough are counted or
running elsewhere (under promotion: running on the last rung); it then waits for the running ones and
takes over any that a dead worker left, since such a trial is failed and queued again (:mod:`._stale`). A
race between workers can add at most workers - 1 complete trials.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._accounting import counted_trials, outcome_counts
from ._budget import StopWhenSpent, budget_reason
from ._promotion import running_top
from ._setup import create_or_load_study, seed_sampler, storage_for
from ._stale import LivenessStamp, has_optuna_heartbeat, recover_stale
from .settings import SearchConfig
from .space import SearchSpace
from .storage import display_url, normalize_storage
from .trial import Engines, TrialPipeline

# how a search stopped (SearchSummary.stop); the first four are what the user asked for
FINISHED = ("n_trials", "timeout", "max_attempts", "budget")


@dataclass
class SearchSummary:
    """What a search (or one worker) did. ``stop`` is how it stopped (:data:`FINISHED`, ``gave_up``,
    ``workers_failed`` or ``workers_stopped``), ``stopped_reason`` the same in a sentence with the counts,
    ``outcomes`` the trials per outcome (:func:`~._accounting.outcome_counts`), ``notes`` what the user
    should know (recovered trials, a rebuilt measurement cache, a study made again)."""

    study_name: str
    storage: str
    n_trials: int
    states: dict[str, int] = field(default_factory=dict)
    ran: int = 0
    stopped_reason: str = ""
    stop: str = ""
    outcomes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> int:
        """Counted complete trials (duplicates left out)."""
        return self.outcomes["complete"] if self.outcomes else self.states.get("COMPLETE", 0)

    @property
    def ok(self) -> bool:
        """Whether the search stopped where it was told to (n_trials, timeout, max_attempts, budget)."""
        return self.stop in FINISHED


def count_states(study: optuna.Study) -> dict[str, int]:
    """Number of trials per Optuna state name (COMPLETE, RUNNING, WAITING, PRUNED, FAIL)."""
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


class _EnoughTrials:
    """Stops a worker's ``optimize`` once ``n`` trials are counted or running elsewhere (``running``)."""

    def __init__(self, n: int, running: Callable[[optuna.Study], int]):
        self.n, self.running = n, running

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if len(counted_trials(study)) + self.running(study) >= self.n:
            study.stop()


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def stop_reason(study: optuna.Study, config: SearchConfig, deadline: float | None) -> tuple[str, str]:
    """(kind, sentence) if the search must stop starting trials, else ("", "")."""
    outcomes = outcome_counts(study)
    done, n = outcomes["complete"], config.n_trials
    tally = _tally(outcomes)
    progress = f"{done} of {n} complete trials{tally}"
    if done >= n:
        return "n_trials", f"reached n_trials: {done} complete trials{tally}"
    attempts = sum(v for k, v in outcomes.items() if k != "waiting")
    if attempts >= config.attempts_cap:
        if config.max_attempts:
            return "max_attempts", f"stopped at max_attempts ({attempts} trials started) with {progress}"
        return "gave_up", (f"gave up after {attempts} trials with {progress}: too many candidates were rejected, "
                           "stopped early, duplicates (a small space runs out of new architectures) or failed; "
                           "relax the constraints or raise max_attempts")
    spent = budget_reason(study, config.budget_gpu_s)
    if spent:
        return "budget", f"stopped: {spent}, with {progress}"
    if deadline is not None and time.monotonic() > deadline:
        return "timeout", f"stopped at the {config.timeout_s:g} s timeout with {progress}"
    return "", ""


def _tally(outcomes: dict[str, int]) -> str:
    names = {"rejected": "rejected", "stopped": "stopped early", "duplicate": "duplicates", "failed": "failed",
             "running": "still running"}
    parts = [f"{outcomes[k]} {names[k]}" for k in names if outcomes.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


class _Objective:
    """The trial pipeline plus what a worker records on every trial: its sampler seed and, where Optuna's
    heartbeat does not watch the storage, a liveness stamp (:class:`~._stale.LivenessStamp`)."""

    def __init__(self, pipeline: TrialPipeline, seed: int | None, stamp_s: float | None):
        self.pipeline, self.seed, self.stamp_s = pipeline, seed, stamp_s

    def __call__(self, trial: optuna.Trial):
        trial.set_user_attr("sampler_seed", self.seed)
        if not self.stamp_s:
            return self.pipeline(trial)
        with LivenessStamp(trial, self.stamp_s):
            return self.pipeline(trial)


def run_worker(config: SearchConfig, worker_index: int = 0, engines: Engines | None = None, data: Any = None,
               on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               space: SearchSpace | None = None, poll_s: float | None = None, storage=None,
               notify: Callable[[str], None] | None = None, deadline: float | None = None,
               study: optuna.Study | None = None) -> SearchSummary:
    """Run trials until the study has ``config.n_trials`` complete ones (or the attempt cap / timeout).

    ``on_trial(study, frozen_trial)`` is called after every trial this worker runs, ``notify(text)`` with
    every note (also kept in the summary). ``deadline`` (``time.monotonic()``) replaces the one that
    ``config.timeout_s`` sets from now. ``study``: the study already created or resumed in this process
    (by default the worker opens it itself, with the same checks).
    """
    space = space or config.search_space()
    pipeline = TrialPipeline(space, config, engines=engines, data=data)
    _ = pipeline.data  # a missing data set is one clear error now, not a failure in every trial
    storage = storage if storage is not None else storage_for(config)
    notes: list[str] = []
    if study is None:
        study = create_or_load_study(config, space, storage, worker_index, enqueue=worker_index == 0, notes=notes)
    summary = SearchSummary(study.study_name, display_url(normalize_storage(config.storage)), config.n_trials)

    def tell(lines: list[str]) -> None:
        summary.notes.extend(lines)
        for line in lines if notify is not None else ():
            notify(line)

    tell(notes)
    hb = config.heartbeat
    grace = float(hb.grace_period or 4 * hb.heartbeat_interval)
    optuna_beats = has_optuna_heartbeat(storage)
    objective = _Objective(pipeline, seed_sampler(study, config, worker_index),
                           None if optuna_beats else float(hb.heartbeat_interval))
    poll = poll_s if poll_s is not None else min(5.0, float(hb.heartbeat_interval))
    if deadline is None and config.timeout_s is not None:
        deadline = time.monotonic() + config.timeout_s
    ladder = pipeline.ladder  # under promotion only trials on the last rung will be complete
    running = _running if ladder is None else (lambda st: running_top(st, ladder.top))

    def ran(st: optuna.Study, frozen: FrozenTrial) -> None:
        summary.ran += 1
        if on_trial is not None:
            on_trial(st, frozen)
        tell(recover_stale(st, storage, grace, hb.max_retry))

    pipeline.on_wait = lambda: tell(recover_stale(study, storage, grace, hb.max_retry))
    callbacks = [ran, _EnoughTrials(config.n_trials, running), _AttemptCap(config.attempts_cap),
                 StopWhenSpent(config.budget_gpu_s)]
    while True:
        tell(recover_stale(study, storage, grace, hb.max_retry))
        summary.stop, summary.stopped_reason = stop_reason(study, config, deadline)
        if summary.stop:
            break
        if len(counted_trials(study)) + running(study) >= config.n_trials:
            time.sleep(poll)  # the last trials are running elsewhere; take over if one of them fails
            continue
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
    summary.states = count_states(study)
    summary.outcomes = outcome_counts(study)
    return summary
