"""Benchmark tables: counts plus measurements for several networks and protocols, as flat rows.

:func:`bench` is what ``lowspace bench`` runs; :func:`bench_row` and :func:`write_results` are shared
with the scripts under ``experiments/``. :func:`measure_concurrently` times one network in several processes
running it on the same device at once (``lowspace bench --jobs N``). :func:`prebuild` builds the compiled jobs
several at once before they are timed (``lowspace bench --prebuild N``).
"""
from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, LowspaceError
from ..io import atomic_path, atomic_write_json
from ..provenance import utc_timestamp
from ..runtime import use_compile_cache
from .count import count_all
from .fingerprint import fingerprint, fingerprint_key
# the build and the timing loop of measure(), so concurrent processes follow the same protocol rules
from .measure import Measurement, build_runner, cudnn_for, is_oom, measure, spread_of, time_runner
from .protocol import COMPILE_BACKENDS, Protocol, Timing
from .spec import TIMM_PREFIX, ModelSpec, resolve_spec

__all__ = ["BenchJob", "plan", "bench", "bench_row", "prebuild", "prebuild_rows", "measure_concurrently",
           "write_results", "read_results", "ROW_FIELDS", "CONCURRENT_FIELDS"]

ROW_FIELDS = (
    "model", "implementation", "identity", "params", "macs", "fvcore_macs", "device", "device_name", "backend",
    "precision", "channels_last", "deploy", "reparam", "cudnn_benchmark", "resolution", "batch_size",
    "requested_batch_size", "status", "median_ms", "p10_ms", "p90_ms", "spread", "images_per_s", "build_s",
    "cold_build_s", "wall_s", "iterations", "cached", "warnings", "error", "measured_at", "fingerprint_key",
)
# extra columns of rows measured with several processes at once: processes running, this row's process
# (0 ... N-1, or "all" for the sum), its process id, share of its warm-up and timing during which all ran
CONCURRENT_FIELDS = ("jobs", "process", "pid", "concurrent_share")


@dataclass(frozen=True)
class BenchJob:
    """One measurement of a bench run: a network under a protocol (resolution filled in)."""

    spec: ModelSpec
    protocol: Protocol

    @property
    def label(self) -> str:
        p = self.protocol
        return (f"{self.spec.name} [{self.spec.implementation}] {p.backend} {p.precision} "
                f"b{p.batch_size} {p.resolution}px")


def resolve_models(models: Sequence[Any], timm_twins: bool = False) -> list[ModelSpec]:
    """Specs for the requested networks; with ``timm_twins`` timm's ``lowformer_*`` follows each preset."""
    if not models:
        raise ConfigError("models", [], "name at least one preset, YAML config or timm model")
    specs = []
    for m in models:
        spec = resolve_spec(m)
        specs.append(spec)
        if timm_twins and spec.preset is not None:
            specs.append(resolve_spec(f"{TIMM_PREFIX}lowformer_{spec.preset}"))
    return specs


def plan(specs: Sequence[ModelSpec], protocol: Protocol, batch_sizes: Sequence[int] = (1,),
         precisions: Sequence[str] = ("fp32",), backends: Sequence[str] = ("eager",)) -> list[BenchJob]:
    """Every (network, precision, backend, batch) job: ``protocol`` with those fields replaced, each
    combination validated before anything runs."""
    variants = [protocol.replace(precision=precision, backend=backend, batch_size=bs)
                for precision, backend, bs in itertools.product(precisions, backends, batch_sizes)]
    jobs = []
    for spec in specs:
        res = spec.resolution(protocol.resolution)
        jobs.extend(BenchJob(spec, v.replace(resolution=res)) for v in variants)
    return jobs


