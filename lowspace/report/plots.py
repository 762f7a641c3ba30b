"""Plotly figures of a study: the Pareto front (accuracy vs measured latency) and hypervolume history.

PNG export goes through kaleido, which needs Chrome or Chromium; where none is found the HTML is still
written and :func:`write_figure` says that the PNG was skipped.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import atomic_path, atomic_write_text
from ..pareto import hypervolume_history
from .tables import objective_matrix, candidates

_PRESET_COLOR = "#d62728"
_FRONT_COLOR = "#1f77b4"


def _hover(r: pd.Series) -> str:
    lines = [f"<b>trial {r['number']}</b> {r.get('arch_id') or ''}" + (f" <b>[{r['preset']}]</b>" if r.get("preset") else "")]
    lines.append(f"accuracy {r['accuracy']:.4g} | latency {r['latency_ms']:.4g} ms")
    if pd.notna(r.get("params")) and pd.notna(r.get("macs")):
        lines.append(f"{r['params'] / 1e6:.2f} M params | {r['macs'] / 1e6:.1f} MMACs")
    ps = [f"{c[2:]}={r[c]}" for c in r.index if c.startswith("p_") and pd.notna(r[c])]
    for i in range(0, len(ps), 4):
        lines.append(", ".join(ps[i:i + 4]))
    return "<br>".join(lines)


def pareto_figure(df: pd.DataFrame, peers: pd.DataFrame | None = None, title: str | None = None,
                  protocol: dict | None = None):
    """Accuracy vs latency of every complete, feasible architecture; the front as a line, colour = MACs,
    presets as labelled stars, peers (latency only: no proxy accuracy on this data) as vertical lines."""
    import plotly.graph_objects as go

    cand = candidates(df)
    fig = go.Figure()
    if not cand.empty:
        macs_m = pd.to_numeric(cand["macs"], errors="coerce") / 1e6
        fig.add_trace(go.Scatter(
            x=cand["latency_ms"], y=cand["accuracy"], mode="markers", name="trials",
            marker=dict(size=9, color=macs_m, colorscale="Viridis", showscale=True,
                        colorbar=dict(title="MMACs"), line=dict(width=0.5, color="#333")),
            hovertext=[_hover(r) for _, r in cand.iterrows()], hoverinfo="text"))
        front = cand[cand["pareto"]].sort_values("latency_ms")
        if not front.empty:
            fig.add_trace(go.Scatter(x=front["latency_ms"], y=front["accuracy"], mode="lines+markers",
                                     name="Pareto front", line=dict(shape="hv", color=_FRONT_COLOR, width=2),
                                     marker=dict(size=13, symbol="circle-open", color=_FRONT_COLOR, line=dict(width=2)),
                                     hovertext=[_hover(r) for _, r in front.iterrows()], hoverinfo="text"))
        presets = cand[cand["preset"].notna()] if "preset" in cand else cand.iloc[0:0]
        points = cand[cand["point"].notna() & cand["preset"].isna()] if "point" in cand else cand.iloc[0:0]
        if not points.empty:
            fig.add_trace(go.Scatter(x=points["latency_ms"], y=points["accuracy"], mode="markers+text",
                                     name="named points of the space", text=[str(p) for p in points["point"]],
                                     textposition="bottom center",
                                     marker=dict(size=13, symbol="diamond", color="#ff7f0e", line=dict(width=1)),
                                     hovertext=[_hover(r) for _, r in points.iterrows()], hoverinfo="text"))
        if not presets.empty:
            fig.add_trace(go.Scatter(x=presets["latency_ms"], y=presets["accuracy"], mode="markers+text",
                                     name="presets", text=[str(p).upper() for p in presets["preset"]],
                                     textposition="top center",
                                     marker=dict(size=16, symbol="star", color=_PRESET_COLOR, line=dict(width=1)),
                                     hovertext=[_hover(r) for _, r in presets.iterrows()], hoverinfo="text"))
    if peers is not None and not peers.empty:
        for _, p in peers.iterrows():
            fig.add_vline(x=float(p["latency_ms"]), line=dict(color="#888", dash="dot", width=1),
                          annotation=dict(text=str(p["name"]) + (f" @{int(p['resolution'])}px" if pd.notna(
                              p.get("resolution")) else ""), textangle=-90, font=dict(size=10, color="#555")),
                          annotation_position="bottom right")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="peers (latency only)",
                                 line=dict(color="#888", dash="dot")))
    sub = ""
    if protocol:
        sub = " ".join(str(protocol[k]) for k in ("device", "backend", "precision") if protocol.get(k))
        if protocol.get("channels_last"):
            sub += " channels-last"
        if protocol.get("deploy"):
            sub += " deploy"
        if protocol.get("batch_size"):
            sub += f", batch {protocol['batch_size']}"
        if protocol.get("resolution"):
            sub += f", {protocol['resolution']} px"
    note = "peers: measured latency only, no proxy accuracy (vertical lines)" if peers is not None and len(peers) else ""
    subtitle = " | ".join(x for x in (f"latency protocol: {sub}" if sub else "", note) if x)
    fig.update_layout(
        title=dict(text=(title or "Pareto front") + (f"<br><sup>{subtitle}</sup>" if subtitle else "")),
        xaxis_title="measured latency (ms)", yaxis_title="proxy top-1 accuracy", template="plotly_white",
        width=1000, height=650, legend=dict(orientation="h", yanchor="bottom", y=-0.22))
    lat = pd.to_numeric(cand["latency_ms"], errors="coerce") if not cand.empty else pd.Series(dtype=float)
    if len(lat.dropna()) and lat.max() / max(lat.min(), 1e-9) > 20:
        fig.update_xaxes(type="log")
    return fig


def normalized_points(df: pd.DataFrame, objectives: Sequence[str], reference: dict[str, float]) -> np.ndarray:
    """Complete, feasible trials in trial order, as minimization objectives scaled so the reference point
    is (1, ..., 1): accuracy -> 1 - acc / acc_scale, costs -> value / reference."""
    cand = candidates(df).sort_values("number")
    mat = objective_matrix(cand, objectives)
    out = np.empty_like(mat)
    for j, o in enumerate(objectives):
        if o == "accuracy":
            out[:, j] = 1.0 + mat[:, j] / reference["accuracy"]
        else:
            out[:, j] = mat[:, j] / reference[o]
    return out[~np.isnan(out).any(axis=1)]


def hv_reference(frames: Sequence[pd.DataFrame], objectives: Sequence[str]) -> dict[str, float]:
    """A common reference point for several studies: accuracy 0 (scale 1 or 100), 1.1 x the worst cost."""
    ref: dict[str, float] = {}
    accs = [pd.to_numeric(candidates(f)["accuracy"], errors="coerce").max() for f in frames if not candidates(f).empty]
    ref["accuracy"] = 100.0 if accs and max(a for a in accs if a == a) > 1.5 else 1.0
    for o, col in (("latency", "latency_ms"), ("macs", "macs")):
        if o in objectives:
            vals = [pd.to_numeric(candidates(f)[col], errors="coerce").max() for f in frames if not candidates(f).empty]
            vals = [v for v in vals if v == v]
            ref[o] = 1.1 * max(vals) if vals else 1.0
    return ref


def hypervolume_curves(frames: dict[str, pd.DataFrame], objectives: Sequence[str]) -> tuple[dict[str, list[float]], dict]:
    """Normalized hypervolume after each complete trial, per study, against one shared reference."""
    ref = hv_reference(list(frames.values()), objectives)
    curves = {name: hypervolume_history(normalized_points(df, objectives, ref), [1.0] * len(objectives))
              for name, df in frames.items()}
    return curves, ref


def hypervolume_figure(curves: dict[str, list[float]], reference: dict | None = None, title: str | None = None):
    """Hypervolume vs number of complete trials, one line per study (e.g. the search and its random baseline)."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for name, ys in curves.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(ys) + 1)), y=ys, mode="lines+markers", name=name,
                                 line=dict(shape="hv")))
    ref_text = ""
    if reference:
        units = {"latency": " ms", "macs": " MACs"}
        parts = [f"accuracy 0 (of {reference['accuracy']:g})" if k == "accuracy" else f"{k} {v:.4g}{units.get(k, '')}"
                 for k, v in reference.items()]
        ref_text = "reference point: " + ", ".join(parts)
    fig.update_layout(title=dict(text=(title or "Hypervolume history") + (f"<br><sup>{ref_text} (normalized to 1)</sup>"
                                                                         if ref_text else "")),
                      xaxis_title="complete trials", yaxis_title="hypervolume (normalized)", template="plotly_white",
                      width=900, height=500)
    return fig


