"""Render the bench_presets results: counts added to the rows, plotly charts (HTML + PNG), a markdown summary.

Runs on a CPU (no GPU needed): params / MACs / fvcore MACs are counted and cached in counts.json. PNG export
needs kaleido with a Chrome/Chromium on PATH; without one the HTML is still written and the summary says the
PNG was skipped.

    python3 experiments/bench_presets/render.py --results experiments/bench_presets/results
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for lowspace

FAMILY_STYLE = {  # trace name -> (marker symbol, colour)
    "LowFormer (lowspace)": ("circle", "#1f77b4"),
    "LowFormer (timm)": ("x", "#ff7f0e"),
    "peers (timm)": ("diamond", "#2ca02c"),
}


def load_rows(results: Path) -> tuple[list[dict], dict]:
    rows: dict[str, dict] = {}
    for name in ("matrix.jsonl",):
        f = results / name
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    rows[r["job"]] = r
    if not rows and (results / "matrix.json").exists():
        rows = {r["job"]: r for r in json.loads((results / "matrix.json").read_text())["rows"]}
    fps = json.loads((results / "fingerprints.json").read_text()) if (results / "fingerprints.json").exists() else {}
    return list(rows.values()), fps


def add_counts(rows: list[dict], results: Path, img_size: int) -> dict:
    """params / macs / fvcore_macs per spec (cached in counts.json), written into the rows."""
    from lowspace.cost.count import count_all
    path = results / "counts.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    for r in rows:
        key = f"{r['spec']}@{r.get('resolution') or img_size}"
        if key not in counts:
            counts[key] = count_all(r["spec"], r.get("resolution") or img_size, fvcore=True)
            print(f"counted {key}: {counts[key]}", flush=True)
        r.update(counts[key])
    from lowspace.io import atomic_write_json
    atomic_write_json(path, counts)
    return counts


def family(r: dict) -> str:
    if r.get("family") == "peer":
        return "peers (timm)"
    return "LowFormer (lowspace)" if r["implementation"] == "lowspace" else "LowFormer (timm)"


def protocols(rows: list[dict]) -> list[tuple[str, str]]:
    order = {"cuda_graph": 0, "compile": 1}
    found = {(r["backend"], r["precision"]) for r in rows if r.get("status") == "ok"}
    return sorted(found, key=lambda bp: (order.get(bp[0], 9), bp[0], bp[1]))


def short(name: str) -> str:
    return name.replace("lowformer_", "LF-").replace("efficientvit_", "EViT-").replace("mobilenetv4_hybrid_medium",
                                                                                       "MNv4-HM")


def make_figure(rows: list[dict], batch: int, metric: str, title: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    protos = protocols([r for r in rows if r["requested_batch_size"] == batch])
    if not protos:
        return None
    fig = make_subplots(rows=len(protos), cols=2, shared_yaxes="rows", horizontal_spacing=0.06,
                        vertical_spacing=0.22 / max(1, len(protos)),
                        subplot_titles=[f"{b} {p} channels_last, batch {batch}: vs {x}" for b, p in protos
                                        for x in ("params", "MACs")])
    for i, (backend, precision) in enumerate(protos, start=1):
        sel = [r for r in rows if r["backend"] == backend and r["precision"] == precision
               and r["requested_batch_size"] == batch and r.get("status") == "ok"]
        for fam, (symbol, colour) in FAMILY_STYLE.items():
            pts = [r for r in sel if family(r) == fam]
            if not pts:
                continue
            for col, xkey, scale in ((1, "params", 1e6), (2, "macs", 1e9)):
                fig.add_trace(go.Scatter(
                    x=[r[xkey] / scale for r in pts], y=[r[metric] for r in pts], mode="markers+text",
                    marker=dict(symbol=symbol, color=colour, size=10), name=fam, legendgroup=fam,
                    showlegend=(i == 1 and col == 1),
                    # timm's twin sits on ours (same params and MACs): label ours only
                    text=[short(r["model"]) if fam != "LowFormer (timm)" else "" for r in pts],
                    textposition="top center", textfont=dict(size=9),
                    customdata=[[r["spread"] * 100] for r in pts],
                    hovertext=[f"{r['model']} ({r['implementation']})" for r in pts],
                    hovertemplate="%{hovertext}<br>%{x:.2f}<br>%{y:,.2f}<br>spread %{customdata[0]:.2f}%"
                                  "<extra></extra>"),
                    row=i, col=col)
        ylabel = "images / s" if metric == "images_per_s" else "ms / batch"
        fig.update_yaxes(title_text=ylabel, row=i, col=1)
        fig.update_yaxes(rangemode="tozero", row=i)
        fig.update_xaxes(title_text="params (M)", row=i, col=1)
        fig.update_xaxes(title_text="MACs (G, LowFormer convention)", row=i, col=2)
    fig.update_layout(title=title, height=380 * len(protos) + 120, width=1200, template="plotly_white",
                      legend=dict(orientation="h", y=1.0 + 0.12 / len(protos), x=0))
    return fig


def write_figure(fig, stem: Path) -> str | None:
    """Write HTML and PNG; returns an error string if the PNG could not be made."""
    fig.write_html(str(stem.with_suffix(".html")), include_plotlyjs="cdn")
    try:
        fig.write_image(str(stem.with_suffix(".png")), scale=1.5)
    except Exception as err:  # noqa: BLE001 - no browser for kaleido: say so, keep the HTML
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def _pct(x):
    return "-" if x is None else f"{x:.1%}"


def twin_table(rows: list[dict]) -> list[str]:
    """Ours vs timm's twin per preset and protocol: img/s ratio; '*' marks p10-p90 bands that do not overlap."""
    by = {(r["preset"], r["implementation"], r["backend"], r["precision"], r["requested_batch_size"]): r
          for r in rows if r.get("family") == "lowformer" and r.get("status") == "ok"}
    protos = sorted({(b, p, n) for (_, _, b, p, n) in by}, key=lambda t: (t[0] != "cuda_graph", t[0], t[1], t[2]))
    presets = sorted({k[0] for k in by}, key=lambda p: ["b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3"].index(p)
                     if p in ["b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3"] else 99)
    lines = ["| preset | " + " | ".join(f"{b} {p} b{n}" for b, p, n in protos) + " |",
             "|---|" + "---:|" * len(protos)]
    stats = {"pairs": 0, "overlap": 0, "ratios": []}
    for preset in presets:
        cells = []
        for b, p, n in protos:
            ours, theirs = by.get((preset, "lowspace", b, p, n)), by.get((preset, "timm", b, p, n))
            if not ours or not theirs:
                cells.append("-")
                continue
            ratio = ours["images_per_s"] / theirs["images_per_s"]
            overlap = ours["p10_ms"] <= theirs["p90_ms"] and theirs["p10_ms"] <= ours["p90_ms"]
            stats["pairs"] += 1
            stats["overlap"] += overlap
            stats["ratios"].append(ratio)
            cells.append(f"{ratio:.3f}{'' if overlap else '*'}")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return lines, stats


