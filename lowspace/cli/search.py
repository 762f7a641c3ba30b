"""``lowspace search``: run (or resume) a latency-aware architecture search.

Reads a search config (``--config FILE``, see :mod:`lowspace.search.settings`; without one, the defaults),
then the flags: each flag below is a shorthand for one config field, and ``--set KEY=VALUE`` sets any field
by its dotted key (``--set proxy.base_lr=0.003``); flags and ``--set`` win over the file (docs/config.md).
Re-running the same command resumes the study. ``--workers N`` starts N local worker processes; workers on
other machines join through the same ``--storage postgresql+psycopg://...`` URL.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from . import CUDNN_FLAG_HELP, Flag, add_config_flags, config_overrides, command_help, cudnn_setting


def _names(text: str) -> list[str]:
    return [o.strip() for o in text.split(",") if o.strip()]


# The common flags, each a shorthand for one search-config field; `--set KEY=VALUE` reaches every other one.
FLAGS: dict[str, tuple[Flag, ...]] = {
    "": (
        Flag("--space", "space", "bundled space (lowformer, wide, demo) or a space YAML path"),
        Flag("--mode", "mode", "pareto front, constrained single objective, or random baseline"),
        Flag("--sampler", "sampler", "Optuna sampler (null: tpe, or random for --mode random)"),
        Flag("--objectives", "objectives", "pareto/random objectives, e.g. accuracy,latency,macs", parse=_names,
             metavar="LIST"),
        Flag("--n-trials", "n_trials", "complete trials to reach"),
        Flag("--storage", "storage", "SQLAlchemy URL, journal:PATH or a .db path (null: ./lowspace.db)"),
        Flag("--study-name", "study_name", "study name (null: <space>-<mode>)"),
        Flag("--workers", "workers", "local worker processes, one GPU each (or the CPU)"),
        Flag("--seed", "seed", "search seed (a worker's sampler seed: from it, the worker and the trials so far)"),
        Flag("--out", "out", "write reports (Pareto HTML/PNG, CSV, summary, exported YAML) here when done"),
        Flag("--device", "device", "proxy training device: auto, cpu, cuda, cuda:N"),
        Flag("--timeout", "timeout_s", "stop starting trials after this many seconds"),
        Flag("--val-per-class", "proxy.val_per_class", "validation images per class held out from the "
                                                        "training set (the test set is never searched on)"),
        Flag("--budget-gpu-s", "budget_gpu_s", "stop starting trials once the trials (all rungs) spent this many "
                                               "GPU-seconds"),
        Flag("--no-presets", "presets", "do not enqueue the space's preset points", const=False),
    ),
    "latency protocol": (
        Flag("--latency-device", "protocol.device", "auto, cpu, cuda, cuda:N"),
        Flag("--backend", "protocol.backend", "eager, cuda_graph, compile, ... (see lowspace bench)"),
        Flag("--precision", "protocol.precision", "weights and activations while timing"),
        Flag("--cudnn-benchmark", "protocol.cudnn_benchmark", CUDNN_FLAG_HELP,
             parse=partial(cudnn_setting, "--cudnn-benchmark"), metavar="on|off|N"),
    ),
    "constraints": (
        Flag("--max-latency-ms", "constraints.max_latency_ms", "reject candidates slower than this"),
        Flag("--max-macs", "constraints.max_macs", "reject candidates with more MACs (before timing)"),
        Flag("--max-params", "constraints.max_params", "reject candidates with more parameters (before timing)"),
    ),
    "proxy training": (
        Flag("--data", "data.dataset", "fashion_mnist, synthetic, or a class-folder path"),
        Flag("--epochs", "proxy.epochs", "proxy training epochs"),
        Flag("--early-stopping", "early_stopping.kind",
             "pareto mode: promotion over rungs up to the proxy schedule, halving within it, or none"),
    ),
    "report": (
        Flag("--no-png", "report.png", "no PNG plots (HTML only)", const=False),
        Flag("--cdn", "report.cdn", "HTML loads plotly.js from its CDN (small files) instead of embedding it",
             const=True),
    ),
}


def add_parsers(sub) -> None:
    p = sub.add_parser("search", help=command_help("search"), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="search config YAML (space, mode, protocol, proxy, data, storage, ...)")
    from ..search.settings import SearchConfig
    add_config_flags(p, SearchConfig, FLAGS)
    p.add_argument("--describe", action="store_true", help="print the search space and exit")
    p.set_defaults(func=run)


def config_from_args(args):
    """The SearchConfig of a parsed command line: the config file (or the defaults), then the flags, then
    each ``--set``."""
    return _read_config(args)[0]


def _read_config(args):
    """(the SearchConfig, the config file's YAML document or None, the overrides from the flags and --set)."""
    from ..config import read_yaml
    from ..search.settings import SearchConfig
    overrides = config_overrides(args, SearchConfig, FLAGS)
    if not args.config:
        return SearchConfig.from_dict({}, overrides, override_source="command line"), None, overrides
    doc = read_yaml(Path(args.config), what=SearchConfig.config_kind)
    return SearchConfig.from_document(doc, overrides, override_source="command line"), doc, overrides


def _preflight(space, config, doc, overrides):
    """Check what every trial needs (devices, proxy schedule, latency protocol, data set), the storage and
    where the reports go, so that a bad value stops the command before a study is created or resumed.
    Returns the checked trial pipeline and notes for the user. Errors name the flag or the config file line
    they come from."""
    from ..errors import ConfigError
    from ..search._setup import storage_for, validate_search
    try:
        _check_outputs(config)
        checked = validate_search(config, space)
        storage_for(config)  # a storage that cannot be opened, before the run is announced
        return checked
    except ConfigError as err:
        if err.source is None and any(err.path == k or err.path.startswith(k + ".") for k in overrides):
            raise err.with_source("command line") from None
        raise (doc.locate(err) if doc is not None else err) from None


def _check_outputs(config) -> None:
    from ..errors import ConfigError
    if config.out and Path(config.out).exists() and not Path(config.out).is_dir():
        raise ConfigError("out", config.out, "a folder for the reports; this is a file")
    peers = config.report.peers
    if peers and not Path(peers).is_file():
        raise ConfigError("report.peers", peers, "no such file; a lowspace bench results file (.csv or .json)")


def run(args) -> int:
    from rich.console import Console

    from ..search import run_search
    from ..search.storage import load_study

    console = Console(stderr=True)
    config, doc, overrides = _read_config(args)
    space = config.search_space()
    if args.describe:
        _describe(console, space)
        return 0
    pipeline, notes = _preflight(space, config, doc, overrides)
    console.print(f"[bold]lowspace search[/]: space {space.name} ({len(space.params)} parameters), mode {config.mode}, "
                  f"sampler {config.sampler_name}, {config.n_trials} complete trials, {config.workers} worker(s)",
                  highlight=False)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    # one worker in this process reuses the checked pipeline (the data set is loaded once)
    reuse = dict(engines=pipeline.engines, data=pipeline.data) if config.workers == 1 else {}
    summary = run_search(config, progress=True, **reuse)
    console.print(f"study {summary.study_name} in {summary.storage}: {summary.stopped_reason}", highlight=False)
    study = load_study(config.storage, summary.study_name)
    _print_front(console, study)
    if config.out:
        from ..report import write_report
        baseline = None
        if config.report.baseline:
            baseline = load_study(config.report.baseline, config.report.baseline_study)
        rep = write_report(study, config.out, peers=config.report.peers, baseline=baseline, png=config.report.png,
                           export=config.report.export == "pareto", plotlyjs="cdn" if config.report.cdn else True,
                           level=config.report.significance)
        console.print(f"reports in {config.out}/: " + ", ".join(sorted({p.name if p.parent == Path(config.out)
                                                                          else p.parent.name + '/'
                                                                          for p in rep.files})), highlight=False)
        for note in rep.notes:
            console.print(f"[yellow]note[/]: {note}", highlight=False)
    else:
        console.print(f"reports: lowspace pareto {summary.storage} --study-name {summary.study_name} --out DIR",
                      highlight=False)
    if summary.ok:  # n_trials, or the timeout, max_attempts or budget the user set
        return 0
    console.print(f"[red]stopped before {config.n_trials} complete trials[/]: {summary.stopped_reason}",
                  highlight=False)
    return 1


def _describe(console, space) -> None:
    from rich.table import Table
    table = Table(title=f"space {space.name}: {space.description or ''}".strip())
    for col in ("parameter", "options", "writes", "when"):
        table.add_column(col)
    for r in space.summary():
        table.add_row(r["name"], r["options"], r["writes"], r["when"])
    console.print(table)
    if space.points:
        console.print("points: " + ", ".join(f"{n} ({space.build(v).arch_id})" for n, v in space.points.items()))
    n = 1000
    faults = space.invalid_draws(n)
    if faults:
        console.print(f"{sum(faults.values())} of {n} random draws are invalid architectures (their trials fail "
                      "at once), by field: " + ", ".join(f"{k} {v}" for k, v in faults.most_common()), highlight=False)
    else:
        console.print(f"all of {n} random draws are valid architectures", highlight=False)


def _print_front(console, study) -> None:
    from rich.table import Table

    from ..report.tables import pareto_frame, trials_frame
    front = pareto_frame(trials_frame(study))
    if front.empty:
        console.print("no complete trials yet")
        return
    table = Table(title="Pareto front (accuracy vs latency)")
    for col in ("trial", "arch_id", "preset", "accuracy ± binomial SE", "latency ms", "params (M)", "MMACs"):
        table.add_column(col, justify="right")
    for _, r in front.iterrows():
        se = f" ± {r['accuracy_se']:.2g}" if r["accuracy_se"] == r["accuracy_se"] else ""
        table.add_row(str(r["number"]), str(r["arch_id"]), str(r["preset"] or "") if r["preset"] == r["preset"] else "",
                      f"{r['accuracy']:.4g}{se}", f"{r['latency_ms']:.4g}", f"{r['params'] / 1e6:.2f}",
                      f"{r['macs'] / 1e6:.1f}")
    console.print(table)
