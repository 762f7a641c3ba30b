"""Pareto fronts and hypervolume for minimization problems (flip the sign of objectives to maximize).

Pure numpy, no optuna: the search (successive halving) and the reports share these.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_points(points) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1) if arr.size else arr.reshape(0, 1)
    return arr


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True if ``a`` is no worse than ``b`` everywhere and better somewhere (minimization)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(a <= b) and np.any(a < b))


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, d) array (minimization); duplicates all stay."""
    pts = _as_points(points)
    n = len(pts)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        le = np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1)
        if le.any():
            mask[i] = False
    return mask


def nondominated_ranks(points) -> np.ndarray:
    """Front index of every row (0 = Pareto front, 1 = front once front 0 is removed, ...)."""
    pts = _as_points(points)
    ranks = np.full(len(pts), -1, dtype=int)
    remaining = np.arange(len(pts))
    r = 0
    while remaining.size:
        front = pareto_mask(pts[remaining])
        ranks[remaining[front]] = r
        remaining = remaining[~front]
        r += 1
    return ranks


def hypervolume(points, reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (minimization; points not strictly
    better than the reference in every objective add nothing)."""
    pts = _as_points(points)
    ref = np.asarray(reference, dtype=float)
    if pts.size == 0:
        return 0.0
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = np.unique(pts, axis=0)
    return float(_hv(pts, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    d = pts.shape[1]
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        order = np.argsort(pts[:, 0])
        total, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return total
    # Slice along the last objective: between consecutive levels, the (d-1)-dim volume is constant.
    order = np.argsort(pts[:, -1])
    pts = pts[order]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth <= 0:
            continue
        layer = pts[: i + 1, :-1]
        layer = layer[pareto_mask(layer)]
        total += depth * _hv(layer, ref[:-1])
    return total


def hypervolume_history(points, reference: Sequence[float]) -> list[float]:
    """Hypervolume of the first k points, for k = 1..n (points in trial order)."""
    pts = _as_points(points)
    out, front = [], np.empty((0, pts.shape[1] if pts.ndim == 2 else 1))
    for p in pts:
        front = np.vstack([front, p])
        front = front[pareto_mask(front)]
        out.append(hypervolume(front, reference))
    return out
