"""``lowspace bench MODEL ...``: params, MACs, latency and throughput of presets, configs and timm models.

Flags follow timm's benchmark.py where they overlap (--batch-size, --img-size, --precision,
--channels-last, --results-file). Several batch sizes, precisions and backends give one row each.
"""
from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..runtime import BACKENDS, PRECISIONS
from ..errors import ConfigError
from . import CUDNN_FLAG_HELP, command_help, cudnn_setting


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help=command_help("bench"), description=__doc__)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="preset (b0 ... e3), YAML config path, timm model name (efficientvit_b1), or timm:NAME "
                        "for timm's model even where a preset has that name (timm:lowformer_b1)")
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=[1], metavar="N",
                   help="batch size(s) (default: 1); e.g. --batch-size 1 200")
    p.add_argument("--img-size", "--resolution", dest="resolution", type=int, default=None, metavar="PX",
                   help="input side (default: each model's own)")
    p.add_argument("--precision", nargs="+", default=["fp32"], metavar="P",
                   help=f"precision(s): {', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument("--backend", nargs="+", default=["eager"], metavar="B",
                   help=f"backend(s): {', '.join(BACKENDS)} (default: eager)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for compile backends (default: default)")
    p.add_argument("--deploy", action="store_true",
                   help="time the deployed model (lowspace.runtime.deploy: BN folding ...)")
    p.add_argument("--cudnn-benchmark", default=None, metavar="on|off|N", help=CUDNN_FLAG_HELP + " (default: off)")
    p.add_argument("--reparam", action="store_true",
                   help="re-parameterize re-parameterizable models first (timm's reparameterize_model: FastViT, "
                        "RepViT ...; no change for LowFormer)")
    p.add_argument("--timm", action="store_true", help="also run timm's lowformer_* twin of each preset")
    p.add_argument("--results-file", default=None, metavar="FILE", help="write the rows to FILE (.csv or .json)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the measurement cache")
    p.add_argument("--cache-path", default=None, metavar="FILE", help="measurement cache file (default: user cache)")
    p.add_argument("--isolate", action="store_true", help="measure each row in a fresh process")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run each model in N processes on the same device at once, as the official "
                        "eval_cls_model.py --jobs: one row per process (its latency under that load) and one row "
                        "with their images/s summed; --timeout bounds the N processes; never cached (default: 1)")
    p.add_argument("--prebuild", type=int, default=0, metavar="N",
                   help="first build the compiled rows (compile backends) in N processes at once, which fills "
                        "inductor's disk cache: the timed builds are then cached ones (build s), and cold_build_s "
                        "records each cold build, slowed by the others alongside (default: 0, off)")
    p.add_argument("--prebuild-only", action="store_true",
                   help="with --prebuild N: only build (fill the cache) and time nothing; --results-file gets "
                        "each compiled row's cold_build_s")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-row limit with --isolate")
    p.add_argument("--no-retry", action="store_true", help="on CUDA OOM do not retry with a halved batch")
    p.add_argument("--target-spread", type=float, default=None,
                   help="stop timing once the spread of the last chunks, (max - min) / median, is at most this "
                        "(default 0.02)")
    p.add_argument("--max-time", type=float, default=None, metavar="S", help="timing cap per row in seconds")
    p.add_argument("--chunk-ms", type=float, default=None, metavar="MS",
                   help="time per timed chunk (default: 40 on CUDA, 100 on CPU)")
    p.add_argument("--no-fvcore", action="store_true", help="skip the fvcore cross-check column (saves time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_names(flag: str, values, allowed) -> None:
    from ..errors import closest
    for v in values:
        if v not in allowed:
            hint = closest(v, allowed)
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise ConfigError(flag, v, "allowed: " + ", ".join(allowed) + extra)


def _check_files(args) -> None:
    """The results file and the cache file can be written where they are named."""
    if args.results_file:
        results = Path(args.results_file)
        if results.suffix.lower() not in (".csv", ".json"):
            raise ConfigError("--results-file", args.results_file, "a file name ending in .csv or .json")
        if not results.parent.is_dir():
            raise ConfigError("--results-file", args.results_file, f"no folder {results.parent} to write it in")
    if args.cache_path and Path(args.cache_path).is_dir():
        raise ConfigError("--cache-path", args.cache_path, "a file (the measurement cache), not a folder")


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


SPREAD_NOTE = ("ms/batch: median of the timed chunks (each the mean of many back-to-back calls); p10-p90: the "
               "10th to 90th percentile of the chunks; spread: (slowest - fastest chunk) / median, the measure the "
               "timing stops on")
OUTLIER_NOTE = "*: a few outlying chunks make the spread much wider than p10-p90"


def has_outliers(row) -> bool:
    """Whether the spread (max - min) is more than twice the p10-p90 band: a few chunks far from the rest
    (a hiccup of the machine), not a wide distribution."""
    if row["spread"] is None or row["p10_ms"] is None or not row["median_ms"]:
        return False
    band = (row["p90_ms"] - row["p10_ms"]) / row["median_ms"]
    return row["spread"] > max(2 * band, 0.01)


def results_table(rows) -> Table:
    """The terminal table of bench rows; its caption says what the timing columns are."""
    table = Table(title="lowspace bench", caption=SPREAD_NOTE, caption_justify="left")
    cols = ("model", "impl", "params M", "MACs M", "fvcore M", "px", "batch", "prec", "backend", "ms/batch",
            "p10-p90 ms", "spread", "img/s", "build s", "status")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "impl", "prec", "backend", "status") else "right",
                         no_wrap=True)
    for r in rows:
        status = r["status"] + (" (cached)" if r.get("cached") else "")
        if r["status"] == "ok" and r.get("warnings"):
            status += " !"
        batch = str(r["batch_size"])
        if r.get("requested_batch_size") not in (None, r["batch_size"]):
            batch += f" (of {r['requested_batch_size']})"
        band = "-" if r["p10_ms"] is None else f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}"
        spread = "-" if r["spread"] is None else f"{r['spread']:.1%}" + (" *" if has_outliers(r) else "")
        name = escape(model_label(r))
        table.add_row(name, r["implementation"], _fmt(r["params"], ",.2f", 1e6), _fmt(r["macs"], ",.1f", 1e6),
                      _fmt(r["fvcore_macs"], ",.1f", 1e6), str(r["resolution"]), batch, r["precision"],
                      r["backend"] + (" cl" if r["channels_last"] else "") + (" deploy" if r["deploy"] else "")
                      + (" reparam" if r.get("reparam") else ""),
                      _fmt(r["median_ms"], ".3f"), band, spread, _fmt(r["images_per_s"], ",.0f"),
                      _fmt(r["build_s"], ".2f"), status)
    if any(has_outliers(r) for r in rows):
        table.caption += "; " + OUTLIER_NOTE
    return table


