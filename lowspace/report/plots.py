"""Plotly figures of a study: the Pareto front (accuracy vs measured latency), hypervolume history, the
final evaluation of retrained architectures, and published accuracy against measured throughput.

PNG export goes through kaleido, which needs Chrome or Chromium; where none is found the HTML is still
written and :func:`write_figure` says that the PNG was skipped.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import atomic_path, atomic_write_text
from .significance import DEFAULT_LEVEL, accuracy_scale
from .tables import candidates, left_out

_PRESET_COLOR = "#d62728"
_FRONT_COLOR = "#1f77b4"
_PEER_COLOR = "#2ca02c"


def _hover(r: pd.Series, to_percent: float) -> str:
    preset = f" <b>[{r['preset']}]</b>" if r.get("preset") else ""
    lines = [f"<b>trial {r['number']}</b> {r.get('arch_id') or ''}{preset}"]
    se = r.get("accuracy_se")
    err = f" ± {se * to_percent:.2f} (binomial SE)" if se is not None and se == se else ""
    lines.append(f"accuracy {r['accuracy'] * to_percent:.2f} %{err} | latency {r['latency_ms']:.4g} ms")
    if pd.notna(r.get("params")) and pd.notna(r.get("macs")):
        lines.append(f"{r['params'] / 1e6:.2f} M params | {r['macs'] / 1e6:.1f} MMACs")
    ps = [f"{c[2:]}={r[c]}" for c in r.index if c.startswith("p_") and pd.notna(r[c])]
    for i in range(0, len(ps), 4):
        lines.append(", ".join(ps[i:i + 4]))
    return "<br>".join(lines)


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 tick values covering [low, high] on a log axis (0.5, 1, 2, 5, 10, 20, ...)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0 ** exponent for m in (1, 2, 5)]
    inside = [t for t in ticks if low <= t <= high]
    below = [t for t in ticks if t < low][-1:]
    above = [t for t in ticks if t > high][:1]
    return [float(f"{t:.6g}") for t in (inside if len(inside) >= 2 else below + inside + above)]


def _latency_axis(latencies: Sequence[float]) -> dict:
    """x-axis settings: log with 1-2-5 ticks when latencies span more than 20x, else linear; a range that
    holds every latency (peers included)."""
    lat = [v for v in latencies if v is not None and math.isfinite(v) and v > 0]
    if not lat:
        return {}
    low, high = min(lat), max(lat)
    if high / low > 20:
        ticks = log_ticks(low / 1.15, high * 1.15)
        return dict(type="log", range=[math.log10(min(low / 1.15, ticks[0])), math.log10(max(high * 1.15, ticks[-1]))],
                    tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    pad = 0.05 * (high - low) or 0.05 * high
    return dict(type="linear", range=[max(low - pad, 0.0), high + pad])


def _error_bars(se: pd.Series, to_percent: float) -> dict:
    values = pd.to_numeric(se, errors="coerce") * to_percent
    return dict(type="data", array=values.fillna(0.0).tolist(), visible=bool(values.notna().any()), thickness=1,
                width=0, color="#999")


def _caption(protocol: dict | None, shown: int, left: dict[str, int], peers: bool) -> str:
    parts = []
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
        parts.append(f"latency protocol: {sub}")
    counted = f"{shown} architectures"
    if left:
        counted += " (not shown: " + ", ".join(f"{n} {why}" for why, n in sorted(left.items())) + ")"
    parts.append(counted)
    if peers:
        parts.append("peers: measured latency only, no proxy accuracy (vertical lines)")
    return " | ".join(parts)


def pareto_figure(df: pd.DataFrame, peers: pd.DataFrame | None = None, title: str | None = None,
                  protocol: dict | None = None):
    """Accuracy (%) vs latency of every complete, feasible architecture with binomial-SE error bars; colour =
    MACs; presets as labelled stars and named points as diamonds, each still marked as on the front when it
    is; the front as a line; peers (latency only: no proxy accuracy on this data) as vertical lines. The
    caption counts the trials left out (rejected, stopped, failed, duplicates)."""
    import plotly.graph_objects as go

    cand = candidates(df)
    to_percent = 100.0 / accuracy_scale(cand["accuracy"].tolist()) if not cand.empty else 1.0
    fig = go.Figure()
    if not cand.empty:
        macs_m = pd.to_numeric(cand["macs"], errors="coerce") / 1e6
        fig.add_trace(go.Scatter(
            x=cand["latency_ms"], y=cand["accuracy"] * to_percent, mode="markers", name="trials",
            error_y=_error_bars(cand.get("accuracy_se", pd.Series(index=cand.index, dtype=float)), to_percent),
            marker=dict(size=9, color=macs_m, colorscale="Viridis", showscale=True,
                        colorbar=dict(title="MMACs"), line=dict(width=0.5, color="#333")),
            hovertext=[_hover(r, to_percent) for _, r in cand.iterrows()], hoverinfo="text"))
        presets = cand[cand["preset"].notna()] if "preset" in cand else cand.iloc[0:0]
        points = cand[cand["point"].notna() & cand["preset"].isna()] if "point" in cand else cand.iloc[0:0]
        for group, name, symbol, color, size, labels, where in (
                (points, "named points of the space", "diamond", "#ff7f0e", 13, lambda g: [str(p) for p in g["point"]],
                 "bottom center"),
                (presets, "presets", "star", _PRESET_COLOR, 16, lambda g: [str(p).upper() for p in g["preset"]],
                 "top center")):
            if group.empty:
                continue
            fig.add_trace(go.Scatter(x=group["latency_ms"], y=group["accuracy"] * to_percent, mode="markers+text",
                                     name=name, text=labels(group), textposition=where,
                                     marker=dict(size=size, symbol=symbol, color=color, line=dict(width=1)),
                                     hovertext=[_hover(r, to_percent) for _, r in group.iterrows()], hoverinfo="text"))
        front = cand[cand["pareto"]].sort_values("latency_ms")
        if not front.empty:  # drawn last, so a preset or named point on the front keeps the front's ring
            named = front["preset"].notna() | (front["point"].notna() if "point" in front else False)
            fig.add_trace(go.Scatter(x=front["latency_ms"], y=front["accuracy"] * to_percent, mode="lines+markers",
                                     name="Pareto front", line=dict(shape="hv", color=_FRONT_COLOR, width=2),
                                     marker=dict(size=[22 if n else 13 for n in named], symbol="circle-open",
                                                 color=_FRONT_COLOR, line=dict(width=2)),
                                     hovertext=[_hover(r, to_percent) for _, r in front.iterrows()], hoverinfo="text"))
    lat_values = (pd.to_numeric(cand["latency_ms"], errors="coerce").tolist() if not cand.empty else [])
    has_peers = peers is not None and not peers.empty
    if has_peers:
        lat_values += peers["latency_ms"].astype(float).tolist()
    axis = _latency_axis(lat_values)
    if has_peers:
        _add_peer_lines(fig, peers, log=axis.get("type") == "log")
    fig.update_layout(
        title=dict(text=(title or "Pareto front") + "<br><sup>" + _caption(protocol, len(cand), left_out(df), has_peers)
                   + "</sup>"),
        xaxis_title="measured latency (ms)", yaxis_title="proxy top-1 accuracy (%)", template="plotly_white",
        width=1000, height=650, legend=dict(orientation="h", yanchor="bottom", y=-0.22))
    if axis:
        fig.update_xaxes(**axis)
    return fig


def _add_peer_lines(fig, peers: pd.DataFrame, log: bool) -> None:
    """Peers as vertical lines with labels. On a log axis a shape takes the latency itself but an annotation
    its log10 (plotly's rule; a label placed at the latency would sit at 10^latency and stretch the axis)."""
    import plotly.graph_objects as go
    for _, p in peers.iterrows():
        latency = float(p["latency_ms"])
        label = str(p["name"]) + (f" @{int(p['resolution'])}px" if pd.notna(p.get("resolution")) else "")
        fig.add_shape(type="line", xref="x", yref="paper", x0=latency, x1=latency, y0=0, y1=1,
                      line=dict(color="#888", dash="dot", width=1))
        fig.add_annotation(x=math.log10(latency) if log else latency, xref="x", y=0, yref="paper", text=label,
                           textangle=-90, showarrow=False,
                           xanchor="left", yanchor="bottom", font=dict(size=10, color="#555"))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="peers (latency only)",
                             line=dict(color="#888", dash="dot")))


