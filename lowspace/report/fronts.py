"""Front statistics of one or more studies against one hypervolume reference point.

The reference point is the one the studies recorded when they were created (:func:`lowspace.pareto.
reference_point`): accuracy 0 and, for latency (and MACs), the declared value or the study's limit, so a
study's hypervolume does not depend on what it or another study happened to sample. Where a study recorded
none (made before lowspace recorded one, or without a limit or a declared value), the fallback is 1.1 x the
slowest (largest) complete, feasible trial over all the studies in the report, and the report says so.

Hypervolume is normalized: accuracy maps to ``(scale - acc) / (scale - ref)`` (scale 100 for percentages),
each cost to ``value / ref``, so the reference is (1, ..., 1), a perfect point 0 and the volume lies in [0, 1].
Several studies of one search with different seeds give each statistic as a mean with a confidence interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..pareto import COST_KEYS, REFERENCE_ATTR, hypervolume, hypervolume_history
from .significance import DEFAULT_LEVEL, accuracy_scale, mean_interval
from .tables import candidates, objective_matrix

FALLBACK_FACTOR = 1.1
STATISTICS = ("hypervolume", "front_size", "best_accuracy", "min_latency_ms")


@dataclass(frozen=True)
class Reference:
    """The hypervolume reference point of a report: the worst accuracy and costs that still count."""

    accuracy: float
    costs: dict[str, float]
    accuracy_scale: float = 100.0
    fixed: bool = True
    notes: tuple[str, ...] = ()

    def normalize(self, df: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
        """Complete, feasible, distinct trials of ``df`` in trial order as normalized minimization points."""
        cand = candidates(df).sort_values("number") if not df.empty else df
        if cand.empty:
            return np.empty((0, len(objectives)))
        mat = objective_matrix(cand, objectives)
        out = np.empty_like(mat)
        for j, objective in enumerate(objectives):
            if objective == "accuracy":
                out[:, j] = (self.accuracy_scale + mat[:, j]) / (self.accuracy_scale - self.accuracy)
            else:
                out[:, j] = mat[:, j] / self.costs[COST_KEYS[objective]]
        return out[~np.isnan(out).any(axis=1)]

    def describe(self) -> str:
        unit = " %" if self.accuracy_scale == 100 else ""
        parts = [f"accuracy {self.accuracy:g}{unit}"]
        parts += [f"latency {v:.4g} ms" if k == "latency_ms" else f"{k} {v:.4g}" for k, v in self.costs.items()]
        return ", ".join(parts) + ("" if self.fixed else " (partly derived from the trials)")


def resolve_reference(studies: Mapping[str, object], frames: Mapping[str, pd.DataFrame], objectives: Sequence[str],
                      override: Mapping[str, float] | None = None) -> Reference:
    """The one reference point for every study in a report: ``override`` (e.g. ``--reference``), else what
    the first study recorded (the others are checked against it), else the fallback (module docstring)."""
    override = dict(override or {})
    recorded = {name: study.user_attrs.get(REFERENCE_ATTR) for name, study in studies.items()}
    first = next(iter(recorded.values()), None) or {}
    notes: list[str] = []
    costs: dict[str, float] = {}
    fixed = True
    for objective in objectives:
        key = COST_KEYS.get(objective)
        if key is None:
            continue
        if override.get(key) is not None:
            costs[key] = float(override[key])
            continue
        values = {name: (rec or {}).get(key) for name, rec in recorded.items()}
        missing = [name for name, v in values.items() if v is None]
        if first.get(key) is not None:
            costs[key] = float(first[key])
            other = sorted({float(v) for v in values.values() if v is not None} - {costs[key]})
            if other:
                notes.append(f"studies recorded different {key} references ({costs[key]:g} and {other[0]:g}); "
                             f"all use the first study's, {costs[key]:g}")
            if missing:
                notes.append(f"{', '.join(missing)} recorded no {key} reference; "
                             f"using the first study's, {costs[key]:g}")
            continue
        fixed = False
        costs[key] = _fallback(frames.values(), key)
        why = ("created before studies recorded one" if any(rec is None for rec in recorded.values())
               else "no limit or declared value for it")
        notes.append(f"hypervolume {key} reference not fixed before the search ({', '.join(missing)}: {why}): "
                     f"{FALLBACK_FACTOR:g} x the largest complete trial = {costs[key]:.4g}, so these hypervolumes "
                     f"compare only within this report (set report.reference_{key} or a limit before the search)")
    accs = [v for f in frames.values() if not f.empty for v in candidates(f)["accuracy"].tolist()]
    accuracy = float(override.get("accuracy", first.get("accuracy", 0.0)) or 0.0)
    return Reference(accuracy, costs, accuracy_scale(accs), fixed, tuple(notes))


def _fallback(frames, key: str) -> float:
    worst = [pd.to_numeric(candidates(f)[key], errors="coerce").max() for f in frames if not candidates(f).empty]
    worst = [v for v in worst if v == v]
    return FALLBACK_FACTOR * max(worst) if worst else 1.0


def hypervolume_curve(df: pd.DataFrame, objectives: Sequence[str], reference: Reference) -> list[float]:
    """Normalized hypervolume after each complete, distinct trial."""
    return hypervolume_history(reference.normalize(df, objectives), [1.0] * len(objectives))


SECONDS_AXES = ("spent", "occupied")


def hypervolume_over_gpu_s(df: pd.DataFrame, objectives: Sequence[str], reference: Reference,
                           seconds: str = "spent") -> pd.DataFrame:
    """Normalized hypervolume against the device seconds the study had used, after each trial in the order the
    trials finished (columns ``gpu_s``, ``hypervolume``). The hypervolume counts the complete, feasible,
    distinct trials among them. Searches compare fairly along this axis, not along the number of trials, when
    they spend different seconds per trial (promotion, early stopping).

    ``seconds``: ``spent`` sums every finished trial's seconds as the study's GPU-second budget counts them
    (screened-out, failed and duplicate trials too; workers sharing a device each count their own wall time);
    ``occupied`` is the wall time during which any of the study's trials ran, up to each finish (for a study on
    one device, the seconds it held the device; trials that never finished are left out, abandoned ones count
    the seconds they recorded)."""
    if seconds not in SECONDS_AXES:
        raise ValueError(f"seconds: {seconds!r} is not one of {', '.join(SECONDS_AXES)}")
    if df.empty or "finished" not in df:
        return pd.DataFrame({"gpu_s": [], "hypervolume": []})
    done = df[df["finished"].notna()].sort_values(["finished", "number"])
    if seconds == "spent":
        spent = pd.to_numeric(done["gpu_s"], errors="coerce").fillna(0.0).cumsum().to_numpy()
    else:
        spent = occupied_s(done)
    counted = set(candidates(done)["number"]) if not done.empty else set()
    volumes, current = [], 0.0
    for i, number in enumerate(done["number"]):
        if number in counted:
            points = reference.normalize(done.iloc[:i + 1], objectives)
            current = hypervolume(points, [1.0] * len(objectives)) if len(points) else 0.0
        volumes.append(current)
    return pd.DataFrame({"gpu_s": spent, "hypervolume": volumes})


def occupied_s(done: pd.DataFrame) -> np.ndarray:
    """For each trial of ``done`` (finished trials with ``started`` and ``finished`` times, in finishing order):
    the wall seconds up to its finish during which at least one of them was running. An ``abandoned`` trial
    (its worker stopped; the study failed it later) runs from its start for the seconds it recorded."""
    finish = pd.to_datetime(done["finished"], format="ISO8601")
    start = pd.to_datetime(done["started"], format="ISO8601").fillna(finish)
    end = finish
    if "abandoned" in done:
        ran = pd.to_timedelta(pd.to_numeric(done["gpu_s"], errors="coerce").fillna(0.0), unit="s")
        end = finish.where(~done["abandoned"].fillna(False).astype(bool), start + ran)
    start, end = start.to_numpy(), end.to_numpy()
    out = []
    for at in finish.to_numpy():
        running = start < at
        out.append(_union_s(sorted(zip(start[running], np.minimum(end[running], at)))))
    return np.asarray(out, dtype=float)


def _union_s(spans: list) -> float:
    """Seconds covered by the union of (start, end) datetime64 spans sorted by start."""
    total, first, last = 0.0, None, None
    for begin, end in spans:
        if last is not None and begin <= last:
            last = max(last, end)
            continue
        if last is not None:
            total += (last - first) / np.timedelta64(1, "s")
        first, last = begin, end
    return total + ((last - first) / np.timedelta64(1, "s") if last is not None else 0.0)


def hypervolume_at(curve: pd.DataFrame, gpu_s: Sequence[float]) -> np.ndarray:
    """A :func:`hypervolume_over_gpu_s` curve read at the given seconds (0 before its first trial finished)."""
    index = np.searchsorted(curve["gpu_s"].to_numpy(), np.asarray(gpu_s, dtype=float), side="right") - 1
    values = curve["hypervolume"].to_numpy()
    return np.where(index >= 0, values[index.clip(0)] if len(values) else 0.0, 0.0)


def equal_gpu_s_table(groups: Mapping[str, Mapping[str, pd.DataFrame]], fractions: Sequence[float] = (0.25, 0.5,
                      0.75, 1.0), level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Each group's hypervolume (mean and confidence interval over its studies) at equal GPU-seconds: the given
    fractions of the least any study of any group spent, so every study is read where it really got to.
    ``groups``: group name -> study name -> :func:`hypervolume_over_gpu_s` curve."""
    totals = [float(c["gpu_s"].iloc[-1]) for curves in groups.values() for c in curves.values() if len(c)]
    if not totals:
        return pd.DataFrame(columns=["group", "studies", "gpu_s", "hypervolume", "ci_low", "ci_high", "per_study"])
    rows = []
    for group, curves in groups.items():
        for fraction in fractions:
            at = fraction * min(totals)
            values = {name: float(hypervolume_at(c, [at])[0]) for name, c in curves.items()}
            mean, low, high = mean_interval(list(values.values()), level)
            rows.append(dict(group=group, studies=len(values), gpu_s=at, hypervolume=mean, ci_low=low, ci_high=high,
                             per_study=values))
    return pd.DataFrame(rows)


