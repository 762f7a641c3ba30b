"""Rank correlations against hand-computed values."""
import math

import pytest

from lowspace.report.stats import kendall_tau, spearman_rho


def test_perfect_and_reversed_orders():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, [10, 20, 30, 40, 50]) == 1.0
    assert kendall_tau(x, [5, 4, 3, 2, 1]) == -1.0
    assert spearman_rho(x, [1, 4, 9, 16, 25]) == pytest.approx(1.0)
    assert spearman_rho(x, [-1, -4, -9, -16, -25]) == pytest.approx(-1.0)


def test_known_values_with_ties():
    # 4 items, one swapped pair out of 6: tau = (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in y: c=5, d=0, ties_y=1 -> 5 / sqrt(5 * 6)
    assert kendall_tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30))
    # Spearman: ranks [1,2,3,4] vs [1,3,2,4]: 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman_rho([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1], [1, 2])
