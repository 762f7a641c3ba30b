"""A calibration's numbers from its rows, and the files it writes: summary.json / summary.md, archs.csv,
the tau-vs-cost plot (HTML, PNG where kaleido works) and the search-config snippet of the recommendation."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml

from ._calibrate_stats import Agreement, Candidate, KnobEffect, agreement, kendall_tau, knob_effects, recommend
from .calibrate import CalibrationResult, Plan, ScheduleSummary, Summary
from .settings import FIXED_RUNG_KEYS


def collect(plan: Plan, rows: list[dict]) -> tuple[dict, dict]:
    """top-1 and GPU-seconds by schedule, architecture and seed, from the planned runs' successful rows (a run
    recorded twice counts once: the last row)."""
    wanted = {job.key: job for job in plan.jobs()}
    top1: dict[str, dict[str, dict[int, float]]] = {s.name: {} for s in plan.schedules}
    gpu: dict[str, dict[str, dict[int, float]]] = {s.name: {} for s in plan.schedules}
    for row in rows:
        job = wanted.get(row.get("key"))
        if job is None or row.get("status") != "ok" or row.get("top1") is None:
            continue
        top1[job.schedule].setdefault(job.arch_id, {})[job.seed] = float(row["top1"])
        gpu[job.schedule].setdefault(job.arch_id, {})[job.seed] = run_cost(row)
    return top1, gpu


def run_cost(row: dict) -> float:
    """The GPU-seconds of a run counting one evaluation, the final one the ranking reads: a schedule that
    evaluated every epoch (for its learning curve) is not charged for the evaluations before the last.
    NaN for a run that evaluated more than once without recording its evaluation time."""
    gpu_s = float(row.get("gpu_s") or math.nan)
    every = (row.get("schedule_config") or {}).get("eval_every") or 1
    evaluations = math.ceil((row.get("epochs_run") or 1) / every)
    if evaluations <= 1:
        return gpu_s
    if row.get("eval_s") is None:
        return math.nan
    return gpu_s - float(row["eval_s"]) * (evaluations - 1) / evaluations


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return fmean(values) if values else math.nan


def _none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else v


def summarize(plan: Plan, rows: list[dict]) -> Summary:
    """Every statistic of the calibration from the rows found so far (see ``docs/calibration.md``)."""
    s = plan.settings
    top1, gpu = collect(plan, rows)
    notes: list[str] = []
    full = top1["full"]
    ref = {a: _mean(seeds.values()) for a, seeds in full.items()}
    full_gpu = {a: _mean(seeds.values()) for a, seeds in gpu["full"].items()}
    seed_a, seed_b = s.full_seeds
    both = [a.arch_id for a in plan.archs if seed_a in full.get(a.arch_id, {}) and seed_b in full.get(a.arch_id, {})]
    ceiling = None
    if len(both) >= 3:
        ceiling = agreement([full[a][seed_a] for a in both], [full[a][seed_b] for a in both], s.resamples, s.seed)
    else:
        notes.append(f"seed ceiling not measured: {len(both)} architectures have both full-schedule seeds (need 3)")
    if len(both) < len(ref):
        notes.append(f"{len(ref) - len(both)} architectures have one full-schedule seed only; their reference "
                     f"is that seed")
    full_summary = ScheduleSummary("full", plan.full.overrides, plan.full.options,
                                   sum(len(v) for v in full.values()), len(both), _none(_mean(ref.values())),
                                   _none(_mean(full_gpu.values())), 1.0 if full_gpu else None, ceiling,
                                   ceiling.tau if ceiling else None)
    candidates = [_candidate(plan, c, top1[c.name], gpu[c.name], full, full_gpu) for c in plan.candidates]
    baselines = _baselines(plan, ref)
    ceiling_tau = ceiling.tau if ceiling else math.nan
    ranked = [Candidate(c.name, _decision_tau(c), c.cost_share if c.cost_share is not None else math.nan)
              for c in candidates]
    pick = recommend(ranked, ceiling_tau, s.target, s.max_cost_share)
    over_cap = pick is None and not any(c.agreement is None for c in candidates)
    if over_cap:  # none within the cap: the cheapest that ranks well enough at any cost, said to be over it
        pick = recommend(ranked, ceiling_tau, s.target, math.inf)
        over_cap = pick is not None
    knobs = knob_effects({c.name: c.options for c in plan.candidates},
                         {c.name: c.agreement.tau for c in candidates if c.agreement})
    message = _message(plan, candidates, ceiling, pick.name if pick else None, knobs, over_cap)
    missing = len(plan.archs) - len(ref)
    if missing:
        notes.append(f"{missing} of {len(plan.archs)} architectures have no full-schedule result yet")
    return Summary(top1, gpu, full_summary, candidates, baselines, pick.name if pick else None, message, knobs, notes,
                   over_cap)


def _decision_tau(c: ScheduleSummary) -> float:
    """The tau the recommendation compares with the ceiling: against one full seed, like the ceiling itself."""
    if c.tau_one_seed is not None and math.isfinite(c.tau_one_seed):
        return c.tau_one_seed
    return c.agreement.tau if c.agreement else math.nan


def _candidate(plan: Plan, sched, top1: dict, gpu: dict, full: dict, full_gpu: dict) -> ScheduleSummary:
    s = plan.settings
    ref = {a: _mean(seeds.values()) for a, seeds in full.items()}
    archs = [a.arch_id for a in plan.archs if a.arch_id in top1 and a.arch_id in ref]
    acc = {a: _mean(top1[a].values()) for a in archs}
    cost = {a: _mean(gpu[a].values()) for a in archs}
    agree = agreement([acc[a] for a in archs], [ref[a] for a in archs], s.resamples, s.seed) if len(archs) >= 3 \
        else None
    per_seed = []
    for seed in s.full_seeds:
        with_seed = [a for a in archs if seed in full[a]]
        if len(with_seed) >= 3:
            per_seed.append(kendall_tau([acc[a] for a in with_seed], [full[a][seed] for a in with_seed]))
    share = math.nan
    paired = [a for a in archs if math.isfinite(cost[a]) and math.isfinite(full_gpu.get(a, math.nan))]
    if paired:
        share = _mean(cost[a] for a in paired) / _mean(full_gpu[a] for a in paired)
    return ScheduleSummary(sched.name, sched.overrides, sched.options, sum(len(v) for v in top1.values()), len(archs),
                           _none(_mean(acc.values())), _none(_mean(cost.values())), _none(share), agree,
                           _none(_mean(per_seed)))


def _baselines(plan: Plan, ref: dict) -> dict[str, Agreement]:
    s = plan.settings
    archs = [a.arch_id for a in plan.archs if a.arch_id in ref and a.arch_id in plan.costs]
    if len(archs) < 3:
        return {}
    return {key: agreement([float(plan.costs[a][key]) for a in archs], [ref[a] for a in archs], s.resamples, s.seed)
            for key in ("params", "macs")}


def _message(plan: Plan, candidates: list[ScheduleSummary], ceiling: Agreement | None, pick: str | None,
             knobs: list[KnobEffect], over_cap: bool = False) -> str:
    s = plan.settings
    if ceiling is None:
        return "no recommendation yet: the seed ceiling needs both full-schedule seeds (re-run to finish)"
    target = (f"{s.target:.0%} of the seed ceiling (tau >= {s.target * ceiling.tau:.2f}) within "
              f"{s.max_cost_share:.0%} of the full schedule's GPU time")
    if pick is not None:
        text = f"no candidate reaches {target}; recommended over the cost cap: " if over_cap else "recommended: "
        text += _describe_pick(next(c for c in candidates if c.name == pick), ceiling)
        if over_cap and knobs:
            text += f"; the knob that moved tau most: {knobs[0].describe()}"
        return text
    ranked = [c for c in candidates if c.agreement and math.isfinite(c.agreement.tau)]
    pending = len(candidates) - len(ranked)
    if ceiling.tau <= 0:
        text = (f"no recommendation: the seed ceiling is {ceiling.tau:.2f}: two seeds of the full schedule do "
                f"not rank these architectures alike, so no short schedule can be judged against it")
    elif not ranked:
        return (f"no recommendation yet: no candidate schedule has results on 3 architectures (target: tau >= "
                f"{s.target * ceiling.tau:.2f}, {s.target:.0%} of the seed ceiling; re-run to finish)")
    else:
        text = f"no candidate{' measured so far' if pending else ''} reaches {target}"
        best = max(ranked, key=_decision_tau)
        share = f"{best.cost_share:.0%}" if best.cost_share is not None else "?"
        text += f"; the best is {best.name} (tau {_decision_tau(best):.2f}, {share} of the GPU time)"
        if pending:
            text += f"; {pending} candidate{'s' if pending > 1 else ''} not measured yet (re-run to finish)"
    if knobs:
        text += f"; the knob that moved tau most: {knobs[0].describe()}"
    return text


def _describe_pick(c: ScheduleSummary, ceiling: Agreement) -> str:
    a = c.agreement
    tau = _decision_tau(c)
    return (f"{c.name} (Kendall tau {tau:.2f} against one full seed = {tau / ceiling.tau:.0%} of the seed ceiling "
            f"{ceiling.tau:.2f}; {a.tau:.2f} [{a.tau_low:.2f}, {a.tau_high:.2f}] against the "
            f"mean of both seeds; over {c.archs} architectures, at {c.cost_share:.0%} of the full schedule's GPU "
            f"time)")


# ==================================================================== files
def write_outputs(plan: Plan, summary: Summary, out: Path, runs: dict[str, int]) -> CalibrationResult:
    """Write summary.json, summary.md, archs.csv, the plot and the snippet; return the result object."""
    from ..io import atomic_write_json, atomic_write_text
    files = [out / "rows.jsonl", out / "archs.json"]
    notes = list(summary.notes)
    snippet, promotion = out / "recommended.yaml", out / "recommended_promotion.yaml"
    if summary.recommended is not None:
        atomic_write_text(snippet, snippet_text(plan, summary))
        atomic_write_text(promotion, promotion_snippet_text(plan, summary))
        files += [snippet, promotion]
    else:
        for stale in (snippet, promotion):
            stale.unlink(missing_ok=True)  # a recommendation of earlier rows no longer holds
        snippet = None
    atomic_write_json(out / "summary.json", _summary_json(plan, summary, runs))
    atomic_write_text(out / "summary.md", _summary_md(plan, summary, runs))
    _write_archs_csv(plan, summary, out / "archs.csv")
    files += [out / "summary.json", out / "summary.md", out / "archs.csv"]
    plotted = [c for c in summary.candidates if c.agreement and c.cost_share is not None]
    if plotted:
        html, png, note = write_plot(plan, summary, out / "calibration.html",
                                     out / "calibration.png" if plan.settings.png else None)
        files += [p for p in (html, png) if p is not None]
        if note:
            notes.append(note)
    files = [p for p in files if p.exists()]
    return CalibrationResult(**{**vars(summary), "notes": notes}, out=out, archs=len(plan.archs), snippet=snippet,
                             files=files, runs=runs)


def _recommended_changes(plan: Plan, summary: Summary) -> tuple[Any, dict, dict]:
    """The recommended schedule, the full schedule's proxy section and the fields the former changes."""
    pick = next(c for c in plan.candidates if c.name == summary.recommended)
    changes = {k: v for k, v in pick.options.items() if plan.full.options.get(k) != v}
    return pick, {**plan.source.proxy, **plan.settings.full}, changes


