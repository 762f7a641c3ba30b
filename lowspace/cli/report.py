"""``lowspace pareto STUDY`` (plots, tables, front statistics) and ``lowspace export STUDY`` (YAML configs, and
with ``--retrain`` their final evaluation over several seeds on the test split).

STUDY is a storage: a SQLite study file, ``sqlite:///...``, ``postgresql+psycopg://...`` or ``journal:PATH``.
With several studies in it, pick one with ``--study-name``. Several STUDY arguments (or several
``--study-name``) are the same search run with other seeds: ``pareto`` reports the first one's front and every
front statistic with a confidence interval over them.
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import command_help

CDN_HELP = "HTML loads plotly.js from its CDN (~10 KB files) instead of embedding it (~5 MB, viewable offline)"
LEVEL_HELP = ("significance level for 'dominates' (otherwise 'within noise'), e.g. 0.95; Welch's t-test over seeds, "
              "or the binomial test on the evaluation images for one seed")


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.5 <= value < 1:
        raise ConfigError("--significance", text, "a level from 0.5 to below 1, e.g. 0.95")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("pareto", help=command_help("pareto"), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", metavar="STUDY", nargs="+",
                   help="storage URL or SQLite study file; several: the same search with other seeds")
    p.add_argument("--study-name", action="append", default=[],
                   help="study in STUDY (repeatable: several seeds in one storage, or one name per STUDY)")
    p.add_argument("--out", help="output folder (default: pareto-<study name>)")
    p.add_argument("--peers", help="`lowspace bench` results (CSV/JSON) drawn as latency reference lines")
    p.add_argument("--baseline", metavar="STUDY", nargs="+", default=[],
                   help="random-search study (or one per seed) for the hypervolume comparison")
    p.add_argument("--baseline-study-name", action="append", default=[], help="study in --baseline (repeatable)")
    p.add_argument("--reference-latency-ms", type=float, default=None,
                   help="hypervolume reference latency (default: what the studies recorded when created)")
    p.add_argument("--reference-macs", type=float, default=None, help="hypervolume reference MACs (3 objectives)")
    p.add_argument("--significance", type=_level, default=0.95, metavar="LEVEL", help=LEVEL_HELP)
    p.add_argument("--no-png", action="store_true", help="HTML only")
    p.add_argument("--cdn", action="store_true", help=CDN_HELP)
    p.set_defaults(func=run_pareto)

    e = sub.add_parser("export", help=command_help("export"), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("study", metavar="STUDY", help="storage URL or SQLite study file")
    e.add_argument("--study-name", help="study in STUDY (needed when it holds several)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, action="append", metavar="N", help="trial number (repeatable)")
    which.add_argument("--pareto", action="store_true", help="every Pareto-optimal architecture")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--recipe", help="recipe name or YAML written into the configs and used by --retrain (default: "
                                    "the search's proxy recipe, written beside each config)")
    e.add_argument("--significance", type=_level, default=0.95, metavar="LEVEL", help=LEVEL_HELP)
    final = e.add_argument_group("final evaluation")
    final.add_argument("--retrain", action="store_true",
                       help="train each exported architecture and the study's presets --repeats times and evaluate "
                            "them on the test split (final.md, final.csv, final.html; run folders in OUT/final)")
    final.add_argument("--repeats", type=int, default=None, help="seeds per architecture (default 3)")
    final.add_argument("--seed", type=int, default=0, help="first seed (then seed + 1, ...)")
    final.add_argument("--data", help="data set (default: the study's)")
    final.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    final.add_argument("--no-presets", action="store_true", help="do not retrain the study's presets")
    final.add_argument("--no-png", action="store_true", help="HTML only")
    final.add_argument("--cdn", action="store_true", help=CDN_HELP)
    e.set_defaults(func=run_export)


def load_studies(storages: list[str], names: list[str], flag: str = "--study-name") -> list:
    """The studies named on the command line: each name in one storage, one name (or none) in each storage,
    or one name per storage."""
    from ..search.storage import load_study
    if len(storages) == 1:
        return [load_study(storages[0], name) for name in (names or [None])]
    if len(names) <= 1:
        return [load_study(storage, names[0] if names else None) for storage in storages]
    if len(names) != len(storages):
        raise ConfigError(flag, names, f"one name, or one per study storage ({len(storages)})")
    return [load_study(storage, name) for storage, name in zip(storages, names)]


def run_pareto(args) -> int:
    from rich.console import Console

    from ..report import write_report

    console = Console(stderr=True)
    studies = load_studies(args.study, args.study_name)
    baseline = load_studies(args.baseline, args.baseline_study_name, "--baseline-study-name") if args.baseline else None
    study = studies[0]
    out = args.out or f"pareto-{study.study_name}"
    reference = {k: v for k, v in (("latency_ms", args.reference_latency_ms), ("macs", args.reference_macs))
                 if v is not None}
    rep = write_report(study, out, peers=args.peers, baseline=baseline, png=not args.no_png,
                       plotlyjs="cdn" if args.cdn else True, seeds=studies[1:], level=args.significance,
                       reference=reference or None)
    for path in rep.files:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"hypervolume reference: {rep.reference.describe()}", highlight=False)
    for group, stats in rep.statistics.items():
        console.print(f"hypervolume {group}: {stats.describe('hypervolume')}", highlight=False)
    for note in rep.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    return 0


def run_export(args) -> int:
    from rich.console import Console

    from ..report.export import export_pareto, export_trials
    from ..search.storage import load_study

    console = Console(stderr=True)
    if not args.retrain and (args.repeats is not None or args.data or args.no_presets):
        raise ConfigError("--repeats/--data/--no-presets", None, "options of the final evaluation: add --retrain")
    study = load_study(args.study, args.study_name)
    if args.pareto:
        paths = export_pareto(study, args.out, recipe=args.recipe, level=args.significance)
    else:
        paths = export_trials(study, args.trial, args.out, recipe=args.recipe, level=args.significance)
    for path in paths:
        recipe = path.with_suffix(".recipe.yaml")
        console.print(f"wrote {path}" + (f" and {recipe.name}" if recipe.is_file() and not args.recipe else ""),
                      highlight=False)
    if args.retrain:
        _retrain(args, study, console)
    return 0


def _retrain(args, study, console) -> None:
    """Train the exported architectures (and the presets) with several seeds, evaluate them on the test split,
    write the final report and the final accuracies into the exported configs' notes."""
    from ..report.evaluate import evaluate_final, final_notes, study_data, study_entries, write_final_report
    from ..report.export import export_trial, pareto_trials, searched_recipe

    repeats = 3 if args.repeats is None else args.repeats
    recipe = args.recipe
    if recipe is None:
        searched = searched_recipe(study)
        if searched is None:
            raise ConfigError("--recipe", None, f"study {study.study_name!r} recorded no proxy recipe; name one")
        recipe = {k: v for k, v in searched.items() if k != "dropped"}
    data = study_data(study, args.data)
    entries = study_entries(study, None if args.pareto else args.trial, presets=not args.no_presets)
    console.print(f"final evaluation: {len(entries)} architectures x {repeats} seeds on the test split of "
                  f"{data.describe()}", highlight=False)
    results = evaluate_final(entries, data, recipe, repeats=repeats, seed=args.seed, device=args.device,
                             out_dir=f"{args.out}/final", progress=lambda text: console.print(text, highlight=False))
    files, notes = write_final_report(results, args.out, f"{study.study_name}: final evaluation",
                                      level=args.significance, png=not args.no_png,
                                      plotlyjs="cdn" if args.cdn else True)
    name = recipe if isinstance(recipe, str) else recipe.get("name", "proxy")
    exported = {t.number for t in pareto_trials(study)} if args.pareto else set(args.trial)
    for result in results:
        if result.entry.trial in exported:
            export_trial(study, result.entry.trial, args.out, recipe=args.recipe, level=args.significance,
                         extra_notes=final_notes(result, results, name, args.significance))
    for result in results:
        console.print(f"{result.entry.name}: test top-1 {result.accuracy.describe(args.significance)}",
                      highlight=False)
    for path in files:
        console.print(f"wrote {path}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