def bench_row(spec: ModelSpec, counts: dict[str, Any], m: Measurement) -> dict[str, Any]:
    """One flat row (``ROW_FIELDS``) of a table from a network, its counts and a measurement."""
    p = m.protocol
    return {
        "model": spec.name, "implementation": spec.implementation, "identity": m.identity,
        "params": counts.get("params"), "macs": counts.get("macs"), "fvcore_macs": counts.get("fvcore_macs"),
        "device": p.get("device"), "device_name": m.fingerprint.get("device"), "backend": p.get("backend"),
        "precision": p.get("precision"), "channels_last": p.get("channels_last"), "deploy": p.get("deploy"),
        "reparam": p.get("reparam"), "cudnn_benchmark": p.get("cudnn_benchmark"),
        "resolution": p.get("resolution"), "batch_size": m.batch_size,
        "requested_batch_size": m.requested_batch_size, "status": m.status, "median_ms": m.median_ms,
        "p10_ms": m.p10_ms, "p90_ms": m.p90_ms, "spread": m.spread, "images_per_s": m.images_per_s,
        "build_s": m.build_s, "cold_build_s": None, "wall_s": m.wall_s, "iterations": m.iterations, "cached": m.cached,
        "warnings": "; ".join(m.warnings), "error": m.error, "measured_at": m.measured_at,
        "fingerprint_key": fingerprint_key(m.fingerprint) if m.fingerprint else None,
    }


def bench(jobs: Iterable[BenchJob], timing: Timing | None = None, fvcore: bool = True,
          on_start: Callable[[BenchJob], None] | None = None, processes: int = 1, prebuilds: int = 0,
          **run_options) -> Iterator[tuple[dict[str, Any], Measurement]]:
    """Measure every job; yields (row, measurement). Counts are computed once per network and resolution.
    ``run_options`` go to :func:`~lowspace.cost.measure.measure` (cache, oom_retry, isolate, ...).

    With ``prebuilds`` > 0 the compiled jobs are first built that many at once (:func:`prebuild`); their
    rows' ``build_s`` is then a build from inductor's disk cache and ``cold_build_s`` the build before.

    With ``processes`` > 1 every job is measured by :func:`measure_concurrently` instead: one row per process,
    then their sum (``process`` "all"), with the :data:`CONCURRENT_FIELDS` columns; of ``run_options`` only
    ``timeout_s`` applies (such measurements are never cached)."""
    counts: dict[tuple[int, int], dict[str, Any]] = {}
    jobs = list(jobs)
    cold = prebuild(jobs, prebuilds) if prebuilds > 0 else [None] * len(jobs)
    for job, cold_s in zip(jobs, cold):
        if on_start is not None:
            on_start(job)
        key = (id(job.spec), job.protocol.resolution)
        if key not in counts:
            counts[key] = count_all(job.spec, job.protocol.resolution, fvcore=fvcore)
        if processes > 1:
            for row, m in _concurrent_rows(job, counts[key], timing, processes, run_options.get("timeout_s")):
                yield {**row, "cold_build_s": cold_s}, m
            continue
        m = measure(job.spec, job.protocol, timing, **run_options)
        yield {**bench_row(job.spec, counts[key], m), "cold_build_s": cold_s}, m


# ==================================================================== compiled builds ahead, several at once
def prebuild(jobs: Sequence[BenchJob], processes: int) -> list[float | None]:
    """Build the network of every compiled job (a compile backend, deployed or not) in fresh processes,
    ``processes`` at once, so that the builds of the timed runs after it come from inductor's on-disk cache:
    a cold build takes tens of seconds, and several at once take little longer than one. Returns each job's
    cold build seconds (slowed by the builds running alongside it), None for a job not built here or whose
    build failed (its timed run reports the error)."""
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 256:
        raise ConfigError("prebuild", processes, "a number of processes from 1 to 256")
    cold: list[float | None] = [None] * len(jobs)
    todo = [i for i, job in enumerate(jobs) if job.protocol.backend in COMPILE_BACKENDS]
    if not todo:
        return cold
    use_compile_cache()  # before the processes start: they and this one share inductor's cache folder
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(min(processes, len(todo)), mp_context=ctx, max_tasks_per_child=1) as pool:
        builds = {pool.submit(_build_once, jobs[i].spec, jobs[i].protocol): i for i in todo}
        for done in as_completed(builds):
            try:
                cold[builds[done]] = done.result()
            except BrokenProcessPool:  # a build crashed its process (and the pool): the timed runs will tell
                pass
    return cold


