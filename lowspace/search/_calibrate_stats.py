"""Statistics of a proxy calibration: rank agreement with bootstrap intervals, the seed ceiling, the
recommendation rule and the knob whose change moved the agreement most."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from ._calibrate_run import EPOCHS, EVAL_EVERY, IMAGES, LR, RESOLUTIONS, SEED, WARMUP

# above this many resampled (n x n) sign matrices the bootstrap works in chunks
_CHUNK_ELEMENTS = 4_000_000
# how each schedule field is named when it is the knob that moved tau most
KNOB_NAMES = {EPOCHS: "epochs", IMAGES: "training-set size per class", RESOLUTIONS: "resolution",
              LR: "learning rate"}


@dataclass(frozen=True)
class Agreement:
    """How two accuracy vectors over the same architectures rank them: Kendall tau-b and Spearman rho,
    each with a bootstrap interval over architectures (``level``, percentile method)."""

    n: int
    tau: float
    tau_low: float
    tau_high: float
    rho: float
    rho_low: float
    rho_high: float
    level: float = 0.95

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled); nan when undefined (fewer than two distinct values)."""
    if len(x) < 2:
        return float("nan")
    return float(sps.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (mean ranks for ties); nan when undefined."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def bootstrap_correlations(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b and Spearman rho of ``resamples`` seeded resamples (with replacement) of the pairs.

    Tau-b of a resample is computed from the pairwise sign matrices: a pair drawn twice is a tie in both
    sequences and drops out, as in scipy's tau-b. Undefined resamples (all values equal) are nan.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    taus, rhos = [], []
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * n))
    for start in range(0, resamples, chunk):
        xs, ys = xa[idx[start:start + chunk]], ya[idx[start:start + chunk]]
        taus.append(_tau_b_rows(xs, ys))
        rhos.append(_pearson_rows(sps.rankdata(xs, axis=1), sps.rankdata(ys, axis=1)))
    return np.concatenate(taus), np.concatenate(rhos)


def _tau_b_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    sx = np.sign(xs[:, :, None] - xs[:, None, :])
    sy = np.sign(ys[:, :, None] - ys[:, None, :])
    num = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt(np.abs(sx).sum(axis=(1, 2)) * np.abs(sy).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    ok = samples[np.isfinite(samples)]
    if len(ok) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    return float(low), float(high)


def agreement(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> Agreement:
    """Rank agreement of ``x`` and ``y`` (paired by position) with bootstrap intervals."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    n = len(x)
    if n < 3:
        nan = float("nan")
        return Agreement(n, kendall_tau(x, y), nan, nan, spearman_rho(x, y), nan, nan, level)
    taus, rhos = bootstrap_correlations(x, y, resamples, seed)
    return Agreement(n, kendall_tau(x, y), *_interval(taus, level), spearman_rho(x, y), *_interval(rhos, level),
                     level)


# ==================================================================== recommendation
@dataclass(frozen=True)
class Candidate:
    """What the recommendation rule needs of a schedule: its tau against the full schedule and its cost."""

    name: str
    tau: float
    cost_share: float


def recommend(candidates: Sequence[Candidate], ceiling: float, target: float, max_cost_share: float
              ) -> Candidate | None:
    """The cheapest candidate whose tau reaches ``target`` x ``ceiling`` at no more than ``max_cost_share``
    of the full schedule's cost (ties: the higher tau); None if none qualifies or the ceiling is not > 0."""
    if not math.isfinite(ceiling) or ceiling <= 0:
        return None
    ok = [c for c in candidates if math.isfinite(c.tau) and math.isfinite(c.cost_share)
          and c.tau >= target * ceiling and c.cost_share <= max_cost_share]
    if not ok:
        return None
    return min(ok, key=lambda c: (c.cost_share, -c.tau))


@dataclass(frozen=True)
class KnobEffect:
    """The largest change of tau between two schedules that differ in one knob only."""

    knob: str
    delta: float
    low: str
    high: str
    low_tau: float
    high_tau: float

    @property
    def label(self) -> str:
        return KNOB_NAMES.get(self.knob, self.knob)

    def describe(self) -> str:
        return f"{self.label}: tau {self.low_tau:.2f} ({self.low}) -> {self.high_tau:.2f} ({self.high})"


def knob_effects(schedules: Mapping[str, Mapping], taus: Mapping[str, float]) -> list[KnobEffect]:
    """Per knob, the pair of schedules differing in that knob only with the largest |tau difference|,
    largest first. A warm-up and an evaluation interval that move with the epochs are part of the epochs
    knob."""
    best: dict[str, KnobEffect] = {}
    names = [n for n in schedules if math.isfinite(taus.get(n, float("nan")))]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            knob = _single_knob(schedules[a], schedules[b])
            if knob is None:
                continue
            lo, hi = (a, b) if taus[a] <= taus[b] else (b, a)
            effect = KnobEffect(knob, taus[hi] - taus[lo], lo, hi, taus[lo], taus[hi])
            if knob not in best or effect.delta > best[knob].delta:
                best[knob] = effect
    return sorted(best.values(), key=lambda e: -e.delta)


def _single_knob(a: Mapping, b: Mapping) -> str | None:
    diff = {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {SEED}
    if EPOCHS in diff:
        diff -= {WARMUP, EVAL_EVERY}
    return next(iter(diff)) if len(diff) == 1 else None
