"""Pareto math for minimization (negate an objective to maximize it): which points are non-dominated, the
non-dominated sorting rank of every point, and hypervolume. The search (successive halving) and the
reports share it. :func:`reference_point` is the hypervolume reference a study records when it is created,
so that its hypervolume does not depend on the trials it ran.

The computations are moocore's. Optuna's public API gives a front only as ``Study.best_trials`` (a
study's own trials and values) and has no public hypervolume, while lowspace ranks rung results and
normalized report points that are not a study's values.
"""
from __future__ import annotations

from typing import Sequence

import moocore
import numpy as np

__all__ = ["pareto_mask", "nondominated_ranks", "hypervolume", "hypervolume_history", "reference_point",
           "REFERENCE_ATTR", "COST_KEYS"]

REFERENCE_ATTR = "hv_reference"  # the study user attribute holding reference_point()
COST_KEYS = {"latency": "latency_ms", "macs": "macs"}  # cost objective -> its key in a reference point


def _as_points(points) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    return arr


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, d) array; equal points are all kept."""
    pts = _as_points(points)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(pts, keep_weakly=True), dtype=bool)


def nondominated_ranks(points) -> np.ndarray:
    """Front index of every row: 0 for the Pareto front, 1 for the front once front 0 is removed, ..."""
    pts = _as_points(points)
    if len(pts) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(pts), dtype=int)


def hypervolume(points, reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` inside the box bounded by ``reference``; points not strictly better
    than the reference in every objective add nothing."""
    pts = _as_points(points)
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=np.asarray(reference, dtype=float)))


def hypervolume_history(points, reference: Sequence[float]) -> list[float]:
    """Hypervolume of the first k points for k = 1..n (points in trial order)."""
    pts = _as_points(points)
    history, front = [], pts[:0]
    for point in pts:
        front = np.vstack([front, point])
        front = front[pareto_mask(front)]
        history.append(hypervolume(front, reference))
    return history


def reference_point(objectives: Sequence[str], limits: dict[str, float | None] | None = None,
                    declared: dict[str, float | None] | None = None) -> dict:
    """The hypervolume reference of a study, fixed before it runs: accuracy 0 and, for each cost objective
    (``latency`` -> ``latency_ms``, ``macs``), the declared value, else the study's limit on it, else None
    (not known ahead; a report then derives one from the trials and says so). ``source`` names where each
    value came from."""
    limits, declared = limits or {}, declared or {}
    point: dict = {"accuracy": 0.0}
    source = {"accuracy": "accuracy 0"}
    for objective in objectives:
        key = COST_KEYS.get(objective)
        if key is None:
            continue
        if declared.get(key) is not None:
            point[key], source[key] = float(declared[key]), "declared"
        elif limits.get(key) is not None:
            point[key], source[key] = float(limits[key]), "limit"
        else:
            point[key], source[key] = None, "unset"
    point["source"] = source
    return point
