"""``lowspace calibrate``: measure how well short training schedules rank architectures like the full one.

Trains N architectures of a space (plus its presets) on the full schedule (the search config's proxy, two
seeds) and on candidate short schedules, all evaluated on a split held out from the training images, and
reports Kendall tau / Spearman rho with bootstrap intervals, the seed ceiling, the #params and MAC
baselines and GPU-seconds per run. It recommends the cheapest schedule that ranks well enough and writes a
search-config snippet (``OUT/recommended.yaml``). Re-running the same command continues an interrupted run.
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("calibrate", help="rank agreement of short proxy schedules with the full schedule",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SPACE_OR_CONFIG",
                   help="a bundled space (lowformer, demo, ...), a space YAML or a search config YAML")
    p.add_argument("--n", "--n-archs", type=int, default=24, dest="n_archs",
                   help="architectures drawn from the space (>= 4)")
    p.add_argument("--presets", choices=("space", "all", "none"), default="space",
                   help="space: the space's named points; all: also the 7 published LowFormer presets")
    p.add_argument("--seed", type=int, default=0, help="seed of the architecture draw and the validation split")
    p.add_argument("--schedule", action="append", default=[], metavar="NAME=key=v,key=v",
                   help="a candidate schedule as overrides of the full one (repeatable)")
    p.add_argument("--no-default-schedules", action="store_true", help="only the --schedule candidates")
    p.add_argument("--full", metavar="key=v,key=v", help="overrides of the full schedule")
    p.add_argument("--full-seeds", default="0,1", metavar="A,B", help="the full schedule's two seeds")
    p.add_argument("--candidate-seeds", default="2", metavar="S[,S...]", help="seeds of each candidate")
    p.add_argument("--data", help="data set (fashion_mnist, synthetic, a folder); default: the config's")
    p.add_argument("--val-per-class", type=int, help="training images per class held out for validation")
    p.add_argument("--target", type=float, default=0.85, help="share of the seed ceiling a schedule must reach")
    p.add_argument("--max-cost-share", type=float, default=0.2, help="largest share of the full schedule's cost")
    p.add_argument("--out", default="calibration", help="output folder (rows.jsonl, summary, plot, snippet)")
    p.add_argument("--workers", type=int, default=1, help="training processes, pinned to the GPUs round robin")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (every visible GPU) or cuda:N")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--time-limit", type=float, dest="time_limit_s", help="start no run after this many seconds")
    p.add_argument("--report-only", action="store_true", help="report the rows in --out without training")
    p.add_argument("--no-png", action="store_true", help="write the plot as HTML only")
    p.set_defaults(func=run)


def settings_from_args(args):
    """The CalibrationSettings of a parsed command line."""
    from ..search.calibrate import CalibrationSettings, parse_overrides
    schedules = {}
    for item in args.schedule:
        name, sep, rest = item.partition("=")
        if not sep or not name.strip() or "=" not in rest:
            raise ConfigError("--schedule", item, "NAME=key=value[,key=value], e.g. e3=epochs=3,resolutions=[32]")
        schedules[name.strip()] = parse_overrides(rest, f"--schedule {name.strip()}")
    data = None
    if args.data:
        data = {"dataset": args.data}
    return CalibrationSettings(
        source=args.source, n_archs=args.n_archs, presets=args.presets, seed=args.seed,
        full_seeds=_seeds("--full-seeds", args.full_seeds), candidate_seeds=_seeds("--candidate-seeds",
                                                                                   args.candidate_seeds),
        default_schedules=not args.no_default_schedules, schedules=schedules,
        full=parse_overrides(args.full, "--full") if args.full else {}, data=data,
        val_per_class=args.val_per_class, target=args.target, max_cost_share=args.max_cost_share, out=args.out,
        workers=args.workers, device=args.device, resamples=args.resamples, time_limit_s=args.time_limit_s,
        train=not args.report_only, png=not args.no_png)


def _seeds(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(flag, text, "integers separated by commas, e.g. 0,1") from None


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..search._calibrate_report import result_table
    from ..search.calibrate import calibrate

    console = Console(stderr=True)
    settings = settings_from_args(args)
    result = calibrate(settings, progress=lambda text: console.print(text, highlight=False))
    table = Table(title=f"proxy calibration: {result.archs} architectures, {settings.source}")
    for col in ("schedule", "archs", "mean top-1", "Kendall tau [95 %]", "Spearman rho [95 %]", "GPU s / run",
                "cost"):
        table.add_column(col, justify="left" if col == "schedule" else "right")
    for r in result_table(result):
        name = f"[bold]{r['schedule']}[/]" if r["recommended"] else r["schedule"]
        table.add_row(name, str(r["archs"]), r["top1"], r["tau"], r["rho"], r["gpu_s"], r["share"])
    console.print(table)
    console.print(result.message, highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    console.print(f"files in {result.out}/: " + ", ".join(p.name for p in result.files), highlight=False)
    left = result.runs.get("left", 0)
    if left:
        how = "re-run the same command" if settings.train else "run without --report-only"
        console.print(f"{left} runs not done yet: {how} to continue", highlight=False)
    return 0