def snippet_text(plan: Plan, summary: Summary) -> str:
    """The ``proxy:`` section of a search config that uses the recommended schedule."""
    pick, full, changes = _recommended_changes(plan, summary)
    stats = next(c for c in summary.candidates if c.name == pick.name)
    proxy = {**full, **changes}
    a = stats.agreement
    head = (f"# lowspace calibrate {plan.source.path}: schedule {pick.name}, Kendall tau {a.tau:.2f} "
            f"[{a.tau_low:.2f}, {a.tau_high:.2f}] against the full schedule over {a.n} architectures\n"
            f"# ({_decision_tau(stats):.2f} against one seed; seed ceiling {summary.full.agreement.tau:.2f}), "
            f"{stats.cost_share:.0%} of its GPU time per run.\n")
    body = yaml.safe_dump({"proxy": proxy}, sort_keys=False, default_flow_style=False)
    return head + _over_cap_line(plan, summary) + body


def promotion_snippet_text(plan: Plan, summary: Summary) -> str:
    """The ``proxy:`` and ``promotion:`` sections of a pareto search that screens with the recommended
    schedule and promotes to the full one: the proxy is the full schedule, the first rung the recommended
    schedule's changes to it, the last rung the full schedule itself."""
    pick, proxy, changes = _recommended_changes(plan, summary)
    rung = {k: v for k, v in changes.items() if k not in FIXED_RUNG_KEYS}
    head = (f"# lowspace calibrate {plan.source.path}: pareto mode screening with schedule {pick.name} and "
            f"promoting to the full schedule\n")
    body = yaml.safe_dump({"proxy": proxy, "early_stopping": {"kind": "promotion"},
                           "promotion": {"rungs": [rung, {}]}}, sort_keys=False, default_flow_style=False)
    return head + _over_cap_line(plan, summary) + body


