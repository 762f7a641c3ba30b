"""The front at each fidelity of a study searched with promotion (``early_stopping.kind: promotion``).

Every architecture that finished a rung is a point there: (accuracy at that rung, latency[, MACs]). The
front of a rung is taken over the architectures that reached it, so the last rung's front is the study's
final front (trials trained on the full schedule only) and the lower rungs show what the short schedules
would have claimed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write_text
from ..pareto import pareto_mask

COLUMNS = ("rung", "label", "number", "arch_id", "preset", "accuracy", "latency_ms", "macs", "gpu_s", "promoted",
           "front")


def rung_labels(study) -> list[str]:
    """A label per rung (``epochs=2 train_per_class=1500``, ..., ``full``), from what the study recorded."""
    from ..search._promotion import rung_label, rung_specs
    from ..search._resume import stored_config
    from ..search.settings import PromotionSettings
    stored = stored_config(study)
    epochs = (study.user_attrs.get("proxy_resolved") or stored.get("proxy") or {}).get("epochs") or 1
    settings = PromotionSettings.from_dict(stored.get("promotion") or {})
    return [rung_label(r) for r in rung_specs(settings, int(epochs))]


def rung_frame(study) -> pd.DataFrame:
    """One row per architecture and rung it finished (the first trial of each architecture; duplicates left
    out), with its accuracy there, the GPU-seconds it trained there, whether it went on (None on the last
    rung it reached while running, or on the last rung) and whether it is on that rung's front."""
    labels = rung_labels(study)
    objectives = study.user_attrs.get("objectives") or ["accuracy", "latency"]
    rows, seen = [], set()
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if not a.get("rung_accuracy") or a.get("duplicate_of") is not None or a.get("arch_id") in seen:
            continue
        seen.add(a.get("arch_id"))
        for key, acc in sorted(a["rung_accuracy"].items(), key=lambda kv: int(kv[0])):
            decision = (a.get("rung_decision") or {}).get(key) or {}
            rung = int(key)
            rows.append({"rung": rung, "label": labels[rung] if rung < len(labels) else str(rung), "number": t.number,
                         "arch_id": a.get("arch_id"), "preset": a.get("preset"), "accuracy": acc,
                         "latency_ms": a.get("latency_ms"), "macs": a.get("macs"),
                         "gpu_s": (a.get("rung_gpu_s") or {}).get(key), "promoted": decision.get("promoted")})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "front"])
    df["front"] = False
    for _, group in df.groupby("rung"):
        points = _points(group, objectives)
        ok = ~np.isnan(points).any(axis=1)
        df.loc[group.index[ok], "front"] = pareto_mask(points[ok])
    return df.sort_values(["rung", "latency_ms"]).reset_index(drop=True)


def _points(df: pd.DataFrame, objectives) -> np.ndarray:
    cols = {"accuracy": "accuracy", "latency": "latency_ms", "macs": "macs"}
    out = [pd.to_numeric(df[cols[o]], errors="coerce").to_numpy(dtype=float) * (-1 if o == "accuracy" else 1)
           for o in objectives]
    return np.stack(out, axis=1) if out else np.empty((len(df), 0))


def fidelity_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per rung: architectures that reached it, how many went on, the front's size, GPU-seconds spent there."""
    rows: list[dict[str, Any]] = []
    for rung, g in df.groupby("rung"):
        rows.append({"rung": int(rung), "label": g["label"].iloc[0], "architectures": len(g),
                     "promoted": int((g["promoted"] == True).sum()),  # noqa: E712 - None is neither
                     "front": int(g["front"].sum()), "gpu_s": float(pd.to_numeric(g["gpu_s"]).sum())})
    return pd.DataFrame(rows, columns=["rung", "label", "architectures", "promoted", "front", "gpu_s"])


def write_fidelity(study, out_dir: str | Path) -> list[Path]:
    """Write ``fidelity.csv`` (:func:`rung_frame`) and ``fidelity.md`` (the summary and each rung's front);
    nothing for a study without rungs."""
    from .tables import markdown_table
    df = rung_frame(study)
    if df.empty:
        return []
    out = Path(out_dir)
    atomic_write_text(out / "fidelity.csv", df.to_csv(index=False))
    lines = ["# Fronts at each fidelity", "",
             "Each rung's front is over the architectures that reached that rung; the last rung's is the "
             "study's front.", "", markdown_table(fidelity_summary(df), ("rung", "label", "architectures",
                                                                        "promoted", "front", "gpu_s"))]
    for rung, g in df.groupby("rung"):
        lines += [f"## Rung {rung} ({g['label'].iloc[0]})", "",
                  markdown_table(g[g["front"]], ("number", "preset", "arch_id", "accuracy", "latency_ms", "macs"))]
    atomic_write_text(out / "fidelity.md", "\n".join(lines))
    return [out / "fidelity.csv", out / "fidelity.md"]
