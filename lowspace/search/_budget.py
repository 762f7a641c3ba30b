"""The GPU-second budget of a study (``budget_gpu_s``): the seconds its trials held their device, counted
from the storage, so that every worker sees the same total.

A trial's GPU-seconds are the wall time of its latency measurement (and throughput run) plus its training:
the sum of its rungs (``rung_gpu_s``, written as each rung ends, so running trials count too) or, without
rungs, the ``train_s`` it records when it finishes. Every state counts (stopped and failed trials spent
their seconds as well), except trials that are waiting to start. Trials that reuse a duplicate's results
spend none.
"""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._promotion import RUNG_GPU_S

BUDGET_SPENT = "GPU-second budget spent"
_MEASURE_KEYS = ("latency_s", "throughput_s")


def trial_gpu_s(trial: FrozenTrial) -> float:
    """Device seconds one trial has spent so far."""
    if trial.state == TrialState.WAITING:
        return 0.0
    attrs = trial.user_attrs
    timings = attrs.get("timings") or {}
    measure = sum(float(timings.get(k) or 0.0) for k in _MEASURE_KEYS)
    rungs = attrs.get(RUNG_GPU_S)
    train = sum(float(v) for v in rungs.values()) if rungs else float(timings.get("train_s") or 0.0)
    return measure + train


def spent_gpu_s(study: optuna.Study) -> float:
    """Device seconds all trials of ``study`` have spent."""
    return sum(trial_gpu_s(t) for t in study.get_trials(deepcopy=False))


def budget_reason(study: optuna.Study, budget_gpu_s: float | None) -> str:
    """Why the study must stop starting trials ("" while the budget lasts, or without one)."""
    if budget_gpu_s is None:
        return ""
    spent = spent_gpu_s(study)
    if spent < budget_gpu_s:
        return ""
    return f"{BUDGET_SPENT} ({spent:.1f} of {budget_gpu_s:g} s)"


class StopWhenSpent:
    """Stops a worker's ``optimize`` after a trial once the budget is spent (trials running elsewhere finish)."""

    def __init__(self, budget_gpu_s: float | None):
        self.budget_gpu_s = budget_gpu_s

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if budget_reason(study, self.budget_gpu_s):
            study.stop()