def find_browser() -> str | None:
    """A Chrome / Chromium executable for kaleido, or None."""
    for env in ("BROWSER_PATH", "CHROME_PATH"):
        if os.environ.get(env) and Path(os.environ[env]).exists():
            return os.environ[env]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def write_figure(fig, html: str | Path, png: str | Path | None = None, scale: float = 2.0,
                 plotlyjs: bool | str = True) -> tuple[Path, Path | None, str]:
    """Write the figure as HTML and, if possible, PNG.

    ``plotlyjs``: True embeds plotly.js (a self-contained file of about 5 MB, viewable offline); "cdn"
    loads it from plotly's CDN (about 10 KB, needs a network connection to view).
    Returns (html path, png path or None, a note saying why the PNG was skipped, or "").
    """
    html = Path(html)
    atomic_write_text(html, fig.to_html(include_plotlyjs=plotlyjs, full_html=True))
    if png is None:
        return html, None, ""
    png = Path(png)
    if find_browser() is None:
        return html, None, "PNG skipped: no Chrome/Chromium found for kaleido (install chromium)"
    try:
        with atomic_path(png) as tmp:
            fig.write_image(str(tmp), format="png", scale=scale)
    except Exception as err:  # noqa: BLE001 - kaleido/choreographer raise many kinds; the HTML is there
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return html, None, f"PNG skipped: kaleido failed ({type(err).__name__}: {msg[:200]})"
    return html, png, ""


__all__ = ["pareto_figure", "hypervolume_figure", "hypervolume_curves", "hv_reference", "normalized_points",
           "write_figure", "find_browser"]
