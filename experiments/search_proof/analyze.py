"""Turn the committed studies and retraining rows into the tables, plots and numbers of
experiments/search_proof/README.md (runs on a CPU). Nothing here is tuned: every figure comes from the
committed raw files.

    python3 experiments/search_proof/analyze.py

Reads studies/{pareto,random}.db, results/retrain/{rows.jsonl,archs.json,cost.json} (cost.json: every
retrained architecture timed alone on an idle GPU, batch 200 and batch 1, on the search's protocol), the
deploy benchmark's presets run (experiments/deploy_speed/runs/presets_deploy.json: the presets on the
deploy protocol) and the bench matrix (experiments/bench_presets/results/matrix.json: the peers on the
search's protocol).
Writes results/summary.json, results/table.csv, results/front.html/png (full-schedule accuracy vs measured
latency: presets, searched architectures, peers), and the Pareto/hypervolume reports under results/pareto/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from scipy.stats import kendalltau, spearmanr  # noqa: E402

from lowspace import ArchConfig  # noqa: E402
from lowspace.cost.count import count_macs, count_params  # noqa: E402
from lowspace.pareto import hypervolume_history, pareto_mask  # noqa: E402
from lowspace.report import trials_frame, write_report  # noqa: E402
from lowspace.report.plots import write_figure  # noqa: E402

RESULTS = HERE / "results"
PEER_PROTOCOL = dict(backend="cuda_graph", precision="fp16", batch=200)


def load_studies():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {}
    for name in ("pareto", "random"):
        url = f"sqlite:///{HERE / 'studies' / f'{name}.db'}"
        studies[name] = optuna.load_study(study_name=name, storage=url)
    return studies


def _finished(study):
    return [t for t in study.trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]


def search_cost(study) -> dict:
    """Worker seconds per trial by pipeline stage (wall time inside one worker, waits included)."""
    done = _finished(study)
    stages: dict[str, float] = {}
    for t in done:
        for key, value in (t.user_attrs.get("timings") or {}).items():
            if key != "total_s":
                stages[key] = stages.get(key, 0.0) + float(value)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    return dict(trials_finished=len(done), trials_complete=complete,
                worker_seconds_per_trial_by_stage={k: v / max(1, len(done)) for k, v in sorted(stages.items())})


def gpu_cost(studies, gap_s: float = 300.0) -> dict:
    """GPU time per trial. The searches ran in several stretches (both studies at once on one GPU, 3
    workers each, and the Pareto study alone to finish it): the GPU time is the sum of the wall spans of
    those stretches, found as the periods of trial activity with no gap over ``gap_s``."""
    done = [t for s in studies.values() for t in _finished(s)]
    spans = sorted((t.datetime_start, t.datetime_complete) for t in done)
    runs = []
    for start, end in spans:
        if runs and (start - runs[-1][1]).total_seconds() <= gap_s:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    wall_s = sum((e - s).total_seconds() for s, e in runs)
    return dict(runs=[dict(start=str(s), wall_s=(e - s).total_seconds()) for s, e in runs], wall_s=wall_s,
                trials_finished=len(done), gpu_minutes_per_trial=wall_s / 60 / len(done),
                trials_per_gpu_hour=len(done) / (wall_s / 3600))


def hypervolumes(studies) -> dict:
    """Final hypervolume of both studies on one normalization: accuracy (max) and latency (min), the
    reference point being the worst accuracy and latency seen in either study."""
    frames = {k: trials_frame(s) for k, s in studies.items()}
    done = {k: f[f["state"] == "COMPLETE"] for k, f in frames.items()}
    both = pd.concat(done.values())
    ref = dict(accuracy=float(both["accuracy"].min()), latency=float(both["latency_ms"].max()))
    out = {}
    for k, f in done.items():
        pts = [(-a, lat) for a, lat in zip(f["accuracy"], f["latency_ms"])]
        hist = hypervolume_history(pts, (-ref["accuracy"], ref["latency"]))
        out[k] = dict(final=hist[-1] if hist else 0.0, complete_trials=len(f))
    out["reference_point"] = ref
    return out


def latency_by_arch(studies) -> dict[str, tuple[float, str]]:
    """arch_id -> (median ms per batch of 200, where it was measured) from the searches' own trials."""
    out = {}
    for name, study in studies.items():
        df = trials_frame(study)
        for aid, lat in zip(df["arch_id"], df["latency_ms"]):
            if isinstance(aid, str) and lat == lat and aid not in out:
                out[aid] = (float(lat), f"{name} study")
    return out


def _matrix_rows() -> list[dict]:
    path = HERE.parent / "bench_presets" / "results" / "matrix.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    return rows["rows"] if isinstance(rows, dict) else rows


def peers_rows() -> list[dict]:
    out = []
    for r in _matrix_rows():
        if r.get("family") != "peer" or r.get("status") != "ok":
            continue
        if (r.get("backend"), r.get("precision"), r.get("batch_size", r.get("batch"))) != tuple(PEER_PROTOCOL.values()):
            continue
        out.append(dict(name=r.get("model"), latency_ms=r.get("median_ms")))
    return out


