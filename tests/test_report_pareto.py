"""Non-dominated sorting and hypervolume (minimization)."""
import itertools

import numpy as np
import pytest

from lowspace.report.pareto import dominates, hypervolume, hypervolume_history, nondominated_ranks, pareto_mask
from lowspace.search.halving import HalvingSettings, keep_at_rung, rung_epochs


def test_pareto_mask_and_ranks():
    pts = [[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [2, 2]]
    assert pareto_mask(pts).tolist() == [True, True, True, False, False, True]
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2, 0]
    assert dominates([1, 1], [1, 2]) and not dominates([1, 2], [1, 2]) and not dominates([0, 3], [1, 2])


def test_hypervolume_2d_known_value():
    # staircase of (1,3), (2,2), (3,1) under reference (4,4): 3*1 + 2*1 + 1*1 ... computed by hand = 6
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[1, 3], [2, 2], [3, 1], [3, 3]], [4, 4]) == pytest.approx(6.0)  # dominated adds nothing
    assert hypervolume([[5, 1]], [4, 4]) == 0.0  # outside the reference box
    assert hypervolume(np.empty((0, 2)), [1, 1]) == 0.0


def test_hypervolume_3d_matches_a_grid_count():
    rng = np.random.default_rng(0)
    pts = rng.random((7, 3))
    ref = np.ones(3)
    exact = hypervolume(pts, ref)
    # exact union of boxes by inclusion-exclusion over all subsets (fine for 7 points)
    total = 0.0
    for k in range(1, len(pts) + 1):
        for sub in itertools.combinations(range(len(pts)), k):
            corner = pts[list(sub)].max(axis=0)
            total += (-1) ** (k + 1) * np.prod(ref - corner)
    assert exact == pytest.approx(total, rel=1e-9)


def test_hypervolume_history_is_monotone():
    rng = np.random.default_rng(1)
    pts = rng.random((20, 2))
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