def _over_cap_line(plan: Plan, summary: Summary) -> str:
    if not summary.over_cost_cap:
        return ""
    return (f"# over the cost cap: no candidate reached the target within {plan.settings.max_cost_share:.0%} of the "
            f"full schedule's GPU time; this is the cheapest that reached it\n")


def _summary_json(plan: Plan, summary: Summary, runs: dict[str, int]) -> dict[str, Any]:
    s = plan.settings
    return dict(source=plan.source.path, space=plan.source.space.name, data=plan.data_spec,
                settings={k: v for k, v in asdict(s).items() if k not in ("source",)},
                archs=len(plan.archs), full=summary.full.to_dict(),
                candidates=[c.to_dict() for c in summary.candidates],
                baselines={k: v.to_dict() for k, v in summary.baselines.items()},
                recommended=summary.recommended, over_cost_cap=summary.over_cost_cap, message=summary.message,
                knobs=[dict(asdict(k), label=k.label) for k in summary.knobs],
                runs=runs, notes=summary.notes)


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _interval(a: Agreement | None, which: str) -> str:
    if a is None:
        return "-"
    point, low, high = (getattr(a, which), getattr(a, which + "_low"), getattr(a, which + "_high"))
    return f"{_fmt(point)} [{_fmt(low)}, {_fmt(high)}]"