def prebuild_rows(jobs: Sequence[BenchJob], processes: int) -> list[dict[str, Any]]:
    """:func:`prebuild` of the compiled ``jobs`` as table rows (:func:`bench_row`; nothing timed): status
    ``built`` with ``cold_build_s``, or ``error``. No rows when no job is compiled."""
    compiled = [job for job in jobs if job.protocol.backend in COMPILE_BACKENDS]
    rows = []
    for job, seconds in zip(compiled, prebuild(compiled, processes)):
        p = job.protocol
        m = Measurement(status="built" if seconds is not None else "error", batch_size=p.batch_size,
                        protocol=p.record(p.resolution, job.spec.in_chans), name=job.spec.name,
                        requested_batch_size=p.batch_size,
                        error=None if seconds is not None else "the build failed (a timed run says why)")
        rows.append({**bench_row(job.spec, {}, m), "cold_build_s": seconds})
    return rows


def _build_once(spec: ModelSpec, protocol: Protocol) -> float | None:
    """One build of :func:`prebuild`, in a process of its own: its seconds, or None if it failed."""
    resolution = spec.resolution(protocol.resolution)
    try:
        with cudnn_for(protocol):
            _, info = build_runner(spec, protocol, resolution)
        return info["build_s"]
    except Exception:  # noqa: BLE001 - the timed run builds again and reports the error
        return None


def _concurrent_rows(job: BenchJob, counts: dict[str, Any], timing: Timing | None, processes: int,
                     timeout_s: float | None) -> Iterator[tuple[dict[str, Any], Measurement]]:
    runs = measure_concurrently(job.spec, job.protocol, timing, processes, timeout_s=timeout_s)
    for m in [*runs, combined(runs)]:
        row = bench_row(job.spec, counts, m)
        row.update({k: m.info.get(k) for k in CONCURRENT_FIELDS})
        yield row, m


# ==================================================================== several processes at once
_BUILD_WAIT_S = 1800.0  # how long built processes wait for the slowest build (torch.compile can take minutes)
_MIN_SHARE = 0.9  # below this share of a process's timing under the full load, its row carries a warning