def deploy_rows() -> dict[str, dict]:
    """Preset -> {batch: ms} on the deploy protocol (lowspace.deploy, compiled + CUDA graph, fp16)."""
    path = HERE.parent / "deploy_speed" / "runs" / "presets_deploy.json"
    out: dict[str, dict] = {}
    if path.exists():
        for r in json.loads(path.read_text())["rows"]:
            if r.get("variant") == "ours_deploy" and r.get("status") == "ok":
                out.setdefault(r["model"], {})[r["batch"]] = r["ms"]
    return out


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    studies = load_studies()
    rep = write_report(studies["pareto"], RESULTS / "pareto", baseline=studies["random"],
                       baseline_name="random search", png=True, export=True, plotlyjs="cdn")
    write_report(studies["random"], RESULTS / "random", png=True, plotlyjs="cdn")

    retrain = RESULTS / "retrain"
    rows = [json.loads(line) for line in (retrain / "rows.jsonl").read_text().splitlines()]
    archs = json.loads((retrain / "archs.json").read_text())["archs"]
    full = {r["arch_id"]: r for r in rows if r["schedule"] == "full"}
    short = {r["arch_id"]: r["top1"] for r in rows if r["schedule"] == "short"}
    cost = {c["arch_id"]: c for c in json.loads((retrain / "cost.json").read_text())}
    deploy = deploy_rows()
    table = []
    for a in archs:
        aid = a["arch_id"]
        cfg = ArchConfig.from_dict(a["config"])
        c = cost.get(aid, {})
        d = deploy.get(a["name"], {}) if a["source"] == "preset" else {}
        table.append(dict(name=a["name"], source=a["source"], picked="at 36 trials" if a.get("earlier") else "final",
                          arch_id=aid, params=count_params(cfg), macs=count_macs(cfg, resolution=cfg.resolution),
                          latency_ms_b200=c.get("latency_ms"), images_per_s=c.get("images_per_s"),
                          latency_ms_b1=c.get("batch1_ms"), deploy_ms_b200=d.get(200), deploy_ms_b1=d.get(1),
                          short_top1=a["short_top1"] if a["short_top1"] is not None else short.get(aid),
                          full_top1=full.get(aid, {}).get("top1")))
    df = pd.DataFrame(table).sort_values("latency_ms_b200")
    df.to_csv(RESULTS / "table.csv", index=False)
    df = df.dropna(subset=["full_top1", "latency_ms_b200"])

    # Dominance: a searched architecture with higher full-schedule accuracy at lower measured latency.
    presets = df[df["source"] == "preset"]
    searched = df[df["source"] != "preset"]
    dominating = []
    for _, s in searched.iterrows():
        beaten = [p["name"] for _, p in presets.iterrows()
                  if s["full_top1"] > p["full_top1"] and s["latency_ms_b200"] < p["latency_ms_b200"]]
        if beaten:
            dominating.append(dict(name=s["name"], arch_id=s["arch_id"], dominates=beaten))

    calib = df.dropna(subset=["short_top1", "full_top1"])
    calibration = dict(
        n=len(calib),
        kendall_short_vs_full=float(kendalltau(list(calib["short_top1"]), list(calib["full_top1"])).statistic),
        spearman_short_vs_full=float(spearmanr(list(calib["short_top1"]), list(calib["full_top1"])).statistic),
        kendall_params_vs_full=float(kendalltau(list(calib["params"]), list(calib["full_top1"])).statistic),
        spearman_params_vs_full=float(spearmanr(list(calib["params"]), list(calib["full_top1"])).statistic),
        kendall_macs_vs_full=float(kendalltau(list(calib["macs"]), list(calib["full_top1"])).statistic),
    )
    in_study = latency_by_arch(studies)
    ratios = sorted(in_study[r["arch_id"]][0] / r["latency_ms_b200"] for r in df.to_dict("records")
                    if r["arch_id"] in in_study)
    summary = dict(hypervolume=hypervolumes(studies),
                   study_vs_idle_latency=dict(n=len(ratios), median_ratio=ratios[len(ratios) // 2] if ratios else None,
                                              min_ratio=ratios[0] if ratios else None,
                                              max_ratio=ratios[-1] if ratios else None),
                   search_cost={k: search_cost(s) for k, s in studies.items()},
                   gpu_cost=gpu_cost(studies),
                   calibration=calibration, dominating=dominating,
                   full_front=[r["name"] for r, keep in zip(df.to_dict("records"),
                               pareto_mask([(-a, lat) for a, lat in zip(df["full_top1"], df["latency_ms_b200"])]))
                               if keep],
                   report_notes=rep.notes)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    fig = go.Figure()
    for source, symbol in (("preset", "star"), ("pareto", "circle"), ("random", "x")):
        part = df[df["source"] == source]
        fig.add_trace(go.Scatter(x=part["latency_ms_b200"], y=part["full_top1"], mode="markers+text",
                                 text=part["name"], textposition="top center", name=source,
                                 marker=dict(symbol=symbol, size=12)))
    for p in peers_rows():
        fig.add_vline(x=p["latency_ms"], line_dash="dot", line_color="gray", annotation_text=p["name"],
                      annotation_textangle=-90, annotation_font_size=9)
    fig.update_layout(title="Fashion-MNIST top-1 (full proxy: 64 px, 10 epochs) vs H100 latency<br>"
                            "<sup>batch 200, 224 px, fp16, channels_last, CUDA graph; dotted: peers (timm)</sup>",
                      xaxis_title="ms per batch of 200 (lower is better)", yaxis_title="top-1 (%)",
                      width=1100, height=650)
    write_figure(fig, RESULTS / "front.html", RESULTS / "front.png", plotlyjs="cdn")
    print(json.dumps(summary, indent=1, default=str))
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