def _summary_md(plan: Plan, summary: Summary, runs: dict[str, int]) -> str:
    s = plan.settings
    lines = [f"# Proxy calibration: {plan.source.path}", "",
             f"{len(plan.archs)} architectures of space `{plan.source.space.name}`; validation: "
             f"{plan.data_spec['val_per_class']} training images per class held out (seed {s.seed}); "
             f"full schedule seeds {list(s.full_seeds)}, candidate seeds {list(s.candidate_seeds)}; "
             f"{s.resamples} bootstrap resamples, 95 % intervals.", "",
             f"**{summary.message}**", "",
             "Kendall tau [95 %]: against the mean of the full schedule's seeds; tau vs one seed: the mean over "
             "the full schedule's seeds of tau against that seed alone, measured like the seed ceiling (the "
             "recommendation compares this one with the ceiling).", "",
             "| schedule | overrides | archs | mean top-1 | Kendall tau [95 %] | tau vs one seed | Spearman rho [95 %] "
             "| GPU s / run | cost share |", "|:--|:--|--:|--:|--:|--:|--:|--:|--:|"]
    f = summary.full
    lines.append(f"| full (seed ceiling) | - | {f.archs} | {_fmt(f.mean_top1)} | {_interval(f.agreement, 'tau')} | "
                 f"{_fmt(f.tau_one_seed)} | {_interval(f.agreement, 'rho')} | {_fmt(f.gpu_s, '.1f')} | 100% |")
    picked = " **(recommended, over the cost cap)**" if summary.over_cost_cap else " **(recommended)**"
    for c in sorted(summary.candidates, key=lambda c: c.cost_share if c.cost_share is not None else math.inf):
        over = ", ".join(f"{k}={v}" for k, v in c.overrides.items())
        mark = picked if c.name == summary.recommended else ""
        lines.append(f"| {c.name}{mark} | {over} | {c.archs} | {_fmt(c.mean_top1)} | {_interval(c.agreement, 'tau')} "
                     f"| {_fmt(c.tau_one_seed)} | {_interval(c.agreement, 'rho')} | {_fmt(c.gpu_s, '.1f')} "
                     f"| {_fmt(c.cost_share, '.0%')} |")
    for key, a in summary.baselines.items():
        lines.append(f"| #{key} (baseline) | - | {a.n} | - | {_interval(a, 'tau')} | - | {_interval(a, 'rho')} | 0 "
                     f"| 0% |")
    if summary.knobs:
        lines += ["", "One-knob comparisons (largest tau change per knob):", ""]
        lines += [f"- {k.describe()}" for k in summary.knobs]
    lines += ["", f"Runs: {runs}"]
    if summary.notes:
        lines += [""] + [f"- note: {n}" for n in summary.notes]
    return "\n".join(lines) + "\n"


