"""``lowspace calibrate``: measure how well short training schedules rank architectures like the full one.

Trains N architectures of a space (plus its presets) on the full schedule (the search config's proxy, two
seeds) and on candidate short schedules, all evaluated on a split held out from the training images, and
reports Kendall tau / Spearman rho with bootstrap intervals, the seed ceiling, the #params and MAC
baselines and GPU-seconds per run. It recommends the cheapest schedule that ranks well enough (within the
cost cap, or, when none fits it, the cheapest over it, said so) and writes search-config snippets
(``OUT/recommended.yaml``; ``OUT/recommended_promotion.yaml`` for pareto mode).
Re-running the same command continues an interrupted run.
Each flag sets one field of ``lowspace.search.calibrate.CalibrationSettings``; ``--set KEY=VALUE`` any
field (docs/calibration.md).
"""
from __future__ import annotations

import argparse
from functools import partial

from ..errors import ConfigError
from . import Flag, add_config_flags, config_overrides


def _seeds(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(flag, text, "integers separated by commas, e.g. 0,1") from None


def _overrides(flag: str, text: str) -> dict:
    from ..search.calibrate import parse_overrides
    return parse_overrides(text, flag)


FLAGS: dict[str, tuple[Flag, ...]] = {
    "": (
        Flag("--n", "n_archs", "architectures drawn from the space (besides the presets)"),
        Flag("--presets", "presets", "space: the space's named points; all: also the 7 published LowFormer presets"),
        Flag("--seed", "seed", "seed of the architecture draw and of the held-out validation split"),
        Flag("--out", "out", "output folder (rows.jsonl, summary, plot, recommended.yaml)"),
        Flag("--workers", "workers", "training processes, pinned to the visible GPUs in turn"),
        Flag("--device", "device", "auto, cpu, cuda (every visible GPU) or cuda:N"),
        Flag("--time-limit", "time_limit_s", "start no run after this many seconds (runs in flight finish)"),
        Flag("--report-only", "train", "report the rows in --out without training", const=False),
        Flag("--no-png", "png", "write the plot as HTML only", const=False),
        Flag("--cdn", "cdn", "the HTML plot loads plotly.js from its CDN (small file) instead of embedding it",
             const=True),
    ),
    "schedules and data": (
        Flag("--full", "full", "overrides of the full schedule (the config's proxy section)",
             parse=partial(_overrides, "--full"), metavar="KEY=V,..."),
        Flag("--no-default-schedules", "default_schedules", "only the --schedule candidates", const=False),
        Flag("--full-seeds", "full_seeds", "the full schedule's two seeds", parse=partial(_seeds, "--full-seeds"),
             metavar="A,B"),
        Flag("--candidate-seeds", "candidate_seeds", "seeds of each candidate",
             parse=partial(_seeds, "--candidate-seeds"), metavar="S,..."),
        Flag("--data", "data", "fashion_mnist, synthetic or a folder (replaces the config's data section)",
             parse=lambda text: {"dataset": text}, metavar="DATA"),
        Flag("--val-per-class", "val_per_class", "training images per class held out for validation"),
    ),
    "recommendation": (
        Flag("--target", "target", "share of the seed ceiling a schedule's tau must reach"),
        Flag("--max-cost-share", "max_cost_share",
             "largest share of the full schedule's GPU time (none within it: the cheapest over it, flagged)"),
        Flag("--resamples", "resamples", "bootstrap resamples for the intervals"),
    ),
}


def add_parsers(sub) -> None:
    from ..search.calibrate import CalibrationSettings
    p = sub.add_parser("calibrate", help="rank agreement of short proxy schedules with the full schedule",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SPACE_OR_CONFIG",
                   help="a bundled space (lowformer, demo, ...), a space YAML or a search config YAML")
    p.add_argument("--schedule", action="append", default=[], metavar="NAME=KEY=V,...",
                   help="a candidate schedule as overrides of the full one, e.g. e3=epochs=3,resolutions=[32] "
                        "(repeatable)")
    add_config_flags(p, CalibrationSettings, FLAGS)
    p.set_defaults(func=run)


def settings_from_args(args):
    """The CalibrationSettings of a parsed command line."""
    from ..search.calibrate import CalibrationSettings, parse_overrides
    overrides = config_overrides(args, CalibrationSettings, FLAGS)
    schedules = {}
    for item in args.schedule:
        name, sep, rest = item.partition("=")
        if not sep or not name.strip() or "=" not in rest:
            raise ConfigError("--schedule", item, "NAME=KEY=VALUE[,KEY=VALUE], e.g. e3=epochs=3,resolutions=[32]")
        schedules[name.strip()] = parse_overrides(rest, f"--schedule {name.strip()}")
    if schedules:
        overrides["schedules"] = schedules
    return CalibrationSettings.from_dict({"source": args.source}, overrides=overrides,
                                         override_source="command line")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..search._calibrate_report import result_table
    from ..search.calibrate import calibrate

    console = Console(stderr=True)
    settings = settings_from_args(args)
    result = calibrate(settings, progress=lambda text: console.print(text, highlight=False))
    table = Table(title=f"proxy calibration: {result.archs} architectures, {settings.source}")
    for col in ("schedule", "archs", "mean top-1", "Kendall tau [95 %]", "tau vs one seed", "Spearman rho [95 %]",
                "GPU s / run", "cost"):
        table.add_column(col, justify="left" if col == "schedule" else "right")
    for r in result_table(result):
        name = f"[bold]{r['schedule']}[/]" if r["recommended"] else r["schedule"]
        table.add_row(name, str(r["archs"]), r["top1"], r["tau"], r["tau_one_seed"], r["rho"], r["gpu_s"], r["share"])
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