def hypervolume_figure(curves: dict[str, list[float]], reference=None, title: str | None = None):
    """Hypervolume vs number of complete, distinct trials, one line per study (e.g. the search's seeds and
    a random baseline); ``reference`` (a :class:`~lowspace.report.fronts.Reference`) is named in the caption."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for name, ys in curves.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(ys) + 1)), y=ys, mode="lines+markers", name=name,
                                 line=dict(shape="hv")))
    sub = f"<br><sup>reference point: {reference.describe()} (normalized to 1)</sup>" if reference is not None else ""
    fig.update_layout(title=dict(text=(title or "Hypervolume history") + sub),
                      xaxis_title="complete trials (distinct architectures)", yaxis_title="hypervolume (normalized)",
                      template="plotly_white", width=900, height=500)
    return fig


def hypervolume_gpu_figure(groups: dict[str, dict[str, pd.DataFrame]], reference=None, title: str | None = None):
    """Hypervolume vs GPU-seconds spent: per group (a search and its seeds, a baseline) a thin step line per
    study and a thick line for the mean over the group's studies, drawn up to where its shortest study ends;
    ``groups`` as :func:`lowspace.report.fronts.equal_gpu_s_table` takes them."""
    import numpy as np
    import plotly.graph_objects as go

    from .fronts import hypervolume_at
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
    fig = go.Figure()
    for k, (group, curves) in enumerate(groups.items()):
        color = palette[k % len(palette)]
        for name, curve in curves.items():
            fig.add_trace(go.Scatter(x=curve["gpu_s"], y=curve["hypervolume"], mode="lines", name=name,
                                     legendgroup=group, line=dict(shape="hv", width=1, color=color), opacity=0.45))
        ends = [float(c["gpu_s"].iloc[-1]) for c in curves.values() if len(c)]
        if len(ends) > 1:
            grid = np.linspace(0.0, min(ends), 200)
            mean = np.mean([hypervolume_at(c, grid) for c in curves.values()], axis=0)
            fig.add_trace(go.Scatter(x=grid, y=mean, mode="lines", name=f"{group}: mean of {len(ends)}",
                                     legendgroup=group, line=dict(shape="hv", width=3, color=color)))
    sub = f"<br><sup>reference point: {reference.describe()} (normalized to 1)</sup>" if reference is not None else ""
    fig.update_layout(title=dict(text=(title or "Hypervolume over GPU-seconds") + sub),
                      xaxis_title="GPU-seconds spent (every trial, as the study's budget counts them)",
                      yaxis_title="hypervolume (normalized)", template="plotly_white", width=900, height=500)
    return fig


def final_figure(rows: pd.DataFrame, title: str | None = None, level: float = DEFAULT_LEVEL,
                 latency_label: str = "measured latency (ms)"):
    """Final test accuracy (mean over seeds, the ``level`` confidence interval as error bars) vs latency of
    retrained architectures (front members, presets, trained peers); ``rows`` as
    :func:`lowspace.report.evaluate.final_frame` gives them."""
    import plotly.graph_objects as go
    fig = go.Figure()
    names = {"front": "front members", "preset": "presets", "peer": "trained peers"}
    for kind, symbol, color in (("front", "circle", _FRONT_COLOR), ("preset", "star", _PRESET_COLOR),
                                ("peer", "diamond", _PEER_COLOR)):
        part = rows[rows["kind"] == kind]
        if part.empty:
            continue
        seeds = part["seeds"] >= 2
        above = (part["ci_high"] - part["mean"]).where(seeds, part["binomial_se"])
        below = (part["mean"] - part["ci_low"]).where(seeds, part["binomial_se"])
        fig.add_trace(go.Scatter(
            x=part["latency_ms"], y=part["mean"], mode="markers+text", name=names[kind],
            text=part["name"].tolist(), textposition="top center",
            error_y=dict(type="data", symmetric=False, array=above.fillna(0.0).tolist(),
                         arrayminus=below.fillna(0.0).tolist(), visible=True),
            marker=dict(size=15 if kind == "preset" else 12, symbol=symbol, color=color),
            hovertext=[f"{r['name']}: {r['describe']}<br>latency {r['latency_ms']:.4g} ms" for _, r in part.iterrows()],
            hoverinfo="text"))
    fig.update_layout(title=dict(text=(title or "Final evaluation") + f"<br><sup>error bars: {level * 100:g} % "
                                 "confidence interval over seeds (one seed: binomial SE of the test set)</sup>"),
                      xaxis_title=latency_label, yaxis_title="test top-1 accuracy (%)",
                      template="plotly_white", width=1000, height=600)
    axis = _latency_axis(pd.to_numeric(rows["latency_ms"], errors="coerce").tolist())
    if axis:
        fig.update_xaxes(**axis)
    return fig


def published_figure(rows: pd.DataFrame, title: str | None = None):
    """Published ImageNet top-1 vs measured throughput: ``rows`` with ``name``, ``kind`` (preset or peer),
    ``top1``, ``px`` (the side it was measured at), ``distilled``, ``source``, ``images_per_s`` and ``row`` (which
    measurement). Distilled results are open markers: their accuracy owes something to a teacher."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for kind, symbol, color in (("preset", "star", _PRESET_COLOR), ("peer", "circle", _FRONT_COLOR)):
        for distilled in (False, True):
            part = rows[(rows["kind"] == kind) & (rows["distilled"] == distilled)]
            if part.empty:
                continue
            label = "LowFormer presets" if kind == "preset" else "peers"
            fig.add_trace(go.Scatter(
                x=part["images_per_s"], y=part["top1"], mode="markers+text", text=part["name"].tolist(),
                name=label + (" (distilled)" if distilled else ""), textposition="top center",
                marker=dict(size=14 if kind == "preset" else 11, symbol=symbol + ("-open" if distilled else ""),
                            color=color),
                hovertext=[f"{r['name']}: {r['top1']:.2f} % at {r['px']} px ({r['source']})<br>"
                           f"{r['images_per_s']:,.0f} img/s ({r['row']})" for _, r in part.iterrows()],
                hoverinfo="text"))
    fig.update_layout(title=dict(text=(title or "Published ImageNet top-1 vs measured throughput")
                                 + "<br><sup>open markers: published accuracy from knowledge distillation</sup>"),
                      xaxis_title="measured throughput (img/s)", yaxis_title="published ImageNet-1k top-1 (%)",
                      template="plotly_white", width=1000, height=600)
    speeds = [v for v in pd.to_numeric(rows["images_per_s"], errors="coerce").tolist() if v == v and v > 0]
    if speeds:
        ticks = log_ticks(min(speeds) / 1.15, max(speeds) * 1.15)
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:,.0f}" for t in ticks])
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


__all__ = ["pareto_figure", "hypervolume_figure", "hypervolume_gpu_figure", "final_figure", "published_figure",
           "log_ticks", "write_figure", "find_browser"]
