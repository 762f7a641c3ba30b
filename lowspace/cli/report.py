"""``lowspace pareto STUDY`` (plots, tables, hypervolume) and ``lowspace export STUDY`` (YAML configs).

STUDY is a storage: a SQLite study file, ``sqlite:///...``, ``postgresql+psycopg://...`` or ``journal:PATH``.
With several studies in it, pick one with ``--study-name``.
"""
from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("pareto", help="Pareto front, hypervolume and trial tables of a study (HTML, PNG, CSV)")
    p.add_argument("study", metavar="STUDY", help="storage URL or SQLite study file")
    p.add_argument("--study-name")
    p.add_argument("--out", help="output folder (default: pareto-<study name>)")
    p.add_argument("--peers", help="`lowspace bench` results (CSV/JSON) drawn as latency reference lines")
    p.add_argument("--baseline", metavar="STUDY", help="random-search study for the hypervolume comparison")
    p.add_argument("--baseline-study-name")
    p.add_argument("--no-png", action="store_true", help="HTML only")
    p.add_argument("--cdn", action="store_true",
                   help="HTML loads plotly.js from its CDN (~10 KB files) instead of embedding it (~5 MB, offline)")
    p.set_defaults(func=run_pareto)

    e = sub.add_parser("export", help="write trials' architectures as YAML configs that `lowspace train` reads")
    e.add_argument("study", metavar="STUDY", help="storage URL or SQLite study file")
    e.add_argument("--study-name")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, action="append", metavar="N", help="trial number (repeatable)")
    which.add_argument("--pareto", action="store_true", help="every Pareto-optimal architecture")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--recipe", help="recipe name written into the configs (default: the space's / preset's)")
    e.set_defaults(func=run_export)


def run_pareto(args) -> int:
    from rich.console import Console

    from ..report import write_report
    from ..search.storage import load_study

    console = Console(stderr=True)
    study = load_study(args.study, args.study_name)
    baseline = load_study(args.baseline, args.baseline_study_name) if args.baseline else None
    out = args.out or f"pareto-{study.study_name}"
    rep = write_report(study, out, peers=args.peers, baseline=baseline, png=not args.no_png,
                       plotlyjs="cdn" if args.cdn else True)
    for path in rep.files:
        console.print(f"wrote {path}", highlight=False)
    for name, hv in rep.hypervolume.items():
        console.print(f"hypervolume {name}: {hv:.4f}", highlight=False)
    for note in rep.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    return 0


def run_export(args) -> int:
    from rich.console import Console

    from ..report.export import export_pareto, export_trials
    from ..search.storage import load_study

    console = Console(stderr=True)
    study = load_study(args.study, args.study_name)
    if args.pareto:
        paths = export_pareto(study, args.out, recipe=args.recipe)
    else:
        paths = export_trials(study, args.trial, args.out, recipe=args.recipe)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    return 0
