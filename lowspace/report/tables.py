"""Tables of a study: one row per trial (pandas), the Pareto front, peers from a bench results file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..io import atomic_write_text
from ..pareto import pareto_mask
from .significance import accuracy_scale, binomial_se

_ATTR_COLUMNS = ("status", "arch_id", "preset", "point", "accuracy", "latency_ms", "images_per_s", "params", "macs",
                 "duplicate_of", "reason", "error", "failed_stage", "worker")


def study_objectives(study) -> list[str]:
    """Objective names of a lowspace study (``accuracy``, ``latency``[, ``macs``])."""
    names = study.user_attrs.get("objectives")
    if names:
        return list(names)
    return ["accuracy", "latency"] if len(study.directions) > 1 else ["accuracy"]


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: state, status, metrics, timings, parameters (``p_<name>``), feasibility, whether it
    is a duplicate and whether it counts (:func:`lowspace.search.counted_trials`: complete, the first trial of
    its architecture), and ``gpu_s``, the device seconds it spent (the study's GPU-second budget counts them)."""
    from ..search import abandoned, counted_trials, is_duplicate as repeats_an_architecture, trial_gpu_s
    counted = {t.number for t in counted_trials(study)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "counted": t.number in counted,
                               "duplicate": repeats_an_architecture(t)}
        for key in _ATTR_COLUMNS:
            row[key] = a.get(key)
        proxy = a.get("proxy") or {}
        row["top5"] = proxy.get("top5")
        row["epochs_run"] = proxy.get("epochs_run")
        row["eval_images"] = ((proxy.get("info") or {}).get("validation") or {}).get("images")
        row["latency_spread"] = (a.get("latency") or {}).get("spread")
        for k, v in (a.get("timings") or {}).items():
            row[f"time_{k}"] = v
        row["feasible"] = all(v <= 0 for v in t.constraints.values())
        row["retry_of"] = t.system_attrs.get("failed_trial")
        row["abandoned"] = abandoned(t)
        row["started"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        row["finished"] = t.datetime_complete.isoformat() if t.datetime_complete else None
        row["gpu_s"] = trial_gpu_s(t)
        for k, v in t.params.items():
            row[f"p_{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["number", "state", "counted", "duplicate", *(_ATTR_COLUMNS), "feasible"])
    df["pareto"] = pareto_flags(df, study_objectives(study) if len(study_objectives(study)) > 1 else
                                ["accuracy", "latency"])
    df["accuracy_se"] = accuracy_errors(df)
    return df


def accuracy_errors(df: pd.DataFrame) -> list[float]:
    """Each trial's binomial standard error of its accuracy (nan where the evaluation-set size is unknown)."""
    if df.empty or "eval_images" not in df:
        return [np.nan] * len(df)
    acc = pd.to_numeric(df["accuracy"], errors="coerce")
    scale = accuracy_scale(acc.dropna().tolist())
    images = pd.to_numeric(df["eval_images"], errors="coerce")
    return [binomial_se(a, int(n) if n == n else None, scale) for a, n in zip(acc, images)]


def is_duplicate(row: pd.Series) -> bool:
    """A trial row that repeats an earlier trial's architecture."""
    dup = row.get("duplicate_of")
    return bool(row.get("duplicate") == True or (dup is not None and dup == dup)  # noqa: E712 - nan-safe
                or row.get("status") == "duplicate")


def left_out(df: pd.DataFrame) -> dict[str, int]:
    """Trials not drawn as candidates, by why: rejected, stopped, failed, running, infeasible, duplicates
    (a repeat of an architecture already counted) and complete trials without an accuracy."""
    if df.empty:
        return {}
    shown = set(candidates(df).index)
    shown_ids = set(df.loc[list(shown), "arch_id"]) if "arch_id" in df else set()
    out: dict[str, int] = {}
    for idx, r in df.iterrows():
        if idx in shown:
            continue
        if is_duplicate(r) or (r["state"] == "COMPLETE" and r.get("arch_id") in shown_ids):
            why = "duplicates"
        elif r["state"] == "COMPLETE":
            why = "infeasible" if not bool(r.get("feasible", True)) else "without accuracy"
        elif r.get("status") in ("rejected", "stopped", "failed"):
            why = str(r["status"])
        else:
            why = {"PRUNED": "stopped", "FAIL": "failed"}.get(r["state"], str(r["state"]).lower())
        out[why] = out.get(why, 0) + 1
    return out


def objective_matrix(df: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """Objectives of each row as minimization columns (accuracy negated); NaN where missing."""
    cols = []
    for o in objectives:
        col = {"accuracy": "accuracy", "latency": "latency_ms", "macs": "macs"}[o]
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        cols.append(-v if o == "accuracy" else v)
    return np.stack(cols, axis=1) if cols else np.empty((len(df), 0))


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """Complete, feasible trials that count, one per architecture (the first trial of each arch_id)."""
    if df.empty:
        return df
    ok = (df["state"] == "COMPLETE") & df["feasible"].fillna(True).astype(bool) & df["accuracy"].notna()
    if "duplicate" in df:
        ok &= ~df["duplicate"].fillna(False).astype(bool)
    out = df[ok]
    return out.drop_duplicates(subset="arch_id", keep="first") if "arch_id" in out else out


def pareto_flags(df: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """True for rows on the Pareto front of the complete, feasible, distinct architectures."""
    flags = pd.Series(False, index=df.index)
    cand = candidates(df)
    if cand.empty:
        return flags
    mat = objective_matrix(cand, objectives)
    good = ~np.isnan(mat).any(axis=1)
    idx = cand.index[good]
    if len(idx):
        flags.loc[idx[pareto_mask(mat[good])]] = True
    return flags


def pareto_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto rows sorted by latency."""
    if df.empty:
        return df
    return df[df["pareto"]].sort_values("latency_ms")


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV, atomically."""
    atomic_write_text(path, df.to_csv(index=False))
    return Path(path)


def markdown_table(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``columns`` (numbers compactly formatted)."""
    cols = [c for c in columns if c in df.columns]

    def fmt(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        if isinstance(v, (int, np.integer)) and abs(int(v)) >= 10_000:
            return f"{int(v):,}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df[cols].iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# ==================================================================== peers (a `lowspace bench` results file)
_NAME_KEYS = ("model", "name", "arch", "model_name")
_LAT_KEYS = ("median_ms", "latency_ms", "ms", "infer_step_time", "step_time_ms", "latency")
_TPUT_KEYS = ("images_per_s", "img/s", "img_per_s", "imgs_per_s", "infer_samples_per_sec", "samples_per_sec",
              "throughput")
_BATCH_KEYS = ("batch_size", "batch", "bs", "infer_batch_size")
_PARAM_KEYS = ("params", "n_params", "param_count")
_MAC_KEYS = ("macs", "gmacs", "infer_gmacs", "mmacs")


def _first(row: dict, keys) -> tuple[str | None, Any]:
    lower = {str(k).lower(): v for k, v in row.items()}
    for k in keys:
        if k in lower and lower[k] is not None and not (isinstance(lower[k], float) and np.isnan(lower[k])):
            return k, lower[k]
    return None, None


_MATCH_KEYS = ("device", "backend", "precision", "batch_size", "channels_last", "deploy")
PEER_COLUMNS = ("name", "latency_ms", "images_per_s", "batch_size", "resolution", "in_chans", "params", "macs")


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).strip().lower() == str(b).strip().lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def load_peers(path: str | Path, protocol: dict | None = None) -> pd.DataFrame:
    """Reference models from a bench results file (CSV or JSON; a list of rows or {"rows": [...]}).

    Columns are matched loosely: name (model/name), latency (median_ms/latency_ms, or batch / img/s),
    throughput (images_per_s/img/s/infer_samples_per_sec), params (params, or param_count in millions as
    timm writes it), MACs (macs, or gmacs). With a ``protocol`` (the study's), rows timed otherwise
    (device, backend, precision, batch size, memory format, deploy; where the file has the column) are
    dropped (their number is ``attrs["skipped"]``; :func:`peer_notes` words it). Returns :data:`PEER_COLUMNS`.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError("--peers", str(path), "no such file (a CSV or JSON results file of `lowspace bench`)")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = next((data[k] for k in ("rows", "results", "models", "data") if isinstance(data.get(k), list)),
                            [data])
            raw = pd.DataFrame(data)
        else:
            raw = pd.read_csv(path)
    except (ValueError, json.JSONDecodeError) as err:
        raise ConfigError("--peers", str(path), f"not a readable CSV/JSON results file ({err})") from None
    rows, skipped = [], 0
    for rec in raw.to_dict("records"):
        status = str(rec.get("status", "ok")).lower()
        if status not in ("ok", "nan", "none", ""):
            continue
        _, name = _first(rec, _NAME_KEYS)
        _, lat = _first(rec, _LAT_KEYS)
        _, tput = _first(rec, _TPUT_KEYS)
        _, bs = _first(rec, _BATCH_KEYS)
        pk, params = _first(rec, _PARAM_KEYS)
        mk, macs = _first(rec, _MAC_KEYS)
        _, res = _first(rec, ("resolution", "img_size", "infer_img_size"))
        _, chans = _first(rec, ("in_chans", "channels", "in_channels"))
        bs = int(bs) if bs is not None else None
        if lat is None and tput:
            lat = 1000.0 * (bs or 1) / float(tput)
        if name is None or lat is None:
            continue
        if protocol:
            probe = dict(rec, batch_size=bs) if bs is not None else rec
            if any(_first(probe, (k,))[1] is not None and protocol.get(k) is not None
                   and not _same(_first(probe, (k,))[1], protocol[k]) for k in _MATCH_KEYS):
                skipped += 1
                continue
        if params is not None and pk == "param_count":
            params = float(params) * 1e6  # timm writes millions
        if macs is not None and mk in ("gmacs", "infer_gmacs"):
            macs = float(macs) * 1e9
        elif macs is not None and mk == "mmacs":
            macs = float(macs) * 1e6
        rows.append(dict(name=str(name), latency_ms=float(lat), images_per_s=None if tput is None else float(tput),
                         batch_size=bs, resolution=None if res is None else int(res),
                         in_chans=None if chans is None else int(chans),
                         params=None if params is None else float(params), macs=None if macs is None else float(macs)))
    df = pd.DataFrame(rows, columns=list(PEER_COLUMNS))
    if df.empty:
        proto = ", ".join(f"{k}={protocol[k]}" for k in _MATCH_KEYS if protocol and protocol.get(k) is not None)
        raise ConfigError("--peers", str(path), "no usable rows: each needs a model name and a latency (median_ms) "
                                                "or a throughput (images_per_s) column"
                          + (f"; {skipped} row(s) were timed on another protocol than the study's ({proto})"
                             if skipped else ""))
    df = df.drop_duplicates(subset="name", keep="first").reset_index(drop=True)
    df.attrs["skipped"] = skipped
    return df


def peer_notes(peers: pd.DataFrame, protocol: dict | None) -> list[str]:
    """Warnings for peers measured on another protocol than the study: another resolution or number of input
    channels (kept: they describe the peer network, but the latencies are not like for like), and rows
    dropped because they were timed with another batch size, device, backend, precision or memory format."""
    notes = []
    skipped = peers.attrs.get("skipped", 0)
    if skipped:
        theirs = ", ".join(f"{k}={protocol[k]}" for k in _MATCH_KEYS if protocol and protocol.get(k) is not None)
        notes.append(f"{skipped} peer row(s) left out: timed on another protocol than the study ({theirs})")
    if not protocol:
        return notes
    for key, words in (("resolution", "px"), ("in_chans", "input channels")):
        want = protocol.get(key)
        if want is None or key not in peers:
            continue
        other = peers[peers[key].notna() & (pd.to_numeric(peers[key], errors="coerce") != float(want))]
        if not other.empty:
            got = ", ".join(f"{n} ({int(v)})" for n, v in zip(other["name"], other[key]))
            what = "resolution" if key == "resolution" else "number of input channels"
            notes.append(f"peers measured at another {what} than the study's {want} {words}: {got}; their latencies "
                         "are not like for like")
    return notes