def format_gpu_s(value: float) -> str:
    """GPU-seconds for a table: whole seconds with thousands separators, 3 digits below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def front_statistics(df: pd.DataFrame, objectives: Sequence[str], reference: Reference) -> dict[str, float]:
    """Hypervolume, front size, best accuracy and lowest latency of one study's complete, feasible trials."""
    cand = candidates(df) if not df.empty else df
    front = cand[cand["pareto"]] if not cand.empty else cand
    points = reference.normalize(df, objectives)
    return dict(hypervolume=hypervolume(points, [1.0] * len(objectives)) if len(points) else 0.0,
                front_size=float(len(front)),
                best_accuracy=float(cand["accuracy"].max()) if not cand.empty else math.nan,
                min_latency_ms=float(pd.to_numeric(cand["latency_ms"], errors="coerce").min())
                if not cand.empty else math.nan)


@dataclass
class GroupStatistics:
    """One statistic over the studies of a group (the seeds of one search): per study, mean and interval."""

    per_study: dict[str, dict[str, float]] = field(default_factory=dict)
    level: float = DEFAULT_LEVEL

    def summary(self, statistic: str) -> tuple[float, float, float]:
        """Mean and confidence interval over the group's studies (interval nan for one study)."""
        return mean_interval([s[statistic] for s in self.per_study.values()], self.level)

    def describe(self, statistic: str, fmt: str = ".4f") -> str:
        mean, low, high = self.summary(statistic)
        if len(self.per_study) < 2:
            return format(mean, fmt)
        return (f"{mean:{fmt}} ({self.level * 100:g} % CI {low:{fmt}} to {high:{fmt}} over "
                f"{len(self.per_study)} seeds)")


def group_statistics(frames: Mapping[str, pd.DataFrame], objectives: Sequence[str], reference: Reference,
                     level: float = DEFAULT_LEVEL) -> GroupStatistics:
    """:func:`front_statistics` of each study of a group."""
    return GroupStatistics({name: front_statistics(df, objectives, reference) for name, df in frames.items()}, level)


__all__ = ["Reference", "resolve_reference", "hypervolume_curve", "hypervolume_over_gpu_s", "occupied_s",
           "hypervolume_at", "equal_gpu_s_table", "format_gpu_s", "front_statistics", "GroupStatistics",
           "group_statistics", "STATISTICS", "FALLBACK_FACTOR"]
