"""Noise in the numbers a report compares, and comparisons that respect it.

An accuracy is a mean over training seeds evaluated on a finite set of images: :class:`Accuracy` gives its
standard deviation and confidence interval over seeds and the evaluation set's binomial standard error. A
latency carries its measured spread. :func:`compare` says whether one architecture dominates another only
when the accuracy difference is significant at the chosen level (Welch's t-test over seeds when both sides
have at least two, else a two-proportion test on the evaluation images) and the latency difference is not
inside the measured spread; otherwise the accuracy difference is "within noise". docs/reports.md has the
rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

DEFAULT_LEVEL = 0.95

WITHIN_NOISE = "within noise"
DOMINATES = "dominates"
DOMINATED = "is dominated by"
TRADE_OFF = "trade-off"


def accuracy_scale(values: Sequence[float]) -> float:
    """100 when accuracies are percentages (lowspace's training reports them so), 1 for fractions."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return 100.0 if finite and max(finite) > 1.5 else 1.0


def binomial_se(accuracy: float, images: int | None, scale: float = 100.0) -> float:
    """Standard error of an accuracy measured on ``images`` images (in the accuracy's own unit); nan when the
    number of images is unknown."""
    if not images or accuracy is None or not math.isfinite(accuracy):
        return math.nan
    p = min(max(accuracy / scale, 0.0), 1.0)
    return scale * math.sqrt(p * (1.0 - p) / images)


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy of one architecture: one value per training seed, each on ``images`` evaluation images."""

    values: tuple[float, ...]
    images: int | None = None
    scale: float = 100.0

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def seeds(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (nan with one seed)."""
        return float(np.std(self.values, ddof=1)) if self.seeds >= 2 else math.nan

    @property
    def binomial_se(self) -> float:
        """The evaluation set's standard error at the mean accuracy."""
        return binomial_se(self.mean, self.images, self.scale)

    def interval(self, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
        """Student-t confidence interval of the mean over seeds, within 0..scale (nan with one seed)."""
        if self.seeds < 2:
            return math.nan, math.nan
        half = float(sps.t.ppf(0.5 + level / 2, self.seeds - 1)) * self.std / math.sqrt(self.seeds)
        return max(self.mean - half, 0.0), min(self.mean + half, self.scale)

    def describe(self, level: float = DEFAULT_LEVEL) -> str:
        """E.g. ``91.23 ± 0.31 (3 seeds; 95 % CI 90.46-92.00; binomial SE 0.28 on 10,000 images)``."""
        unit = "%" if self.scale == 100 else ""
        if self.seeds >= 2:
            low, high = self.interval(level)
            text = (f"{self.mean:.2f}{unit} ± {self.std:.2f} ({self.seeds} seeds; {level * 100:g} % CI "
                    f"{low:.2f}-{high:.2f}")
        else:
            text = f"{self.mean:.2f}{unit} (1 seed"
        if self.images:
            text += f"; binomial SE {self.binomial_se:.2f} on {self.images:,} images"
        return text + ")"


@dataclass(frozen=True)
class DifferenceTest:
    """A difference a - b (of accuracies, or of hypervolumes over search seeds) and whether it is significant."""

    difference: float
    p_value: float | None
    test: str
    significant: bool

    def describe(self, unit: str = " points", what: str = "accuracy", digits: int = 2) -> str:
        p = f", p = {self.p_value:.2g}" if self.p_value is not None else ""
        return f"{what} {self.difference:+.{digits}f}{unit} ({self.test}{p})"


def compare_means(a: Sequence[float], b: Sequence[float], level: float = DEFAULT_LEVEL) -> DifferenceTest | None:
    """mean(a) - mean(b) by Welch's t-test over seeds; None with fewer than two values a side or no spread."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
    if not math.isfinite(p):
        return None
    return DifferenceTest(float(np.mean(a) - np.mean(b)), p, f"Welch's t-test, {len(a)} + {len(b)} seeds",
                          p < 1.0 - level)


def compare_accuracy(a: Accuracy, b: Accuracy, level: float = DEFAULT_LEVEL) -> DifferenceTest:
    """Welch's t-test over seeds when both have at least two (and some spread); otherwise a two-sided
    two-proportion test on the evaluation images (their binomial standard errors); untested when neither
    applies (one seed and an unknown number of images)."""
    if (welch := compare_means(a.values, b.values, level)) is not None:
        return welch
    diff = a.mean - b.mean
    se = math.hypot(a.binomial_se, b.binomial_se)
    if math.isfinite(se) and se > 0:
        p = float(2 * sps.norm.sf(abs(diff) / se))
        images = f"{a.images:,}" if a.images == b.images else f"{a.images:,} / {b.images:,}"
        return DifferenceTest(diff, p, f"binomial test on {images} images", p < 1.0 - level)
    return DifferenceTest(diff, None, "untested: one seed and no evaluation-set size", False)


def compare_latency(a_ms: float, a_spread: float | None, b_ms: float, b_spread: float | None) -> str:
    """``faster``, ``slower`` or ``within noise``: a difference no larger than either measurement's spread
    (``(max - min) / median`` of its timing window, times its median) is noise."""
    noise = max((a_spread or 0.0) * a_ms, (b_spread or 0.0) * b_ms)
    if abs(a_ms - b_ms) <= noise or a_ms == b_ms:
        return WITHIN_NOISE
    return "faster" if a_ms < b_ms else "slower"


@dataclass(frozen=True)
class Comparison:
    """Architecture a against b: the accuracy test, the latency relation and the verdict (``dominates``,
    ``is dominated by``, ``trade-off`` or ``within noise``)."""

    accuracy: DifferenceTest
    latency: str
    a_ms: float
    b_ms: float
    verdict: str

    def sentence(self, a: str, b: str) -> str:
        """One line, e.g. ``t12 dominates b1: accuracy +1.40 points (Welch's ..., p = 0.003); 0.81 vs 1.02 ms``."""
        lat = f"{self.a_ms:.3g} vs {self.b_ms:.3g} ms"
        if self.verdict == WITHIN_NOISE:
            return f"{a} vs {b}: within noise ({self.accuracy.describe()}); {a} {self.latency_words()} ({lat})"
        return f"{a} {self.verdict} {b}: {self.accuracy.describe()}; {lat}"

    def latency_words(self) -> str:
        return {"faster": "is faster", "slower": "is slower"}.get(self.latency, "has the same latency within noise")


def compare(a: Accuracy, a_ms: float, a_spread: float | None, b: Accuracy, b_ms: float, b_spread: float | None,
            level: float = DEFAULT_LEVEL) -> Comparison:
    """Compare two architectures (see the module docstring): ``dominates`` needs a significantly higher
    accuracy and a latency that is not slower beyond the spread."""
    acc = compare_accuracy(a, b, level)
    lat = compare_latency(a_ms, a_spread, b_ms, b_spread)
    if not acc.significant:
        verdict = WITHIN_NOISE
    elif acc.difference > 0:
        verdict = DOMINATES if lat != "slower" else TRADE_OFF
    else:
        verdict = DOMINATED if lat != "faster" else TRADE_OFF
    return Comparison(acc, lat, float(a_ms), float(b_ms), verdict)


def mean_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (e.g. one hypervolume per search seed); the
    interval is nan with fewer than two values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(vals))
    if len(vals) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, len(vals) - 1)) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals))
    return mean, mean - half, mean + half


__all__ = ["Accuracy", "Comparison", "DEFAULT_LEVEL", "DifferenceTest", "accuracy_scale", "binomial_se", "compare",
           "compare_accuracy", "compare_latency", "compare_means", "mean_interval"]
