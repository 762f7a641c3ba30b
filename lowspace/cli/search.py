"""``lowspace search``: run (or resume) a latency-aware architecture search.

Reads a search config (``--config FILE``, see :mod:`lowspace.search.settings`) and/or flags; flags win.
Re-running the same command resumes the study. ``--workers N`` starts N local worker processes; workers on
other machines join through the same ``--storage postgresql+psycopg://...`` URL.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..errors import ConfigError
from . import CUDNN_FLAG_HELP, cudnn_setting

# flag dest -> dotted search-config key
_FLAG_KEYS = {
    "space": "space", "mode": "mode", "sampler": "sampler", "n_trials": "n_trials", "storage": "storage",
    "study_name": "study_name", "workers": "workers", "seed": "seed", "out": "out", "device": "device",
    "timeout": "timeout_s", "max_attempts": "max_attempts", "pruner": "pruner",
    "latency_device": "protocol.device", "batch_size": "protocol.batch_size",
    "latency_resolution": "protocol.resolution", "precision": "protocol.precision", "backend": "protocol.backend",
    "throughput_batch": "protocol.throughput_batch",
    "max_latency_ms": "constraints.max_latency_ms", "max_macs": "constraints.max_macs",
    "max_params": "constraints.max_params",
    "epochs": "proxy.epochs", "proxy_resolution": "proxy.resolution", "proxy_batch_size": "proxy.batch_size",
    "lr": "proxy.lr", "train_per_class": "proxy.train_per_class",
    "data": "data.dataset", "early_stopping": "early_stopping.kind", "eta": "early_stopping.eta",
    "min_epochs": "early_stopping.min_epochs", "heartbeat": "heartbeat.heartbeat_interval",
    "grace": "heartbeat.grace_period", "max_retry": "heartbeat.max_retry",
    "peers": "report.peers", "baseline": "report.baseline", "baseline_study_name": "report.baseline_study",
}


def add_parsers(sub) -> None:
    p = sub.add_parser("search", help="run or resume a latency-aware architecture search (Optuna study)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="search config YAML (space, mode, protocol, proxy, data, storage, ...)")
    p.add_argument("--space", help="bundled space (lowformer, wide, demo) or a space YAML path")
    p.add_argument("--mode", choices=("pareto", "constrained", "random"))
    p.add_argument("--sampler", choices=("tpe", "nsga2", "gp", "random"))
    p.add_argument("--objectives", help="pareto/random objectives, e.g. accuracy,latency,macs")
    p.add_argument("--n-trials", type=int, help="complete trials to reach (default 50)")
    p.add_argument("--storage", help="SQLAlchemy URL, journal:PATH or a .db path (default: ./lowspace.db)")
    p.add_argument("--study-name", help="default: <space>-<mode>")
    p.add_argument("--workers", type=int, help="local worker processes, one GPU each (or the CPU)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="write reports (Pareto HTML/PNG, CSV, summary, exported YAML) here when done")
    p.add_argument("--device", help="proxy training device: auto, cpu, cuda")
    p.add_argument("--no-presets", action="store_true", help="do not enqueue the space's preset points")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--max-attempts", type=int, help="give up after this many trials of any state")
    g = p.add_argument_group("latency protocol")
    g.add_argument("--latency-device", help="auto, cpu, cuda (default auto)")
    g.add_argument("--batch-size", type=int, help="latency batch size (default 1)")
    g.add_argument("--latency-resolution", type=int, help="input side for timing (default: the architecture's)")
    g.add_argument("--precision", help="fp32, fp16, bf16")
    g.add_argument("--backend", help="eager, cuda_graph, compile, ... (see lowspace bench)")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--deploy", action="store_true", default=None, help="time the deploy rewrite (BN folding, ...)")
    g.add_argument("--throughput-batch", type=int, help="also record images/s at this batch size")
    g.add_argument("--cudnn-benchmark", metavar="on|off|N", help=CUDNN_FLAG_HELP + " (default: off)")
    g = p.add_argument_group("constraints")
    g.add_argument("--max-latency-ms", type=float)
    g.add_argument("--max-macs", type=float)
    g.add_argument("--max-params", type=float)
    g = p.add_argument_group("proxy training")
    g.add_argument("--data", help="fashion_mnist, synthetic, or a class-folder path")
    g.add_argument("--epochs", type=int)
    g.add_argument("--proxy-resolution", help="training input side, or 'arch' for the architecture's")
    g.add_argument("--proxy-batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--train-per-class", type=int)
    g.add_argument("--early-stopping", choices=("halving", "none"), help="pareto mode's successive halving")
    g.add_argument("--eta", type=int, help="successive halving: keep 1/eta per rung")
    g.add_argument("--min-epochs", type=int, help="successive halving: first rung")
    g.add_argument("--pruner", choices=("median", "halving", "hyperband", "none"), help="constrained mode")
    g = p.add_argument_group("fault tolerance")
    g.add_argument("--heartbeat", type=int, help="heartbeat interval in seconds (RDB storages)")
    g.add_argument("--grace", type=int, help="seconds without heartbeat before a trial is failed and retried")
    g.add_argument("--max-retry", type=int)
    g = p.add_argument_group("report")
    g.add_argument("--peers", help="a `lowspace bench` results file (CSV/JSON) to overlay")
    g.add_argument("--baseline", help="a random-search study (storage) for the hypervolume comparison")
    g.add_argument("--baseline-study-name")
    g.add_argument("--no-png", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, dotted (e.g. proxy.warmup_epochs=1); repeatable")
    p.add_argument("--describe", action="store_true", help="print the search space and exit")
    p.set_defaults(func=run)


def config_from_args(args):
    """The SearchConfig of a parsed command line (config file, then flags)."""
    from ..search.settings import SearchConfig
    overrides: dict = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    if args.proxy_resolution is not None:
        overrides["proxy.resolution"] = args.proxy_resolution if args.proxy_resolution == "arch" else \
            _int_flag("--proxy-resolution", args.proxy_resolution)
    if args.objectives:
        overrides["objectives"] = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if args.no_presets:
        overrides["presets"] = False
    if args.channels_last:
        overrides["protocol.channels_last"] = True
    if args.deploy:
        overrides["protocol.deploy"] = True
    if args.cudnn_benchmark is not None:
        overrides["protocol.cudnn_benchmark"] = cudnn_setting("--cudnn-benchmark", args.cudnn_benchmark)
    if args.no_png:
        overrides["report.png"] = False
    for item in args.set:
        if "=" not in item:
            raise ConfigError("--set", item, "KEY=VALUE, e.g. proxy.epochs=2")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    if args.config:
        return SearchConfig.from_yaml(args.config, overrides)
    from ..search.settings import apply_overrides
    return SearchConfig.from_dict(apply_overrides({}, overrides))


def _int_flag(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(flag, value, "an integer or 'arch'") from None


def run(args) -> int:
    from rich.console import Console

    from ..search.space import load_space
    from ..search import run_search
    from ..search.storage import load_study

    console = Console(stderr=True)
    config = config_from_args(args)
    space = load_space(config.space)
    if args.describe:
        _describe(console, space)
        return 0
    console.print(f"[bold]lowspace search[/]: space {space.name} ({len(space.params)} parameters), mode {config.mode}, "
                  f"sampler {config.sampler_name}, {config.n_trials} complete trials, {config.workers} worker(s)",
                  highlight=False)
    summary = run_search(config, progress=True)
    console.print(f"study {summary.study_name} in {summary.storage}: "
                  + ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary.states.items()))
                  + f" ({summary.stopped_reason})", highlight=False)
    study = load_study(config.storage, summary.study_name)
    _print_front(console, study)
    if config.out:
        from ..report import write_report
        baseline = None
        if config.report.baseline:
            baseline = load_study(config.report.baseline, config.report.baseline_study)
        rep = write_report(study, config.out, peers=config.report.peers, baseline=baseline, png=config.report.png,
                           export=config.report.export == "pareto")
        console.print(f"reports in {config.out}/: " + ", ".join(sorted({p.name if p.parent == Path(config.out)
                                                                          else p.parent.name + '/'
                                                                          for p in rep.files})), highlight=False)
        for note in rep.notes:
            console.print(f"[yellow]note[/]: {note}", highlight=False)
    else:
        console.print(f"reports: lowspace pareto {summary.storage} --study-name {summary.study_name} --out DIR",
                      highlight=False)
    if summary.complete >= config.n_trials or summary.stopped_reason == "timeout":
        return 0
    console.print(f"[red]stopped before {config.n_trials} complete trials[/]: {summary.stopped_reason}", highlight=False)
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


def _print_front(console, study) -> None:
    from rich.table import Table

    from ..report.tables import pareto_frame, trials_frame
    front = pareto_frame(trials_frame(study))
    if front.empty:
        console.print("no complete trials yet")
        return
    table = Table(title="Pareto front (accuracy vs latency)")
    for col in ("trial", "arch_id", "preset", "accuracy", "latency ms", "params (M)", "MMACs"):
        table.add_column(col, justify="right")
    for _, r in front.iterrows():
        table.add_row(str(r["number"]), str(r["arch_id"]), str(r["preset"] or "") if r["preset"] == r["preset"] else "",
                      f"{r['accuracy']:.4g}", f"{r['latency_ms']:.4g}", f"{r['params'] / 1e6:.2f}",
                      f"{r['macs'] / 1e6:.1f}")
    console.print(table)
