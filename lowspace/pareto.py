"""Pareto math for minimization (negate an objective to maximize it): which points are non-dominated, the
non-dominated sorting rank of every point, and hypervolume. The search (successive halving) and the
reports share it.

The computations are moocore's. Optuna's public API gives a front only as ``Study.best_trials`` (a
study's own trials and values) and has no public hypervolume, while lowspace ranks rung results and
normalized report points that are not a study's values.
"""
from __future__ import annotations

from typing import Sequence

import moocore
import numpy as np

__all__ = ["pareto_mask", "nondominated_ranks", "hypervolume", "hypervolume_history"]


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
