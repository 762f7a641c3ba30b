"""Pareto math (lowspace.pareto) against brute-force definitions, and the halving keep rule built on it."""
import itertools

import numpy as np
import pytest

from lowspace.pareto import hypervolume, hypervolume_history, nondominated_ranks, pareto_mask
from lowspace.search.halving import HalvingSettings, keep_at_rung, rung_epochs


def _dominates(a, b) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def _brute_mask(pts):
    return [not any(_dominates(q, p) for q in pts) for p in pts]


def _brute_ranks(pts):
    ranks, left, r = [-1] * len(pts), list(range(len(pts))), 0
    while left:
        front = [i for i in left if not any(_dominates(pts[j], pts[i]) for j in left)]
        for i in front:
            ranks[i] = r
        left = [i for i in left if i not in front]
        r += 1
    return ranks


def _brute_hypervolume(pts, ref):
    """Union of the boxes [p, ref] by inclusion-exclusion over every subset (fine for a few points)."""
    pts = [p for p in pts if np.all(p < ref)]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for sub in itertools.combinations(pts, k):
            total += (-1) ** (k + 1) * np.prod(ref - np.max(sub, axis=0))
    return total


@pytest.mark.parametrize("dims, seed", [(2, 0), (3, 1), (3, 2), (4, 3)])
def test_fronts_ranks_and_hypervolume_match_brute_force(dims, seed):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 5, size=(9, dims)).astype(float)  # small integers: ties and duplicates happen
    assert pareto_mask(pts).tolist() == _brute_mask(pts)
    assert nondominated_ranks(pts).tolist() == _brute_ranks(pts)
    ref = np.full(dims, 4.5)
    assert hypervolume(pts, ref) == pytest.approx(_brute_hypervolume(pts, ref), rel=1e-12)


def test_known_values_and_edge_cases():
    pts = [[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [2, 2]]
    assert pareto_mask(pts).tolist() == [True, True, True, False, False, True]  # equal points all stay
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2, 0]
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)  # a staircase, by hand
    assert hypervolume([[5, 1], [4, 1]], [4, 4]) == 0.0  # not strictly inside the reference box
    assert hypervolume(np.empty((0, 2)), [1, 1]) == 0.0
    assert pareto_mask(np.empty((0, 2))).tolist() == [] and nondominated_ranks([]).tolist() == []


def test_hypervolume_history_grows_to_the_total():
    pts = np.random.default_rng(1).random((20, 2))
    hist = hypervolume_history(pts, [1, 1])
    assert len(hist) == 20 and all(b >= a - 1e-12 for a, b in zip(hist, hist[1:]))
    assert hist[-1] == pytest.approx(hypervolume(pts, [1, 1]))
    assert hist[0] == pytest.approx(np.prod(1 - pts[0]))


def test_rungs_and_keep_rule():
    assert rung_epochs(8, HalvingSettings(1, 2, 4)) == [1, 2, 4]
    assert rung_epochs(9, HalvingSettings(1, 3, 4)) == [1, 3]
    assert rung_epochs(1, HalvingSettings(1, 2, 4)) == []
    peers = [[-0.9, 5.0], [-0.8, 3.0], [-0.7, 1.0], [-0.6, 0.5]]
    assert keep_at_rung([-0.95, 6.0], peers, eta=2, min_peers=4)  # on the front
    assert not keep_at_rung([-0.5, 6.0], peers, eta=2, min_peers=4)  # dominated by everyone
    assert keep_at_rung([-0.5, 6.0], peers[:3], eta=2, min_peers=4)  # too few peers to judge
