"""The speed matrix on one GPU: every preset (ours and timm's twin) and the peers, batch 1 and 200, fp16 and
fp32, cuda_graph and compile backends, channels_last, 224 px. Resumable, and optionally time-boxed.

Rows are appended to OUT/matrix.jsonl as they finish (a killed run loses at most the row in flight);
rows found in OUT/matrix.jsonl or in --resume files are skipped. With --stop-after-s the run starts no new
work after that many seconds and prints how many rows remain: run the same command again to go on.

Order: all cuda_graph rows (fast: about 1-2 s each) in this process first, then the compile rows in
priority order (fp16 b200, fp16 b1, fp32 b200, fp32 b1). Compile rows run in --compile-workers processes:
they compile concurrently (a shared build lock) but time one at a time with nobody compiling (an exclusive
timing lock that also stops new builds), so compilation overlaps while timings stay undisturbed.

Counts (params, MACs, fvcore) are not computed here (no GPU needed): render.py adds them.

    python3 experiments/bench_presets/run_matrix.py --out experiments/bench_presets/results
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import tempfile
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for lowspace

from lowspace.search import DeviceGate  # noqa: E402

PRESETS = ["b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3"]
PEERS = ["efficientvit_b1", "efficientvit_b2", "efficientvit_b3", "fastvit_sa12", "fastvit_sa24", "repvit_m1_1",
         "repvit_m1_5", "repvit_m2_3", "mobilenetv4_hybrid_medium"]
# compile rows, most informative first
COMPILE_ORDER = [("fp16", 200), ("fp16", 1), ("fp32", 200), ("fp32", 1)]


def models(presets=PRESETS, peers=PEERS):
    """(spec string, label, implementation, family, preset) for every network of the matrix."""
    out = []
    for p in presets:
        out.append((p, f"lowformer_{p}", "lowspace", "lowformer", p))
        out.append((f"timm:lowformer_{p}", f"lowformer_{p}", "timm", "lowformer", p))
    for name in peers:
        out.append((name, name, "timm", "peer", None))
    return out


def job_key(spec: str, backend: str, precision: str, batch: int) -> str:
    return f"{spec}|{backend}|{precision}|{batch}"


def plan(args):
    nets = models(args.presets, args.peers)
    jobs = []
    if "graph" in args.parts:
        for spec, label, impl, family, preset in nets:
            for precision in args.precisions:
                for batch in args.batch_sizes:
                    jobs.append(dict(spec=spec, label=label, implementation=impl, family=family, preset=preset,
                                     backend=args.graph_backend, precision=precision, batch=batch))
    if "compile" in args.parts:
        precisions = args.compile_precisions or args.precisions
        batches = args.compile_batch_sizes or args.batch_sizes
        order = [pb for pb in COMPILE_ORDER if pb[0] in precisions and pb[1] in batches]
        order += [(p, b) for p in precisions for b in batches if (p, b) not in order]
        for precision, batch in order:
            for spec, label, impl, family, preset in nets:
                jobs.append(dict(spec=spec, label=label, implementation=impl, family=family, preset=preset,
                                 backend=args.compile_backend, precision=precision, batch=batch))
    for j in jobs:
        j["key"] = job_key(j["spec"], j["backend"], j["precision"], j["batch"])
    return jobs


# ---------------------------------------------------------------------------------------------- measuring
def measure_job(job, args, build_lock=None, timing_lock=None):
    from lowspace.cost.bench import bench_row
    from lowspace.cost.measure import measure
    from lowspace.cost.spec import resolve_spec
    spec = resolve_spec(job["spec"])
    m = measure(spec, device=args.device, batch_size=job["batch"], resolution=args.img_size,
                precision=job["precision"], channels_last=True, backend=job["backend"], cache=False,
                oom_retry=True, reparam=not args.no_reparam, target_spread=args.target_spread,
                cudnn_benchmark=True, build_lock=build_lock, timing_lock=timing_lock)
    row = bench_row(spec, {}, m)
    row.update(model=job["label"], job=job["key"], family=job["family"], preset=job["preset"],
               spec=job["spec"], info=m.info, chunks_ms=m.chunks_ms)
    return row, m.fingerprint


def _worker(worker_id, args, lock_dir, jobs_q, results_q):
    import torch  # noqa: F401 - after TORCHINDUCTOR_COMPILE_THREADS is set by the parent
    gate = DeviceGate(Path(lock_dir) / "gpu.lock")  # builders share the GPU; a timer waits to have it alone
    build, timing = gate.training(), gate.timing()
    while True:
        job = jobs_q.get()
        if job is None:
            return
        try:
            row, fp = measure_job(job, args, build, timing)
        except BaseException as err:  # noqa: BLE001 - report and go on
            row, fp = dict(job=job["key"], model=job["label"], implementation=job["implementation"],
                           backend=job["backend"], precision=job["precision"], requested_batch_size=job["batch"],
                           status="error", error=f"{type(err).__name__}: {err}"), None
        results_q.put((worker_id, row, fp))


class Results:
    def __init__(self, out: Path, resume: list[Path]):
        self.path = out / "matrix.jsonl"
        self.fp_path = out / "fingerprints.json"
        self.rows: dict[str, dict] = {}
        self.fingerprints: dict[str, dict] = {}
        for f in [*resume, self.path]:
            if f.exists():
                for line in f.read_text().splitlines():
                    if line.strip():
                        row = json.loads(line)
                        self.rows[row["job"]] = row
                fps = f.with_name("fingerprints.json")
                if fps.exists():
                    self.fingerprints.update(json.loads(fps.read_text()))
        self._rewrite()

    def _rewrite(self):
        from lowspace.io import atomic_write_json, atomic_write_text
        atomic_write_text(self.path, "".join(json.dumps(r, default=str) + "\n" for r in self.rows.values()))
        atomic_write_json(self.fp_path, self.fingerprints)

    def add(self, row, fp):
        from lowspace.cost.fingerprint import fingerprint_key
        from lowspace.io import atomic_write_json
        self.rows[row["job"]] = row
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if fp:
            key = fingerprint_key(fp)
            if key not in self.fingerprints:
                self.fingerprints[key] = fp
                atomic_write_json(self.fp_path, self.fingerprints)

    def done(self, key):
        return key in self.rows


def _log(start, text):
    print(f"[{time.perf_counter() - start:6.1f}s] {text}", flush=True)


def _describe(row):
    if row.get("status") != "ok":
        return f"{row.get('status')}: {(row.get('error') or '')[:160]}"
    return (f"{row['median_ms']:.3f} ms  {row['images_per_s']:,.0f} img/s  spread {row['spread']:.1%}  "
            f"build {row['build_s']:.1f}s" + ("  (!)" if row.get("warnings") else ""))


def run_serial(jobs, results, args, start, estimate_s):
    """Measure ``jobs`` one after another in this process until --stop-after-s."""
    for job in jobs:
        left = args.stop_after_s - (time.perf_counter() - start)
        if left < estimate_s:
            return False
        row, fp = measure_job(job, args)
        results.add(row, fp)
        _log(start, f"{job['key']}: {_describe(row)}")
    return True


def run_compile_part(jobs, results, args, start):
    if not jobs:
        return True
    import torch
    torch.cuda.empty_cache()
    workers = max(1, min(args.compile_workers, len(jobs)))
    threads = max(1, (os.cpu_count() or 8) // workers)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    lock_dir = Path(tempfile.mkdtemp(prefix="bench-presets-locks-"))
    ctx = mp.get_context("spawn")
    jobs_q, results_q = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, args, str(lock_dir), jobs_q, results_q), daemon=True)
             for i in range(workers)]
    for p in procs:
        p.start()
    pending = list(jobs)
    in_flight = {}

    def dispatch():
        left = args.stop_after_s - (time.perf_counter() - start)
        if pending and left > args.compile_estimate_s:
            job = pending.pop(0)
            jobs_q.put(job)
            in_flight[job["key"]] = job
            return True
        return False

    for _ in range(workers):
        dispatch()
    hard_stop = start + args.stop_after_s + args.grace_s
    while in_flight:
        try:
            _, row, fp = results_q.get(timeout=max(1.0, min(30.0, hard_stop - time.perf_counter())))
        except queue.Empty:
            if time.perf_counter() > hard_stop or not any(p.is_alive() for p in procs):
                _log(start, f"stopping: {len(in_flight)} compile rows in flight are dropped (time limit or crash)")
                break
            continue
        in_flight.pop(row["job"], None)
        results.add(row, fp)
        _log(start, f"{row['job']}: {_describe(row)}")
        dispatch()
    for _ in procs:
        jobs_q.put(None)
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    return not pending and not in_flight


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results directory (matrix.jsonl, matrix.json, matrix.csv)")
    ap.add_argument("--resume", nargs="*", default=[], help="earlier matrix.jsonl files whose rows are kept")
    ap.add_argument("--stop-after-s", type=float, default=math.inf,
                    help="start no new work after this many seconds (default: no limit)")
    ap.add_argument("--grace-s", type=float, default=45.0, help="wait this long for rows in flight")
    ap.add_argument("--parts", nargs="+", default=["graph", "compile"], choices=["graph", "compile"])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--peers", nargs="*", default=PEERS)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "fp32"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 200])
    ap.add_argument("--compile-precisions", nargs="+", default=None, help="compile rows only (default: --precisions)")
    ap.add_argument("--compile-batch-sizes", nargs="+", type=int, default=None,
                    help="compile rows only (default: --batch-sizes)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-reparam", action="store_true",
                    help="time FastViT / RepViT in their training form (default: timm's reparameterize_model)")
    ap.add_argument("--target-spread", type=float, default=0.02)
    ap.add_argument("--graph-backend", default="cuda_graph", help="backend of the fast part (eager for a CPU test)")
    ap.add_argument("--compile-backend", default="compile", help="backend of the compiled part")
    ap.add_argument("--compile-workers", type=int, default=4, help="processes compiling concurrently (0: serial)")
    ap.add_argument("--graph-estimate-s", type=float, default=4.0, help="worst-case time of a cuda_graph row")
    ap.add_argument("--compile-estimate-s", type=float, default=75.0,
                    help="worst-case time of a compile row, compile workers competing included")
    ap.add_argument("--dry-run", action="store_true", help="print the remaining jobs and stop")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, [Path(p) for p in args.resume])
    jobs = [j for j in plan(args) if not results.done(j["key"])]
    graph_jobs = [j for j in jobs if j["backend"] == args.graph_backend]
    compile_jobs = [j for j in jobs if j["backend"] == args.compile_backend]
    _log(start, f"{len(results.rows)} rows already done; to do: {len(graph_jobs)} {args.graph_backend}, "
                f"{len(compile_jobs)} {args.compile_backend} rows")
    if args.dry_run:
        for j in jobs:
            print(j["key"])
        return 0
    if run_serial(graph_jobs, results, args, start, args.graph_estimate_s):
        if args.compile_workers > 0:
            run_compile_part(compile_jobs, results, args, start)
        else:
            run_serial(compile_jobs, results, args, start, args.compile_estimate_s)
    from lowspace.cost.bench import write_results
    rows = list(results.rows.values())
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "img_size": args.img_size,
            "channels_last": True}
    write_results(rows, out / "matrix.json", results.fingerprints, meta)
    write_results([{k: v for k, v in r.items() if k not in ("info", "chunks_ms")} for r in rows], out / "matrix.csv")
    remaining = [j["key"] for j in plan(args) if not results.done(j["key"])]
    (out / "remaining.txt").write_text("".join(k + "\n" for k in remaining))
    _log(start, f"done: {len(rows)} rows in {out}; {len(remaining)} remaining"
                + ("" if not remaining else " (run the same command again to continue)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
