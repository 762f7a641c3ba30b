"""Successive halving within one proxy run, for Pareto searches with ``early_stopping.kind: halving``
(Optuna cannot prune multi-objective trials). The default, promotion over rungs up to the full schedule, is
:mod:`lowspace.search._promotion`; docs/search.md compares the two.

Asynchronous successive halving with a non-dominated ranking (in the spirit of MO-ASHA, Schmucker et al.
2021): rungs sit at ``min_epochs * eta**k`` epochs. When a trial reaches a rung it is compared with every
other trial of the study that reached the same rung, on (accuracy at that rung, and the cost objectives:
latency, MACs). It goes on if its non-dominated rank is among the best ``1/eta`` of them; otherwise it
stops. Nothing is decided before ``min_peers`` other trials have reached the rung. Rung results live in
the trials' user attributes, so workers on several machines see each other's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from ..pareto import nondominated_ranks

RUNGS_ATTR = "rungs"


@dataclass(frozen=True)
class HalvingSettings:
    """min_epochs: first rung; eta: keep 1/eta per rung; min_peers: rung members needed before stopping."""

    min_epochs: int = 1
    eta: int = 2
    min_peers: int = 4


def rung_epochs(max_epochs: int, settings: HalvingSettings) -> list[int]:
    """Epoch counts at which a trial is compared with its peers (the final epoch is not a rung)."""
    out, e = [], settings.min_epochs
    while e < max_epochs:
        out.append(e)
        e *= settings.eta
    return out


def keep_at_rung(candidate: Sequence[float], peers: Sequence[Sequence[float]], eta: int, min_peers: int) -> bool:
    """Whether ``candidate`` survives a rung.

    Points are objective vectors to minimize (accuracy negated). The ``ceil(n / eta)`` best by
    non-dominated rank survive, ``n`` counting the candidate; ties at the cut-off survive.
    """
    if len(peers) < min_peers:
        return True
    ranks = nondominated_ranks([list(candidate), *map(list, peers)])
    n_keep = max(1, math.ceil(len(ranks) / eta))
    cutoff = sorted(ranks)[n_keep - 1]
    return bool(ranks[0] <= cutoff)


class ParetoHalving:
    """``on_epoch`` callback for ``train_proxy``: records rung accuracy on the trial and returns True
    (stop) when the trial falls out at a rung.

    Args:
        trial: the running optuna trial.
        costs: this trial's cost objectives to minimize (e.g. ``[latency_ms]`` or ``[latency_ms, macs]``).
        cost_of: maps a peer FrozenTrial to its cost vector (None if unknown).
        max_epochs: the proxy schedule's epochs.
        accuracy_of: extracts the accuracy from ``train_proxy``'s per-epoch metrics.
    """

    def __init__(self, trial, costs: Sequence[float], cost_of: Callable, max_epochs: int,
                 settings: HalvingSettings, accuracy_of: Callable[[dict], float | None]):
        self.trial = trial
        self.costs = [float(c) for c in costs]
        self.cost_of = cost_of
        self.settings = settings
        self.rungs = rung_epochs(max_epochs, settings)
        self.accuracy_of = accuracy_of
        self.record: dict[str, float] = {}
        self.stopped_at: int | None = None

    def __call__(self, epochs_done: int, metrics: dict) -> bool:
        if epochs_done not in self.rungs:
            return False
        acc = self.accuracy_of(metrics)
        if acc is None:
            return False
        key = str(epochs_done)
        self.record[key] = float(acc)
        self.trial.set_user_attr(RUNGS_ATTR, dict(self.record))
        peers = []
        study = self.trial.study
        for t in study.get_trials(deepcopy=False):
            if t.number == self.trial.number:
                continue
            acc_r = (t.user_attrs.get(RUNGS_ATTR) or {}).get(key)
            costs = self.cost_of(t)
            if acc_r is None or costs is None:
                continue
            peers.append([-float(acc_r), *costs])
        keep = keep_at_rung([-float(acc), *self.costs], peers, self.settings.eta, self.settings.min_peers)
        if not keep:
            self.stopped_at = epochs_done
        return not keep