def speed_table(rows: list[dict], batch: int, metric: str) -> list[str]:
    protos = protocols([r for r in rows if r["requested_batch_size"] == batch])
    if not protos:
        return ["(no rows)"]
    by = {(r["model"], r["implementation"], r["backend"], r["precision"]): r for r in rows
          if r["requested_batch_size"] == batch}
    names = sorted({(r["model"], r["implementation"], r.get("family"), r["params"], r["macs"], r.get("fvcore_macs"))
                    for r in rows if r["requested_batch_size"] == batch},
                   key=lambda t: (t[2] != "lowformer", t[0], t[1] != "lowspace"))
    unit = "img/s" if metric == "images_per_s" else "ms"
    head = " | ".join(f"{b} {p} {unit} (spread)" for b, p in protos)
    lines = [f"| model | impl | params M | MACs G | fvcore G | {head} |",
             "|---|---|---:|---:|---:|" + "---:|" * len(protos)]
    for model, impl, _, params, macs, fv in names:
        cells = []
        for b, p in protos:
            r = by.get((model, impl, b, p))
            if r is None:
                cells.append("-")
            elif r["status"] != "ok":
                cells.append(r["status"])
            else:
                v = f"{r[metric]:,.0f}" if metric == "images_per_s" else f"{r[metric]:.3f}"
                extra = "" if r["batch_size"] == r["requested_batch_size"] else f" @b{r['batch_size']}"
                flag = " !" if r.get("warnings") else ""
                cells.append(f"{v} ({_pct(r['spread'])}){extra}{flag}")
        lines.append(f"| {model} | {impl} | {params / 1e6:.2f} | {macs / 1e9:.3f} | "
                     f"{(fv or 0) / 1e9:.3f} | " + " | ".join(cells) + " |")
    return lines