def _write_archs_csv(plan: Plan, summary: Summary, path: Path) -> None:
    from ..io import atomic_path
    s = plan.settings
    cols = ["name", "arch_id", "source", "params", "macs"] + [f"full_seed{k}" for k in s.full_seeds] + ["full_mean"]
    cols += [c.name for c in plan.candidates]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for arch in plan.archs:
            cost = plan.costs.get(arch.arch_id, {})
            full = summary.top1["full"].get(arch.arch_id, {})
            row = [arch.name, arch.arch_id, arch.source, cost.get("params"), cost.get("macs")]
            row += [full.get(k) for k in s.full_seeds] + [_none(_mean(full.values()))]
            row += [_none(_mean(summary.top1[c.name].get(arch.arch_id, {}).values())) for c in plan.candidates]
            writer.writerow(["" if v is None else v for v in row])


def tau_cost_figure(plan: Plan, summary: Summary):
    """Kendall tau (with its interval) against cost share per candidate, the seed ceiling as a band, the
    target as a dashed line, #params / MACs as dotted reference lines."""
    import plotly.graph_objects as go
    s = plan.settings
    cands = [c for c in summary.candidates if c.agreement and c.cost_share is not None]
    fig = go.Figure()
    ceiling = summary.full.agreement
    if ceiling is not None and math.isfinite(ceiling.tau):
        if math.isfinite(ceiling.tau_low):
            fig.add_hrect(y0=ceiling.tau_low, y1=ceiling.tau_high, fillcolor="green", opacity=0.12, line_width=0)
        fig.add_hline(y=ceiling.tau, line_color="green",
                      annotation_text=f"seed ceiling {ceiling.tau:.2f}", annotation_position="top left")
        fig.add_hline(y=s.target * ceiling.tau, line_dash="dash", line_color="green",
                      annotation_text=f"target {s.target:.0%} of ceiling", annotation_position="bottom left")
    for key, a in summary.baselines.items():
        if math.isfinite(a.tau):
            fig.add_hline(y=a.tau, line_dash="dot", line_color="gray",
                          annotation_text=f"#{key}: {a.tau:.2f}", annotation_position="bottom right")
    fig.add_vline(x=100 * s.max_cost_share, line_dash="dash", line_color="gray",
                  annotation_text=f"cost cap {s.max_cost_share:.0%}")
    for picked in (False, True):
        group = [c for c in cands if (c.name == summary.recommended) == picked]
        if not group:
            continue
        taus = [c.agreement.tau for c in group]
        fig.add_trace(go.Scatter(
            x=[100 * c.cost_share for c in group], y=taus, mode="markers+text", text=[c.name for c in group],
            textposition="top center", name=("recommended" + (" (over the cost cap)" if summary.over_cost_cap else ""))
            if picked else "candidate schedules (tau vs the mean of the full seeds)",
            marker=dict(size=14 if picked else 9, symbol="star" if picked else "circle",
                        color="crimson" if picked else "royalblue"),
            error_y=dict(type="data", symmetric=False,
                         array=[_gap(c.agreement.tau_high - c.agreement.tau) for c in group],
                         arrayminus=[_gap(c.agreement.tau - c.agreement.tau_low) for c in group]),
            hovertext=[f"{c.name}: tau {_interval(c.agreement, 'tau')}, rho {_interval(c.agreement, 'rho')}, "
                       f"{c.gpu_s:.1f} GPU s / run, {c.archs} archs" for c in group], hoverinfo="text"))
    alike = [c for c in cands if c.tau_one_seed is not None]
    if alike:
        fig.add_trace(go.Scatter(x=[100 * c.cost_share for c in alike], y=[c.tau_one_seed for c in alike],
                                 mode="markers", name="tau vs one full seed (like the ceiling)",
                                 marker=dict(size=9, symbol="circle-open", color="black"),
                                 hovertext=[f"{c.name}: tau {c.tau_one_seed:.2f} vs one full seed" for c in alike],
                                 hoverinfo="text"))
    fig.update_layout(title=f"Short schedules vs the full schedule: {plan.source.space.name}, {len(plan.archs)} "
                            f"architectures", xaxis_title="GPU time per run (% of the full schedule)",
                      yaxis_title="Kendall tau vs the full schedule (95 % bootstrap interval)",
                      template="plotly_white", width=900, height=560)
    return fig