def measure_concurrently(model_or_spec: Any, protocol: Protocol, timing: Timing | None = None, processes: int = 2,
                         timeout_s: float | None = None) -> list[Measurement]:
    """Latency of a network with ``processes`` processes running it on ``protocol.device`` at once, one
    :class:`Measurement` per process (the official ``eval_cls_model.py --jobs``; :func:`combined` sums them).

    Each process builds the network as :func:`~lowspace.cost.measure.measure` does; all start warming up
    together once every one is built; each times by ``timing``'s rule and then keeps running the network
    until the last one has finished timing, so every timed chunk ran while all of them were running. A
    spread above the target is a warning (measure() would time once more; here the others would have to
    as well). Never cached. ``info`` holds ``jobs``, ``process``, ``pid`` and ``concurrent_share``: the
    share of the process's warm-up and timing during which all processes were running the network.
    ``timeout_s`` bounds the whole run (then every process still running is killed: status "error").
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 256:
        raise ConfigError("processes", processes, "an integer from 1 to 256")
    spec = resolve_spec(model_or_spec)
    timing = (timing or Timing()).for_device(protocol.device_type)
    resolution = spec.resolution(protocol.resolution)
    start = time.perf_counter()
    results = _run_processes(dict(spec=spec, protocol=protocol, timing=timing, resolution=resolution), processes,
                             timeout_s)
    shares = _concurrent_shares(results)
    record = protocol.record(resolution, spec.in_chans)
    now = utc_timestamp()
    out = []
    for index, (result, share) in enumerate(zip(results, shares)):
        m = Measurement.from_dict(result["measurement"])
        m.protocol, m.fingerprint = record, result.get("fingerprint") or {}
        m.name, m.identity, m.requested_batch_size = spec.name, spec.identity(resolution), protocol.batch_size
        m.measured_at, m.wall_s = now, time.perf_counter() - start
        m.info.update(jobs=processes, process=index, pid=result.get("pid"), concurrent_share=share)
        if m.ok and share < _MIN_SHARE:
            m.warnings.append(f"only {share:.0%} of its warm-up and timing ran while all {processes} processes "
                              "ran the network")
        out.append(m)
    return out


def combined(runs: Sequence[Measurement]) -> Measurement:
    """The processes of :func:`measure_concurrently` together: images/s summed, ``median_ms`` the mean of
    their medians (as the official script reports), status ``ok`` only if every process measured."""
    first = runs[0]
    failed = [m for m in runs if not m.ok]
    total = Measurement(status=failed[0].status if failed else "ok", batch_size=first.batch_size,
                        protocol=first.protocol, fingerprint=first.fingerprint, name=first.name,
                        identity=first.identity, requested_batch_size=first.requested_batch_size,
                        measured_at=first.measured_at, wall_s=max(m.wall_s or 0.0 for m in runs),
                        error=failed[0].error if failed else None,
                        iterations=sum(m.iterations for m in runs),
                        info={"jobs": len(runs), "process": "all",
                              "concurrent_share": min(m.info.get("concurrent_share", 0.0) for m in runs)})
    if not failed:
        total.median_ms = statistics.fmean(m.median_ms for m in runs)
        total.images_per_s = sum(m.images_per_s for m in runs)
        total.build_s = max(m.build_s for m in runs)
    total.warnings = [f"process {m.info.get('process')}: {w}" for m in runs for w in m.warnings]
    return total


def _run_processes(args: dict[str, Any], processes: int, timeout_s: float | None) -> list[dict[str, Any]]:
    """Start the processes (spawned: CUDA cannot be forked), collect one result each, in process order."""
    ctx = multiprocessing.get_context("spawn")
    gate, finished = ctx.Barrier(processes), ctx.Value("i", 0)
    pipes, procs = [], []
    for _ in range(processes):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_concurrent_child, args=(sender, args, gate, finished, processes), daemon=True)
        proc.start()
        sender.close()
        pipes.append(receiver)
        procs.append(proc)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results = []
    for receiver, proc in zip(pipes, procs):
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = None
        try:
            if receiver.poll(wait):
                result = receiver.recv()
        except (EOFError, OSError):  # the process died without sending
            pass
        if result is None:
            gate.abort()
            why = (f"timed out after {timeout_s} s and was killed" if proc.is_alive()
                   else f"died (exit code {proc.exitcode}) before reporting a result")
            result = _failure(args["protocol"], "error", f"concurrent measurement process {why}")
        results.append(result)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join()
    return results


def _failure(protocol: Protocol, status: str, message: str, **window) -> dict[str, Any]:
    m = Measurement(status=status, batch_size=protocol.batch_size, error=message[:2000])
    return {"measurement": m.to_dict(), **window}


def _concurrent_child(conn, args: dict[str, Any], gate, finished, processes: int) -> None:
    try:
        result = _time_alongside(gate=gate, finished=finished, processes=processes, **args)
    except BaseException as err:  # noqa: BLE001 - report everything to the parent
        result = _failure(args["protocol"], "error", f"{type(err).__name__}: {err}")
    result.update(pid=os.getpid())
    try:
        result["fingerprint"] = fingerprint(args["protocol"].device)
    except Exception:  # noqa: BLE001 - the measurement matters more than its environment record
        result["fingerprint"] = {}
    conn.send(result)
    conn.close()


def _time_alongside(spec: ModelSpec, protocol: Protocol, timing: Timing, resolution: int, gate, finished,
                    processes: int) -> dict[str, Any]:
    """One process of :func:`measure_concurrently`: build, wait for the others, time, keep running until all
    have timed. Returns the measurement and the process's window (monotonic seconds: ``active_from`` the
    start together, ``timed_to`` the end of its timing, ``active_to`` when it stopped running the network)."""
    device = torch.device(protocol.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    counted = False

    def done() -> None:
        nonlocal counted
        if not counted:
            counted = True
            with finished.get_lock():
                finished.value += 1

    try:
        with cudnn_for(protocol):
            try:
                runner, info = build_runner(spec, protocol, resolution)
            except Exception as err:  # noqa: BLE001 - every failure becomes a result
                gate.abort()
                return _failure(protocol, "oom" if is_oom(err) else "error", f"{type(err).__name__}: {err}")
            try:
                gate.wait(_BUILD_WAIT_S)
            except threading.BrokenBarrierError:
                return _failure(protocol, "error", "another process failed before timing began")
            active_from = time.monotonic()
            try:
                chunks, iterations, stats_from, noisy = time_runner(runner, device, timing)
            except Exception as err:  # noqa: BLE001
                done()
                now = time.monotonic()
                return _failure(protocol, "oom" if is_oom(err) else "error", f"{type(err).__name__}: {err}",
                                active_from=active_from, timed_to=now, active_to=now)
            timed_to = time.monotonic()
            done()
            while finished.value < processes:  # keep the device as busy for the others as it was for us
                runner()
                sync()
            active_to = time.monotonic()
    finally:
        done()
    m = _chunk_statistics(chunks, stats_from, iterations, protocol.batch_size, info)
    if noisy:
        m.warnings.append(f"spread {m.spread:.1%} above the target {timing.target_spread:.1%} after {len(chunks)} "
                          "chunks (the numbers use every chunk)")
    return {"measurement": m.to_dict(), "active_from": active_from, "timed_to": timed_to, "active_to": active_to}


def _chunk_statistics(chunks: list[float], stats_from: int, iterations: int, batch_size: int,
                      info: dict[str, Any]) -> Measurement:
    """The statistics measure() reports, from the chunk values of one timing run."""
    values = chunks[-stats_from:]
    median = statistics.median(values)
    p10, p90 = np.percentile(values, [10, 90]).tolist()
    info = dict(info)
    return Measurement(status="ok", median_ms=median, p10_ms=p10, p90_ms=p90, spread=spread_of(values),
                       images_per_s=batch_size * 1000.0 / median if median > 0 else None, batch_size=batch_size,
                       build_s=info.pop("build_s"), iterations=iterations, chunks_ms=[round(v, 6) for v in chunks],
                       info=info)


def _concurrent_shares(results: Sequence[dict[str, Any]]) -> list[float]:
    """Per process: the share of [active_from, timed_to] that lies in the window where every process ran."""
    windows = [(r.get("active_from"), r.get("timed_to"), r.get("active_to")) for r in results]
    if any(w[0] is None for w in windows):
        return [0.0] * len(results)
    all_from = max(w[0] for w in windows)
    all_to = min(w[2] for w in windows)
    shares = []
    for begin, end, _ in windows:
        overlap = max(0.0, min(end, all_to) - max(begin, all_from))
        shares.append(round(overlap / (end - begin), 4) if end > begin else 0.0)
    return shares


def write_results(rows: Sequence[dict[str, Any]], path: str | Path,
                  fingerprints: dict[str, dict[str, Any]] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write rows atomically as CSV or JSON (by suffix). JSON also holds ``fingerprints`` (by key), ``meta`` and
    ``provenance`` (the lowspace version, commit and source hash that wrote it)."""
    from ..provenance import provenance
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_json(path, {"meta": meta or {}, "provenance": provenance(), "fingerprints": fingerprints or {},
                                 "rows": list(rows)})
    elif suffix == ".csv":
        fields = list(ROW_FIELDS) + sorted({k for r in rows for k in r} - set(ROW_FIELDS))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    else:
        raise ConfigError("results_file", str(path), "a file name ending in .csv or .json")
    return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file written by :func:`write_results` (JSON) or a JSON-lines file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise LowspaceError(f"cannot read results file {path}: {err}") from None
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        return list(json.loads(text)["rows"])
    raise ConfigError("results_file", str(path), "a .json or .jsonl file")


def device_default() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