def load_harness_runs(results: Path) -> dict[str, dict]:
    """The harness runs (results/harness/*.json) by label, the file name, in name order."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((results / "harness").glob("*.json"))}


def harness_section(runs: dict[str, dict]) -> list[str]:
    """One table per harness run."""
    if not runs:
        return ["Harness speed: not measured yet (run harness_speed.py)."]
    lines: list[str] = []
    for label, h in runs.items():
        c = h["criteria"]
        b0, b1 = c["batch_sizes"]
        lines += [f"### {label}", "",
                  ("Timed: `lowspace.deploy` builds (the search's default protocol on CUDA). " if c.get("deploy")
                   else "") +
                  f"cuDNN benchmark: {c.get('cudnn_benchmark')} (an integer = at most that many algorithms tried "
                  f"per convolution; true = torch's default of 10; false = no autotuning, cuDNN's heuristic "
                  f"choice). **Passed {h['passed']} of {h['trials_n']}**; "
                  f"max wall {h['max_wall_s']:.2f} s. One-off per process, not included: imports "
                  f"{h['imports_s']:.2f} s, CUDA context {h['cuda_init_s']:.2f} s, warm_up() "
                  f"{h.get('warm_up_s', 0.0):.2f} s" + ("" if "warm_up_s" in h else
                                                         " (not called in this run: the first architecture pays it)")
                  + ".", "",
                  f"| arch | params M | MACs G | precision | wall s | b{b0} ms | b{b0} spread | b{b0} build s | "
                  f"b{b1} img/s | b{b1} spread | b{b1} build s | pass |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for t in h["trials"]:
            x, y = t[f"b{b0}"], t[f"b{b1}"]
            ok = "yes" if t["pass_wall"] and t["pass_spread"] else "no"
            first = " (first)" if t["first_in_process"] and "warm_up_s" not in h else ""
            lines.append(f"| {t['arch']}{first} | {t.get('params', 0) / 1e6:.2f} | "
                         f"{t.get('macs', 0) / 1e9:.3f} | {t['precision']} | {t['wall_s']:.2f} | "
                         f"{(x['median_ms'] or 0):.3f} | {_pct(x['spread'])} | {(x['build_s'] or 0):.2f} | "
                         f"{(y['images_per_s'] or 0):,.0f} | {_pct(y['spread'])} | {(y['build_s'] or 0):.2f} | {ok} |")
        lines.append("")
    return lines


def harness_overview(runs: dict[str, dict]) -> list[str]:
    """One line per harness run: protocol, how many architectures passed, wall time range."""
    import statistics
    lines = ["| run | timed | cuDNN autotuning | passed (<= 5 s, spread <= 2 %) | wall s min / median / max | "
             "max spread |", "|---|---|---|---:|---|---:|"]
    for label, h in runs.items():
        c, walls = h["criteria"], [t["wall_s"] for t in h["trials"]]
        spreads = [t[f"b{b}"]["spread"] or 0.0 for t in h["trials"] for b in c["batch_sizes"]]
        bench = c.get("cudnn_benchmark")
        tuning = ("off (heuristic)" if bench is False else f"on ({bench} algorithms)"
                  if isinstance(bench, int) and not isinstance(bench, bool) else "on (10 algorithms)")
        lines.append(f"| {label} | {'deploy build' if c.get('deploy') else 'model'} | {tuning} | "
                     f"{h['passed']} / {h['trials_n']} | {min(walls):.2f} / {statistics.median(walls):.2f} / "
                     f"{max(walls):.2f} | {_pct(max(spreads))} |")
    return lines


def harness_agreement(harness_runs: dict[str, dict], min_archs: int = 8) -> list[str]:
    """How two harness runs of the same architectures rank them (Kendall tau) and their latency ratio, per
    precision and batch size; for every pair of runs of one protocol but the cuDNN setting (backend, deploy,
    input size) with at least ``min_archs`` architectures in common."""
    import itertools
    import statistics

    from scipy.stats import kendalltau
    runs, protocol = {}, {}
    for label, h in harness_runs.items():
        c = h["criteria"]
        protocol[label] = (c["backend"], c.get("deploy", False), c["img_size"])
        runs[label] = {(t["arch"], t["precision"], b): t[b]["median_ms"]
                           for t in h["trials"] for b in (f"b{n}" for n in h["criteria"]["batch_sizes"])
                           if t[b]["median_ms"]}
    lines = ["| run A | run B | precision | batch | archs | Kendall tau | median ms ratio A / B | min - max |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for a, b in itertools.combinations(sorted(runs), 2):
        if protocol[a] != protocol[b]:
            continue
        groups = sorted({(k[1], k[2]) for k in runs[a].keys() & runs[b].keys()},
                        key=lambda g: (g[0], int(g[1][1:])))
        for prec, batch in groups:
            keys = sorted(k for k in runs[a].keys() & runs[b].keys() if k[1:] == (prec, batch))
            if len(keys) < min_archs:
                continue
            xs, ys = [runs[a][k] for k in keys], [runs[b][k] for k in keys]
            ratios = [x / y for x, y in zip(xs, ys)]
            lines.append(f"| {a} | {b} | {prec} | {batch[1:]} | {len(keys)} | {kendalltau(xs, ys).statistic:.3f} | "
                         f"{statistics.median(ratios):.3f} | {min(ratios):.3f} - {max(ratios):.3f} |")
    return lines if len(lines) > 2 else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="directory with matrix.jsonl (and harness/*.json)")
    ap.add_argument("--out", default=None, help="where to write (default: --results)")
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out or results)
    out.mkdir(parents=True, exist_ok=True)
    rows, fps = load_rows(results)
    if not rows:
        print(f"no rows in {results}", file=sys.stderr)
        return 1
    add_counts(rows, out, args.img_size)
    from lowspace.cost.bench import write_results
    meta_file = results / "matrix.json"
    meta = json.loads(meta_file.read_text()).get("meta", {}) if meta_file.exists() else {}
    write_results(rows, out / "matrix.json", fps, meta)
    write_results([{k: v for k, v in r.items() if k not in ("info", "chunks_ms")} for r in rows], out / "matrix.csv")

    png_errors = {}
    for stem, batch, metric, title in (
            ("throughput", 200, "images_per_s", "Throughput at batch 200 vs params and MACs (higher is better)"),
            ("latency", 1, "median_ms", "Latency at batch 1 vs params and MACs (lower is better)")):
        fig = make_figure(rows, batch, metric, title)
        if fig is not None:
            err = write_figure(fig, out / stem)
            if err:
                png_errors[stem] = err
                print(f"PNG export of {stem} skipped: {err}", file=sys.stderr)

    fp = next(iter(fps.values()), {})
    remaining = (results / "remaining.txt").read_text().split() if (results / "remaining.txt").exists() else []
    twin_lines, stats = twin_table(rows)
    ratios = stats["ratios"]
    harness = load_harness_runs(results)
    lines = [
        "# bench_presets: LowFormer presets (ours and timm's) and peers on one GPU", "",
        f"Device: {fp.get('device')} (driver {fp.get('driver')}, {fp.get('gpu_memory_gib')} GiB), torch "
        f"{fp.get('torch')}, CUDA {fp.get('cuda')}, cuDNN {fp.get('cudnn')}, timm {fp.get('timm')}, Python "
        f"{fp.get('python')}, CPU {fp.get('cpu')}. Every row: random weights, {args.img_size} px, channels_last, "
        "`torch.inference_mode`, fp16 = autocast; median of CUDA-event-timed chunks (~40 ms each) after warm-up, "
        "timing stopped when the last 5 chunks were within 2% ((max-min)/median, the *spread*). "
        "MACs: LowFormer convention (conv, transposed conv, linear, attention matmuls); fvcore: also norms and "
        "pooling.", "",
        f"Command(s): see README.md. Rows: {len(rows)} measured, {len(remaining)} not yet measured.", "",
        "## Ours vs timm (same architecture): throughput ratio ours / timm", "",
        f"{stats['pairs']} pairs; p10-p90 bands overlap in {stats['overlap']}; ratio range "
        + (f"{min(ratios):.3f} - {max(ratios):.3f}" if ratios else "-")
        + ". `*` = bands do not overlap (a difference larger than the measured noise).", "",
        *twin_lines, "",
        "## Throughput, batch 200 (img/s; `!` = spread target not reached, `@bN` = OOM retry at batch N)", "",
        *speed_table(rows, 200, "images_per_s"), "",
        "## Latency, batch 1 (ms per image)", "",
        *speed_table(rows, 1, "median_ms"), "",
        "## Harness speed", "", *harness_overview(harness), "", *harness_section(harness), "",
        "### Do the runs rank architectures alike?", "",
        "Runs of the same random architectures in different processes (the cuDNN autotuning state is per "
        "process): the autotuned runs against each other show how much autotuning itself varies.", "",
        *harness_agreement(harness), "",
        "## Charts", "",
        "throughput.html / throughput.png (batch 200), latency.html / latency.png (batch 1)."
        + "".join(f"\n\nPNG export of {k} FAILED ({v}); only the HTML was written." for k, v in png_errors.items()),
    ]
    if remaining:
        lines += ["", "## Not measured yet", "", *[f"- {k}" for k in remaining]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'summary.md'}, matrix.json/csv, charts" + (" (no PNG)" if png_errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