def _gap(v: float) -> float:
    return max(0.0, v) if math.isfinite(v) else 0.0


def write_plot(plan: Plan, summary: Summary, html: Path, png: Path | None) -> tuple[Path, Path | None, str]:
    """Write the figure (HTML with plotly.js inline, or loading it from its CDN with ``cdn``; PNG through
    kaleido, else a note why not)."""
    from ..report.plots import write_figure
    return write_figure(tau_cost_figure(plan, summary), html, png, plotlyjs="cdn" if plan.settings.cdn else True)


def result_table(result: CalibrationResult) -> list[dict[str, Any]]:
    """One plain row per schedule (the CLI prints it)."""
    rows = []
    for c in [result.full, *sorted(result.candidates, key=lambda c: c.cost_share if c.cost_share is not None
                                   else math.inf)]:
        a = c.agreement
        rows.append(dict(schedule="full (ceiling)" if c.name == "full" else c.name, archs=c.archs,
                         top1=_fmt(c.mean_top1), tau=_interval(a, "tau"), tau_one_seed=_fmt(c.tau_one_seed),
                         rho=_interval(a, "rho"),
                         gpu_s=_fmt(c.gpu_s, ".1f"), share=_fmt(c.cost_share, ".0%"),
                         recommended=c.name == result.recommended))
    for key, a in result.baselines.items():
        rows.append(dict(schedule=f"#{key}", archs=a.n, top1="-", tau=_interval(a, "tau"), tau_one_seed="-",
                         rho=_interval(a, "rho"),
                         gpu_s="0", share="0%", recommended=False))
    return rows

