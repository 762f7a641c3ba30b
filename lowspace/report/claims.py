"""What a report may claim about a study's front: each front member against the study's presets, with
"dominates" only where the accuracy difference is significant (:func:`lowspace.report.significance.compare`).

A search trial has one accuracy (one training seed) measured on the validation images its proxy recorded, so
the test is the binomial one on those images; a trial without a recorded evaluation-set size cannot be tested
and is "within noise".
"""
from __future__ import annotations

import pandas as pd

from .significance import DEFAULT_LEVEL, Accuracy, Comparison, accuracy_scale, compare
from .tables import candidates


def row_accuracy(row: pd.Series, scale: float) -> Accuracy:
    """The accuracy of one trial row (one seed)."""
    images = row.get("eval_images")
    return Accuracy((float(row["accuracy"]),), int(images) if images is not None and images == images else None, scale)


def row_label(row: pd.Series) -> str:
    """``b1`` for a preset, ``trial 12`` otherwise."""
    preset = row.get("preset")
    return str(preset) if preset is not None and preset == preset else f"trial {int(row['number'])}"


def _spread(row: pd.Series) -> float | None:
    value = row.get("latency_spread")
    return float(value) if value is not None and value == value else None


def compare_rows(a: pd.Series, b: pd.Series, level: float = DEFAULT_LEVEL, scale: float = 100.0) -> Comparison:
    """Trial ``a`` against trial ``b`` (accuracy test and latency spread)."""
    return compare(row_accuracy(a, scale), float(a["latency_ms"]), _spread(a),
                   row_accuracy(b, scale), float(b["latency_ms"]), _spread(b), level)


def front_vs_presets(df: pd.DataFrame, level: float = DEFAULT_LEVEL) -> list[tuple[pd.Series, pd.Series, Comparison]]:
    """Every front member that is not a preset against every preset of the study."""
    cand = candidates(df)
    if cand.empty or "preset" not in cand:
        return []
    scale = accuracy_scale(cand["accuracy"].tolist())
    presets = cand[cand["preset"].notna()]
    front = cand[cand["pareto"] & cand["preset"].isna()].sort_values("latency_ms")
    return [(a, b, compare_rows(a, b, level, scale)) for _, a in front.iterrows() for _, b in presets.iterrows()]


def claim_lines(df: pd.DataFrame, level: float = DEFAULT_LEVEL, number: int | None = None) -> list[str]:
    """One sentence per (front member, preset) pair; with ``number`` only that trial's."""
    return [c.sentence(row_label(a), row_label(b)) for a, b, c in front_vs_presets(df, level)
            if number is None or int(a["number"]) == number]


__all__ = ["row_accuracy", "row_label", "compare_rows", "front_vs_presets", "claim_lines"]
