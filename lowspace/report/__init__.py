"""Reports of a study: tables, the Pareto front and hypervolume history as plots, front statistics over
search seeds, comparisons that respect noise, export of architectures and their final evaluation
(docs/reports.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import atomic_write_text
from .export import export_pareto, export_trial, export_trials, pareto_trials, trial_config
from .fidelity import write_fidelity
from .fronts import (STATISTICS, GroupStatistics, Reference, equal_gpu_s_table, group_statistics, hypervolume_curve,
                     format_gpu_s, hypervolume_over_gpu_s, resolve_reference)
from .significance import DEFAULT_LEVEL
from .tables import (load_peers, markdown_table, pareto_frame, peer_notes, study_objectives, trials_frame,
                     write_csv)

__all__ = ["Report", "write_report", "export_pareto", "export_trial", "export_trials", "pareto_trials",
           "trial_config", "load_peers", "markdown_table", "pareto_frame", "study_objectives", "trials_frame",
           "write_csv"]

SUMMARY_COLUMNS = ("number", "preset", "arch_id", "accuracy", "accuracy_se", "eval_images", "latency_ms",
                   "latency_spread", "images_per_s", "params", "macs", "epochs_run", "time_total_s")
_STATISTIC_NAMES = {"hypervolume": ("hypervolume", ".4f"), "front_size": ("front size", ".3g"),
                    "best_accuracy": ("best accuracy", ".4g"), "min_latency_ms": ("lowest latency (ms)", ".4g")}


@dataclass
class Report:
    """Files written by :func:`write_report`, notes (e.g. a skipped PNG, peers on another protocol), the final
    hypervolume of each study and the front statistics of each group (the search's seeds, the baseline)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hypervolume: dict[str, float] = field(default_factory=dict)
    statistics: dict[str, GroupStatistics] = field(default_factory=dict)
    reference: Reference | None = None
    equal_gpu_s: pd.DataFrame | None = None


def _as_list(studies) -> list:
    if studies is None:
        return []
    return list(studies) if isinstance(studies, (list, tuple)) else [studies]


def _baseline_label(study) -> str:
    """What a baseline study is called in reports: "random baseline", or its sampler's name ("nsga2 baseline")."""
    from ..search._resume import stored_config
    config = stored_config(study)
    if config.get("mode") == "random":
        return "random baseline"
    return f"{config['sampler']} baseline" if config.get("sampler") else "baseline"


def write_report(study, out_dir: str | Path, peers: str | Path | None = None, baseline=None,
                 baseline_name: str | None = None, png: bool = True, export: bool = False,
                 plotlyjs: bool | str = True, seeds: Sequence = (), level: float = DEFAULT_LEVEL,
                 reference: dict[str, float] | None = None) -> Report:
    """Write the study's reports into ``out_dir``.

    Files: ``trials.csv`` (every trial), ``pareto.csv``, ``summary.md`` (state counts, front statistics, the
    front, its comparisons with the presets at ``level``), ``pareto.html``/``.png``, ``hypervolume.html``/
    ``.png`` (per trial), ``hypervolume_gpu.html``/``.png`` (per GPU-second, hypervolume at equal GPU-seconds in
    the summary), ``fidelity.csv``/``.md`` (the front at each rung, for a study searched with promotion), and with
    ``export`` one YAML per Pareto architecture under ``configs/``.

    ``seeds``: other studies of the same search run with other seeds; ``baseline``: a study (or the studies of
    a baseline's seeds), called ``baseline_name`` (default: "random baseline", or "<sampler> baseline"). Every
    hypervolume uses one reference point (:mod:`.fronts`; ``reference`` overrides it, e.g.
    ``{"latency_ms": 5.0}``), and each group's front statistics get a confidence interval over its studies.
    ``plotlyjs``: see :func:`~lowspace.report.plots.write_figure`.
    """
    from .export import ExportError
    from .plots import hypervolume_figure, hypervolume_gpu_figure, pareto_figure, write_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    df = trials_frame(study)
    rep.files.append(write_csv(df, out / "trials.csv"))
    front = pareto_frame(df)
    rep.files.append(write_csv(front, out / "pareto.csv"))

    protocol = _protocol(study, df)
    peer_df = None
    if peers:
        peer_df = load_peers(peers, protocol=protocol)
        rep.notes += peer_notes(peer_df, protocol)
    fig = pareto_figure(df, peers=peer_df, title=f"{study.study_name}: accuracy vs measured latency",
                        protocol=protocol)
    objectives = study_objectives(study)
    if len(objectives) < 2:
        objectives = ["accuracy", "latency"]
    groups = {"search": {study.study_name: (study, df)}}
    groups["search"].update({s.study_name: (s, trials_frame(s)) for s in _as_list(seeds)})
    if baseline is not None:
        baseline_name = baseline_name or _baseline_label(_as_list(baseline)[0])
        groups[baseline_name] = {f"{s.study_name} ({baseline_name})": (s, trials_frame(s)) for s in _as_list(baseline)}
    everything = {name: pair for group in groups.values() for name, pair in group.items()}
    rep.reference = resolve_reference({n: p[0] for n, p in everything.items()},
                                      {n: p[1] for n, p in everything.items()}, objectives, reference)
    rep.notes += list(rep.reference.notes)
    curves = {name: hypervolume_curve(frame, objectives, rep.reference) for name, (_, frame) in everything.items()}
    rep.hypervolume = {k: (v[-1] if v else 0.0) for k, v in curves.items()}
    rep.statistics = {g: group_statistics({n: p[1] for n, p in members.items()}, objectives, rep.reference, level)
                      for g, members in groups.items()}
    hv_fig = hypervolume_figure(curves, rep.reference, title=f"Hypervolume ({', '.join(objectives)})")
    by_gpu_s = {g: {n: hypervolume_over_gpu_s(p[1], objectives, rep.reference) for n, p in members.items()}
                for g, members in groups.items()}
    rep.equal_gpu_s = equal_gpu_s_table(by_gpu_s, level=level)
    gpu_fig = hypervolume_gpu_figure(by_gpu_s, rep.reference,
                                     title=f"Hypervolume ({', '.join(objectives)}) over GPU-seconds")
    for f, stem in ((fig, "pareto"), (hv_fig, "hypervolume"), (gpu_fig, "hypervolume_gpu")):
        html, pngp, note = write_figure(f, out / f"{stem}.html", (out / f"{stem}.png") if png else None,
                                        plotlyjs=plotlyjs)
        rep.files.append(html)
        if pngp:
            rep.files.append(pngp)
        if note:
            rep.notes.append(f"{stem}: {note}")
    if export:
        try:
            rep.files.extend(export_pareto(study, out / "configs", level=level))
        except ExportError as err:
            rep.notes.append(str(err))
    atomic_write_text(out / "summary.md", _summary(study, df, front, rep, protocol, level))
    rep.files.append(out / "summary.md")
    rep.files.extend(write_fidelity(study, out))
    return rep


def _equal_gpu_s_lines(table: pd.DataFrame | None, level: float) -> list[str]:
    if table is None or table.empty:
        return []
    lines = ["", "## Hypervolume at equal GPU-seconds", "",
             "Read at fractions of the least any study spent (every trial's device seconds, as the budget counts "
             "them); `hypervolume_gpu.html` draws the curves.", "",
             "| group | studies | GPU-seconds | hypervolume |", "|---|---|---|---|"]
    for r in table.itertuples():
        cell = f"{r.hypervolume:.4f}"
        if r.studies > 1:
            cell += f" ({level * 100:g} % CI {r.ci_low:.4f} to {r.ci_high:.4f})"
        lines.append(f"| {r.group} | {r.studies} | {format_gpu_s(r.gpu_s)} | {cell} |")
    return lines


def _protocol(study, df) -> dict | None:
    """The latency protocol of the study's first complete trial."""
    done = df[df["state"] == "COMPLETE"] if not df.empty else df
    if done.empty:
        return None
    num = int(done["number"].iloc[0])
    return study.trials[num].user_attrs.get("protocol") if num < len(study.trials) else None


def _summary(study, df, front, rep: Report, protocol: dict | None, level: float) -> str:
    from .claims import claim_lines
    from ..search import outcome_counts
    from .tables import left_out

    counts = {k: n for k, n in outcome_counts(study).items() if n}
    left = left_out(df)
    lines = [f"# Study {study.study_name}", "",
             "Trials: " + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none"), "",
             f"Architectures on the plot: {len(df) - sum(left.values())} complete, feasible and distinct"
             + (" (left out: " + ", ".join(f"{n} {k}" for k, n in sorted(left.items())) + ")" if left else ""), "",
             f"Hypervolume reference point: {rep.reference.describe()}; hypervolume is normalized (higher is "
             "better).", "", "## Front statistics", ""]
    header = ["group", "studies", *(_STATISTIC_NAMES[k][0] for k in STATISTICS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, stats in rep.statistics.items():
        cells = [stats.describe(k, _STATISTIC_NAMES[k][1]) for k in STATISTICS]
        lines.append("| " + " | ".join([name, str(len(stats.per_study)), *cells]) + " |")
    if any(len(s.per_study) > 1 for s in rep.statistics.values()):
        lines += ["", f"Intervals: {level * 100:g} % Student-t confidence intervals over the studies (seeds) of a "
                      "group."]
    lines += _equal_gpu_s_lines(rep.equal_gpu_s, level)
    lines += ["", "## Pareto front (accuracy vs latency)", "",
              "accuracy_se: the binomial standard error of the proxy accuracy on its eval_images validation images; "
              "latency_spread: (max - min) / median of the timing window.", "", markdown_table(front, SUMMARY_COLUMNS)]
    claims = claim_lines(df, level)
    if claims:
        lines += [f"## Front members against the presets ({level * 100:g} % level)", "",
                  "One training seed each: \"dominates\" only where the accuracy difference is significant on the "
                  "validation images and the latency is not slower beyond its spread.", "",
                  *[f"- {c}" for c in claims], ""]
    if protocol:
        lines += ["Latency protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), ""]
    if rep.notes:
        lines += ["Notes:", *[f"- {n}" for n in rep.notes], ""]
    return "\n".join(lines)
