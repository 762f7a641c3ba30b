"""Reports of a study: tables, the Pareto front and hypervolume history as plots, export of architectures."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_text
from .export import export_pareto, export_trial, export_trials, pareto_trials, trial_config
from .tables import load_peers, markdown_table, pareto_frame, study_objectives, trials_frame, write_csv

__all__ = ["Report", "write_report", "export_pareto", "export_trial", "export_trials", "pareto_trials",
           "trial_config", "load_peers", "markdown_table", "pareto_frame", "study_objectives", "trials_frame", "write_csv"]

SUMMARY_COLUMNS = ("number", "preset", "arch_id", "accuracy", "latency_ms", "images_per_s", "params", "macs",
                   "epochs_run", "time_total_s")


@dataclass
class Report:
    """Files written by :func:`write_report` and notes (e.g. a skipped PNG)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hypervolume: dict[str, float] = field(default_factory=dict)


def write_report(study, out_dir: str | Path, peers: str | Path | None = None, baseline=None,
                 baseline_name: str = "random baseline", png: bool = True, export: bool = False,
                 plotlyjs: bool | str = True) -> Report:
    """Write the study's reports into ``out_dir``.

    Files: ``trials.csv`` (every trial), ``pareto.csv``, ``summary.md`` (state counts and the front),
    ``pareto.html``/``.png``, ``hypervolume.html``/``.png`` (with the ``baseline`` study if given), and
    with ``export`` one YAML per Pareto architecture under ``configs/``. ``plotlyjs``: see
    :func:`~lowspace.report.plots.write_figure`.
    """
    from .export import ExportError
    from .plots import hypervolume_curves, hypervolume_figure, pareto_figure, write_figure
    from .tables import state_counts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    df = trials_frame(study)
    rep.files.append(write_csv(df, out / "trials.csv"))
    front = pareto_frame(df)
    rep.files.append(write_csv(front, out / "pareto.csv"))

    protocol = None
    done = df[df["state"] == "COMPLETE"] if not df.empty else df
    if not done.empty:
        num = int(done["number"].iloc[0])
        protocol = study.trials[num].user_attrs.get("protocol") if num < len(study.trials) else None
    peer_df = None
    if peers:
        peer_df = load_peers(peers, protocol=protocol)
    fig = pareto_figure(df, peers=peer_df, title=f"{study.study_name}: accuracy vs measured latency",
                        protocol=protocol)
    objectives = study_objectives(study)
    if len(objectives) < 2:
        objectives = ["accuracy", "latency"]
    frames = {study.study_name: df}
    if baseline is not None:
        frames[f"{baseline.study_name} ({baseline_name})"] = trials_frame(baseline)
    curves, ref = hypervolume_curves(frames, objectives)
    rep.hypervolume = {k: (v[-1] if v else 0.0) for k, v in curves.items()}
    hv_fig = hypervolume_figure(curves, ref, title=f"Hypervolume ({', '.join(objectives)})")
    for f, stem in ((fig, "pareto"), (hv_fig, "hypervolume")):
        html, pngp, note = write_figure(f, out / f"{stem}.html", (out / f"{stem}.png") if png else None,
                                      plotlyjs=plotlyjs)
        rep.files.append(html)
        if pngp:
            rep.files.append(pngp)
        if note:
            rep.notes.append(f"{stem}: {note}")
    if export:
        try:
            rep.files.extend(export_pareto(study, out / "configs"))
        except ExportError as err:
            rep.notes.append(str(err))

    counts = state_counts(df)
    lines = [f"# Study {study.study_name}", "",
             "Trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), "",
             "Hypervolume (normalized; higher is better): "
             + ", ".join(f"{k} {v:.4f}" for k, v in rep.hypervolume.items()), "",
             "## Pareto front (accuracy vs latency)", "", markdown_table(front, SUMMARY_COLUMNS)]
    if protocol:
        lines += ["Latency protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), ""]
    if rep.notes:
        lines += ["Notes:", *[f"- {n}" for n in rep.notes], ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))
    rep.files.append(out / "summary.md")
    return rep