def _protocol_and_timing(args):
    """The base protocol (the first precision, backend and batch size; plan() varies them) and timing."""
    from ..cost import Protocol, Timing
    from ..cost.bench import device_default
    protocol = Protocol(device=args.device or device_default(), backend=args.backend[0],
                        precision=args.precision[0], channels_last=args.channels_last,
                        batch_size=args.batch_size[0],
                        resolution=args.resolution, deploy=args.deploy, reparam=args.reparam,
                        compile_mode=args.compile_mode,
                        **({} if args.cudnn_benchmark is None else
                           {"cudnn_benchmark": cudnn_setting("--cudnn-benchmark", args.cudnn_benchmark)}))
    for batch_size in args.batch_size[1:]:  # plan() varies the batch size: each one valid before any model is built
        protocol.replace(batch_size=batch_size)
    timing = {"target_spread": args.target_spread, "max_time_s": args.max_time, "chunk_ms": args.chunk_ms}
    timing = Timing(**{k: v for k, v in timing.items() if v is not None})
    return protocol, timing


def run(args) -> int:
    from ..cost.bench import bench, plan, resolve_models, write_results
    from ..cost.fingerprint import fingerprint_key

    _check_names("--backend", args.backend, BACKENDS)
    _check_names("--precision", args.precision, PRECISIONS)
    _check_files(args)
    if args.timeout is not None and not 0 < args.timeout < math.inf:
        raise ConfigError("--timeout", args.timeout, "a number of seconds > 0")
    protocol, timing = _protocol_and_timing(args)
    specs = resolve_models(args.models, timm_twins=args.timm)
    jobs = plan(specs, protocol, args.batch_size, args.precision, args.backend)
    cache = False if args.no_cache else (args.cache_path or True)
    if not 1 <= args.jobs <= 256:
        raise ConfigError("--jobs", args.jobs, "a number of processes from 1 to 256")
    if not 0 <= args.prebuild <= 256:
        raise ConfigError("--prebuild", args.prebuild, "a number of processes from 0 (off) to 256")
    if args.prebuild_only:
        if args.prebuild < 1:
            raise ConfigError("--prebuild", args.prebuild, "at least 1 process with --prebuild-only")
        return _prebuild_only(jobs, args.prebuild, args.results_file)

    console = Console(width=max(Console().width, 170))
    err_console = Console(stderr=True)
    if args.timm and not any(s.preset for s in specs):
        err_console.print("note: --timm adds timm's twin of presets only; none of the models is a preset")
    rows, fingerprints = [], {}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=args.no_progress or not err_console.is_terminal)
    with progress:
        task = progress.add_task("bench", total=len(jobs))
        runs = bench(jobs, timing, fvcore=not args.no_fvcore, on_start=lambda job: progress.update(
            task, description=job.label), cache=cache, isolate=args.isolate, timeout_s=args.timeout,
            oom_retry=not args.no_retry, processes=args.jobs, prebuilds=args.prebuild)
        for row, m in runs:
            rows.append(row)
            if m.fingerprint:
                fingerprints[fingerprint_key(m.fingerprint)] = m.fingerprint
            if row.get("process") in (None, "all"):
                progress.advance(task)
    console.print(results_table(rows))
    if args.jobs > 1:
        console.print(f"[i/{args.jobs}]: process i of {args.jobs} running the model at once (its ms/batch is its "
                      f"latency under that load); [sum of {args.jobs}]: images/s summed, ms/batch the mean of the "
                      "processes' medians", markup=False, highlight=False)
    for r in rows:
        if r["status"] != "ok" or r["warnings"]:
            text = r["error"] or r["warnings"]
            err_console.print(f"{model_label(r)} {r['backend']} {r['precision']} b{r['requested_batch_size']}: "
                              f"{r['status']}: {text}", markup=False, highlight=False)
    if args.results_file:
        meta = {"args": {k: v for k, v in vars(args).items() if k != "func"}, "device": protocol.device}
        path = write_results(rows, args.results_file, fingerprints, meta)
        console.print(f"wrote {len(rows)} rows to {path}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


def _prebuild_only(jobs, processes: int, results_file: str | None) -> int:
    """``--prebuild-only``: build the compiled jobs, print (and write) each cold build; 1 if any failed."""
    from ..cost.bench import prebuild_rows, write_results
    rows = prebuild_rows(jobs, processes)
    if not rows:
        print("prebuild: no compiled rows (compile backends) to build")
        return 0
    for r in rows:
        seconds = r["cold_build_s"]
        print(f"prebuild: {r['model']} {r['backend']} {r['precision']} b{r['batch_size']}: "
              + ("failed (the timed run will say why)" if seconds is None else f"{seconds:.1f} s"))
    if results_file:
        write_results(rows, results_file, meta={"prebuild": processes})
    return 1 if any(r["status"] != "built" for r in rows) else 0


def model_label(row) -> str:
    """The model column: the name, and for rows of ``--jobs`` the process (``[1/4]``) or the sum."""
    process = row.get("process")
    if process is None:
        return row["model"]
    if process == "all":
        return f"{row['model']} [sum of {row['jobs']}]"
    return f"{row['model']} [{process + 1}/{row['jobs']}]"
