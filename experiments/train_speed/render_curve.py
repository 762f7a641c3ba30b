"""Render part d's accuracy curve (curve.json from bench_train.py --part d) as HTML and PNG.

Needs no GPU. PNG export needs kaleido with a Chrome / Chromium on PATH; without one only the HTML is
written and a note says the PNG was skipped.

    python3 experiments/train_speed/render_curve.py experiments/train_speed/results
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    folder = Path(argv[0])
    rows = json.loads((folder / "curve.json").read_text())
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("test top-1 (%)", "training loss"))
    for i, label in enumerate(dict.fromkeys(r["schedule"] for r in rows)):
        part = [r for r in rows if r["schedule"] == label and r["top1"] is not None]
        epochs = [r["epoch"] for r in part]
        colour = ("#1f77b4", "#ff7f0e", "#2ca02c")[i % 3]
        name = f"{label} ({len(part)} epochs, final {part[-1]['top1']:.2f}%)"
        fig.add_trace(go.Scatter(x=epochs, y=[r["top1"] for r in part], name=name, mode="lines+markers",
                                 line=dict(color=colour)), row=1, col=1)
        fig.add_trace(go.Scatter(x=epochs, y=[r["train_loss"] for r in part], name=f"{label} loss",
                                 mode="lines", line=dict(color=colour, dash="dot"), showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="LowFormer-B0 proxy training on Fashion-MNIST (64 px, lowspace.train.train_proxy)",
                      width=1100, height=450, template="plotly_white", legend=dict(x=0.25, y=0.05))
    fig.write_html(folder / "curve.html", include_plotlyjs="cdn")
    try:
        fig.write_image(folder / "curve.png", scale=2)
        print(f"wrote {folder / 'curve.png'} and curve.html")
    except Exception as err:  # noqa: BLE001 - no browser for kaleido: keep the HTML, say so
        print(f"wrote {folder / 'curve.html'}; PNG skipped ({type(err).__name__}: {err})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
