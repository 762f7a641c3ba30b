"""What a study's trials count as: one complete trial per architecture, duplicates kept out.

A candidate whose architecture the study already has (evaluated, or running in another worker) is not
evaluated again: its trial ends as FAIL with status ``duplicate`` and ``duplicate_of`` naming the original.
FAIL keeps it out of every sampler's model (the original already tells the sampler what that point is
worth) and out of every count of complete trials, plot and hypervolume. Studies made before this rule
kept duplicates as COMPLETE copies with ``duplicate_of``; :func:`is_duplicate` recognises both.

Reports and tools should count through :func:`counted_trials` and :func:`is_duplicate`.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import LowspaceError

DUPLICATE = "duplicate"
FAILED = "failed"  # the status a worker sets on a trial it ends as failed (an error of its own)
EVALUATED = ("complete", "rejected", "stopped")  # statuses whose results a duplicate may point to
CHECKING = "dedup"  # the stage of a trial while it looks for an original
WAITING = "dedup-wait"  # ... and while it waits for an original running elsewhere to end
OUTCOMES = ("complete", "rejected", "stopped", "duplicate", "failed", "running", "waiting")


class DuplicateTrial(LowspaceError):
    """The candidate's architecture is already in the study; the trial ends as FAIL with ``duplicate_of``."""


def is_duplicate(trial: FrozenTrial) -> bool:
    """Whether ``trial`` repeats an architecture of an earlier trial (in any lowspace version)."""
    a = trial.user_attrs
    return a.get("status") == DUPLICATE or a.get("duplicate_of") is not None


def abandoned(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was failed by the study because its worker stopped without ending it (killed, its
    machine gone): FAIL, neither a duplicate nor failed by lowspace itself. Its finish time is when the
    study noticed, not when it stopped running; the seconds it recorded are what it ran."""
    return (trial.state == TrialState.FAIL and not is_duplicate(trial)
            and trial.user_attrs.get("status") != FAILED)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials that count: COMPLETE, not a duplicate, the first trial of each architecture.

    This is the number a study's ``n_trials`` is compared with, the progress bar shows and the reports'
    fronts and hypervolume are made of."""
    seen: set[str] = set()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch_id")
        if is_duplicate(t) or arch in seen:
            continue
        if arch is not None:
            seen.add(arch)
        out.append(t)
    return out


def outcome_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per outcome: complete (as :func:`counted_trials`), rejected, stopped (early), duplicate,
    failed, running, waiting."""
    counted = {t.number for t in counted_trials(study)}
    out = dict.fromkeys(OUTCOMES, 0)
    for t in study.get_trials(deepcopy=False):
        out[_outcome(t, counted)] += 1
    return out


def _outcome(t: FrozenTrial, counted: set[int]) -> str:
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.number in counted:
        return "complete"
    if is_duplicate(t) or t.state == TrialState.COMPLETE:
        return "duplicate"  # a COMPLETE trial not counted repeats an earlier one's architecture
    if t.state == TrialState.PRUNED:
        return "rejected" if t.user_attrs.get("status") == "rejected" else "stopped"
    return "failed"


def find_original(trial: optuna.Trial, arch_id: str, on_wait: Callable[[], None] | None = None,
                  wait_s: float = 10.0, poll_s: float = 0.05):
    """The trial whose architecture ``trial`` repeats, or None if ``trial`` is to evaluate it.

    An original is an evaluated trial (complete, rejected, stopped early) of ``arch_id``, or one running in
    another worker; ``trial`` waits for a running original to end (calling ``on_wait`` now and then, so that
    a dead worker's trial is found and failed) and evaluates the architecture itself if that one failed.
    Between running trials the lower number wins, as in Lamport's bakery: a trial waits (at most
    ``wait_s``) for lower-numbered trials still choosing their architecture, and for higher-numbered ones of
    the same architecture still checking, so that two workers drawing one architecture at once train it
    once. The caller records ``arch_id`` and the ``CHECKING`` stage first.
    """
    deadline = time.monotonic() + wait_s
    while True:
        evaluated, running, pending = _scan(trial, arch_id)
        if evaluated is not None:
            return evaluated
        if running is not None:
            trial.set_user_attr("stage", WAITING)
            ended = _wait_for(trial.study, running.number, on_wait, poll_s)
            if ended is not None:
                return ended
            trial.set_user_attr("stage", CHECKING)
            deadline = time.monotonic() + wait_s
            continue  # the original failed: look again (another waiter may go first)
        if not pending or time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def _wait_for(study: optuna.Study, number: int, on_wait, poll_s: float, every_s: float = 5.0):
    """Wait until trial ``number`` ends; returns it if it was evaluated, None if it failed."""
    last = time.monotonic()
    while True:
        t = study.get_trials(deepcopy=False)[number]
        if t.state.is_finished():
            return t if t.state != TrialState.FAIL and t.user_attrs.get("status") in EVALUATED else None
        if on_wait is not None and time.monotonic() - last > every_s:
            on_wait()
            last = time.monotonic()
        time.sleep(max(poll_s, 0.5))


def _scan(trial: optuna.Trial, arch_id: str) -> tuple[FrozenTrial | None, FrozenTrial | None, bool]:
    """(an evaluated original, a running original, whether to wait for trials still deciding)."""
    me = trial.number
    evaluated = running = None
    pending = False
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.RUNNING)):
        a = t.user_attrs
        if t.number == me or is_duplicate(t):
            continue
        if t.state == TrialState.RUNNING and a.get("arch_id") is None:
            pending |= t.number < me and _recent(t)  # still choosing its architecture
            continue
        if a.get("arch_id") != arch_id:
            continue
        if t.state != TrialState.RUNNING:
            if a.get("status") in EVALUATED and evaluated is None:
                evaluated = t
        elif t.number < me or a.get("stage") not in (None, CHECKING, WAITING):
            running = running or t
        elif a.get("stage") != WAITING:
            pending = True  # a later trial of this architecture, still checking: it yields to this one
    return evaluated, running, pending


def _recent(t: FrozenTrial, within_s: float = 60.0) -> bool:
    """Started less than ``within_s`` ago (a trial choosing for longer belongs to a dead or stuck worker)."""
    start = t.datetime_start
    return start is not None and (datetime.now() - start).total_seconds() < within_s
