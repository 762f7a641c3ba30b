"""Noise-aware comparisons (lowspace.report.significance): standard errors, intervals, the tests behind
"dominates" and "within noise"."""
import math

import pytest
from scipy import stats

from lowspace.report.significance import (DOMINATED, DOMINATES, TRADE_OFF, WITHIN_NOISE, Accuracy, accuracy_scale,
                                          binomial_se, compare, compare_accuracy, compare_latency, compare_means,
                                          mean_interval)


def test_binomial_standard_error_and_scale():
    assert binomial_se(90.0, 10_000) == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 10_000))  # 0.3 points
    assert binomial_se(0.9, 3_000, scale=1.0) == pytest.approx(math.sqrt(0.09 / 3_000))
    assert math.isnan(binomial_se(90.0, None))
    assert accuracy_scale([85.0, 91.2]) == 100.0 and accuracy_scale([0.85, 0.91]) == 1.0


def test_accuracy_over_seeds_mean_std_interval():
    acc = Accuracy((90.0, 91.0, 92.0), images=10_000)
    assert acc.mean == pytest.approx(91.0) and acc.std == pytest.approx(1.0)
    low, high = acc.interval(0.95)
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (low, high) == pytest.approx((91.0 - half, 91.0 + half))
    text = acc.describe()
    assert "91.00% ± 1.00 (3 seeds; 95 % CI" in text and "binomial SE 0.29 on 10,000 images" in text
    assert Accuracy((96.0, 100.0)).interval()[1] == 100.0  # an accuracy interval ends at 100 %
    one = Accuracy((90.0,), images=None)
    assert math.isnan(one.std) and all(math.isnan(v) for v in one.interval()) and "1 seed" in one.describe()


def test_welch_on_seeds_decides_dominance():
    a = Accuracy((91.0, 91.2, 91.1), images=10_000)
    b = Accuracy((89.0, 89.3, 89.1), images=10_000)
    c = compare(a, 1.0, 0.01, b, 2.0, 0.01)
    assert c.accuracy.test.startswith("Welch")
    assert c.accuracy.p_value == pytest.approx(stats.ttest_ind(a.values, b.values, equal_var=False).pvalue)
    assert c.verdict == DOMINATES and "dominates" in c.sentence("t3", "b1")
    assert compare(b, 2.0, 0.01, a, 1.0, 0.01).verdict == DOMINATED
    # the same means with a large seed spread: not significant
    noisy = Accuracy((88.0, 94.0, 91.3), images=10_000)
    c = compare(noisy, 1.0, 0.01, b, 2.0, 0.01)
    sentence = c.sentence("t3", "b1")
    assert c.verdict == WITHIN_NOISE and "within noise" in sentence and "is faster" in sentence
    # significant accuracy gain but significantly slower: neither dominates
    assert compare(a, 3.0, 0.01, b, 2.0, 0.01).verdict == TRADE_OFF


def test_one_seed_uses_the_binomial_test_on_the_evaluation_images():
    # 0.8 points on 3,000 images: SE of the difference about 0.73 points, z about 1.1
    a, b = Accuracy((90.8,), images=3_000), Accuracy((90.0,), images=3_000)
    t = compare_accuracy(a, b)
    se = math.hypot(binomial_se(90.8, 3_000), binomial_se(90.0, 3_000))
    assert t.test == "binomial test on 3,000 images"
    assert t.p_value == pytest.approx(2 * stats.norm.sf(0.8 / se)) and not t.significant
    assert compare(a, 1.0, 0.0, b, 2.0, 0.0).verdict == WITHIN_NOISE
    # the same difference on 100,000 images is significant; a lower level makes more differences significant
    big = compare_accuracy(Accuracy((90.8,), 100_000), Accuracy((90.0,), 100_000))
    assert big.significant and big.p_value < 0.001
    z = 0.8 / se
    assert compare_accuracy(a, b, level=0.5).significant == (2 * stats.norm.sf(z) < 0.5)
    # without an evaluation-set size nothing can be claimed
    untested = compare_accuracy(Accuracy((95.0,)), Accuracy((50.0,)))
    assert untested.p_value is None and not untested.significant and "untested" in untested.test


def test_means_over_seeds_by_welch():
    hv_a, hv_b = [0.834, 0.829, 0.838], [0.797, 0.796, 0.801]
    t = compare_means(hv_a, hv_b)
    assert t.difference == pytest.approx(sum(hv_a) / 3 - sum(hv_b) / 3) and t.significant
    assert t.p_value == pytest.approx(stats.ttest_ind(hv_a, hv_b, equal_var=False).pvalue)
    assert t.describe("", "hypervolume", 4).startswith("hypervolume +0.0357 (Welch's t-test, 3 + 3 seeds, p = ")
    assert not compare_means([0.83, 0.80, 0.86], [0.82, 0.81, 0.80]).significant  # the spread swamps it
    assert compare_means([0.83], [0.80, 0.81]) is None and compare_means([0.8, 0.8], [0.8, 0.8]) is None


def test_latency_inside_the_spread_is_noise():
    assert compare_latency(1.00, 0.02, 1.015, 0.02) == WITHIN_NOISE
    assert compare_latency(1.00, 0.02, 1.10, 0.02) == "faster"
    assert compare_latency(1.10, 0.02, 1.00, None) == "slower"
    # significantly more accurate, latency equal within the spread: dominates
    a, b = Accuracy((92.0, 92.1), 10_000), Accuracy((90.0, 90.2), 10_000)
    assert compare(a, 1.0, 0.05, b, 0.98, 0.05).verdict == DOMINATES


def test_mean_interval_over_search_seeds():
    mean, low, high = mean_interval([0.50, 0.52, 0.54])
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.52, 0.52 - half, 0.52 + half))
    mean, low, high = mean_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
