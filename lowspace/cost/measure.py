"""Latency and throughput of a network under a :class:`~lowspace.cost.protocol.Protocol`, with adaptive
repeats, OOM handling and a cache. docs/measurement.md describes the method; in short:

1. The network is built on the device (random weights) and prepared by its backend (or deployed, with
   ``deploy=True``); graph-captured backends check their first replay against the eager output.
2. Warm-up for ``warmup_ms``, which also estimates one call's time.
3. Timing in chunks of back-to-back calls sized to about ``chunk_ms``, until the spread of the last
   ``min_chunks`` chunk values is within ``target_spread`` (or a cap is reached, with a warning).

A CUDA out-of-memory error gives ``status="oom"`` (with ``oom_retry`` the batch is halved until it fits);
any other failure while building or running gives ``status="error"``. Invalid arguments raise
:class:`~lowspace.errors.ConfigError` before anything runs. ``isolate=True`` measures in a fresh process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import multiprocessing
import signal
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from ..errors import ConfigError, unknown_key_error
from ..provenance import utc_timestamp
from ..runtime import Runner, cudnn_autotuning, prepare
from .cache import CacheError, MeasurementCache, protocol_key
from .fingerprint import fingerprint, fingerprint_key
from .protocol import COMPILE_BACKENDS, PROTOCOL_FIELDS, TIMING_FIELDS, Protocol, Timing, split_fields
from .spec import ModelSpec, resolve_spec

__all__ = ["Measurement", "measure", "resolve_protocol", "warm_up", "spread_of", "RUN_OPTIONS"]

@dataclass
class Measurement:
    """The result of :func:`measure` (all times in milliseconds per batch)."""

    status: str  # "ok" | "oom" | "error"
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    spread: float | None = None
    images_per_s: float | None = None
    batch_size: int = 1
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    build_s: float | None = None
    wall_s: float | None = None
    error: str | None = None
    cached: bool = False
    warnings: list[str] = field(default_factory=list)
    name: str | None = None
    identity: str | None = None
    requested_batch_size: int | None = None
    iterations: int = 0
    chunks_ms: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    measured_at: str | None = None
    noisy: bool = False  # the spread stayed above the target in two measurements

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def spread_of(values: list[float]) -> float:
    """(max - min) / median: the spread used for the stopping rule and reported."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else float("inf")


def _open_cache(cache) -> MeasurementCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, MeasurementCache):
        return cache
    if cache is True:
        return MeasurementCache()
    if isinstance(cache, (str, Path)):
        return MeasurementCache(cache)
    raise ConfigError("cache", cache, "True, False, a path or a MeasurementCache")


def _deploy(model, **kwargs):
    from ..runtime import deploy
    return deploy(model, **kwargs)


RUN_OPTIONS = ("cache", "oom_retry", "isolate", "timeout_s", "timing_lock", "build_lock", "cache_key")


def resolve_protocol(protocol: Protocol | None = None, timing: Timing | None = None, where: str = "measure",
                     **fields) -> tuple[Protocol, Timing]:
    """``protocol`` and ``timing`` (defaults where None) with keyword ``fields`` applied to the one that
    owns each; an unknown name is a ConfigError at ``where.NAME`` naming the valid ones."""
    if protocol is not None and not isinstance(protocol, Protocol):
        raise ConfigError("protocol", protocol, "a lowspace.cost.Protocol, or keyword arguments such as "
                                                "device='cuda', batch_size=200")
    if timing is not None and not isinstance(timing, Timing):
        raise ConfigError("timing", timing, "a lowspace.cost.Timing, or keyword arguments such as "
                                            "target_spread=0.02")
    protocol_fields, timing_fields, unknown = split_fields(fields)
    if unknown:
        raise unknown_key_error(where, next(iter(unknown)), PROTOCOL_FIELDS + TIMING_FIELDS + RUN_OPTIONS)
    protocol = Protocol(**protocol_fields) if protocol is None else protocol.replace(**protocol_fields)
    timing = Timing(**timing_fields) if timing is None else timing.replace(**timing_fields)
    return protocol, timing


# ==================================================================== public entry point
def measure(model_or_config: Any, protocol: Protocol | None = None, timing: Timing | None = None, *,
            cache: bool | str | Path | MeasurementCache = True, oom_retry: bool = False, isolate: bool = False,
            timeout_s: float | None = None, timing_lock: ContextManager | None = None,
            build_lock: ContextManager | None = None, cache_key: str | None = None, **fields) -> Measurement:
    """Time one forward pass of a network under a protocol.

    ``measure("b1", device="cuda", batch_size=200, precision="fp16", channels_last=True,
    backend="cuda_graph")`` builds the :class:`Protocol` (and :class:`Timing`) from keyword arguments;
    ``measure(cfg, protocol, timing, batch_size=1)`` starts from given objects and changes single fields.

    Args:
        model_or_config: ArchConfig, dict, preset name, YAML path, timm model name (``timm:NAME`` forces
            timm), or an ``nn.Module`` (measured as given, moved to the device).
        protocol, timing: see :mod:`lowspace.cost.protocol`; ``fields`` are their field names.
        cache: True (default location), False, a path, or a :class:`MeasurementCache`.
        oom_retry: on CUDA OOM, halve the batch until it fits (throughput runs).
        isolate: run in a fresh process; ``timeout_s`` bounds it (then status "error").
        timing_lock: a context manager held during warm-up and timing only.
        build_lock: a context manager held while building (model, backend preparation, compilation).
        cache_key: identity to cache an anonymous ``nn.Module`` under.
    """
    start = time.perf_counter()
    protocol, timing = resolve_protocol(protocol, timing, **fields)
    timing = timing.for_device(protocol.device_type)
    spec = resolve_spec(model_or_config)
    resolution = spec.resolution(protocol.resolution)
    record = protocol.record(resolution, spec.in_chans)
    fp = fingerprint(protocol.device)
    identity = cache_key or spec.identity(resolution)
    store = _open_cache(cache) if identity is not None else None
    notes: list[str] = []
    if store is not None:
        try:
            hit = store.get(identity, record, fingerprint_key(fp))
        except CacheError as err:
            notes.append(f"cache not used: {err}")
            store, hit = None, None
        if hit is not None and hit.get("status") == "ok":
            return dataclasses.replace(Measurement.from_dict(hit), cached=True)

    args = dict(spec=spec, protocol=protocol, timing=timing, resolution=resolution, oom_retry=oom_retry,
                timing_lock=timing_lock, build_lock=build_lock)
    result = _measure_within_spread(args, timing, timeout_s if isolate else None, isolate)
    result.protocol, result.fingerprint = record, fp
    result.name, result.identity = spec.name, identity
    result.requested_batch_size = protocol.batch_size
    result.warnings = notes + result.warnings
    result.measured_at = utc_timestamp()
    result.wall_s = time.perf_counter() - start
    # A noisy measurement is returned (flagged) but not cached: a noisy moment must not become the
    # architecture's latency for every later study. The first record stored under a key wins: a process
    # that measured the same network at the same time uses that one, so all processes agree.
    if store is not None and result.status == "ok" and not result.noisy:
        try:
            stored = store.put(identity, record, fingerprint_key(fp), result.to_dict())
        except CacheError as err:
            result.warnings.append(f"not cached: {err}")
        else:
            if stored != json.loads(json.dumps(result.to_dict(), sort_keys=True, default=str)):
                kept = dataclasses.replace(Measurement.from_dict(stored), cached=True)
                kept.warnings = kept.warnings + [f"another process measured this network first "
                                                 f"({kept.median_ms:.4g} ms); its record is used (this run: "
                                                 f"{result.median_ms:.4g} ms)"]
                return kept
    return result


def _measure_within_spread(args: dict, timing: Timing, timeout_s: float | None, isolate: bool) -> Measurement:
    """One measurement; if its spread is above the target, one more, keeping the steadier. A result that
    is still above the target is marked ``noisy``."""
    def run() -> Measurement:
        return _measure_isolated(args, timeout_s) if isolate else _measure_local(**args)

    result = run()
    if result.status != "ok" or result.spread <= timing.target_spread:
        return result
    again = run()
    if again.status == "ok" and again.spread < result.spread:
        again.warnings = [f"measured twice: the first spread was {result.spread:.1%} (target "
                          f"{timing.target_spread:.1%})"] + again.warnings
        result = again
    result.noisy = result.spread > timing.target_spread
    if result.noisy:
        result.warnings.append(f"spread {result.spread:.1%} above the target {timing.target_spread:.1%} in two "
                               "measurements: not cached")
    return result


_WARM: set[str] = set()


def warm_up(device: str | torch.device = "cuda", precisions: tuple[str, ...] = ("fp16",),
            batch_sizes: tuple[int, ...] = (1, 200), backend: str = "cuda_graph", channels_last: bool = True,
            resolution: int = 224, deploy: bool = False, cudnn_benchmark: bool | int = False) -> float:
    """Pay a process's one-off costs of measuring before the first real measurement; returns seconds spent.

    The first network a process times on a GPU also loads cuDNN's kernels and creates the cuBLAS / cuDNN
    handles (seconds, once per precision): timing the B0 preset once under the same protocol takes that
    cost out of the first architecture's time. A no-op on CPU and on repeats.
    """
    if torch.device(device).type != "cuda":
        return 0.0
    start = time.perf_counter()
    for precision in precisions:
        for batch_size in batch_sizes:
            protocol = Protocol(device=str(device), backend=backend, precision=precision, channels_last=channels_last,
                                batch_size=batch_size, resolution=resolution, deploy=deploy,
                                cudnn_benchmark=cudnn_benchmark)
            key = protocol_key({**protocol.record(resolution, 0), "device": protocol.device})
            if key not in _WARM:
                measure("b0", protocol, Timing(min_chunks=2, max_time_s=1.0), cache=False)
                _WARM.add(key)
    return time.perf_counter() - start


# ==================================================================== in-process measurement
def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is the device (or the host) running out of memory."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return any(s in text for s in ("out of memory", "cublas_status_alloc_failed", "can't allocate memory"))


def _free(dev: torch.device) -> None:
    """After a failed attempt: the traceback's frames kept tensors alive in reference cycles. (Not after a
    success: the network and its graph are freed by reference counting, and a full collection costs ~0.2 s
    per measurement once timm and torch are imported.)"""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _measure_local(spec: ModelSpec, protocol: Protocol, timing: Timing, resolution: int, oom_retry: bool,
                   timing_lock: ContextManager | None, build_lock: ContextManager | None) -> Measurement:
    device = torch.device(protocol.device)
    notes: list[str] = []
    bs = protocol.batch_size
    collected = False  # memory held by earlier measurements' garbage cycles has been collected
    while True:
        failure = None
        try:
            result = _measure_once(spec, protocol.replace(batch_size=bs), timing, resolution, timing_lock, build_lock)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - every runtime failure becomes a result, never a crash
            failure = ("oom" if is_oom(err) else "error",
                       f"{type(err).__name__}: {err}".strip(), traceback.format_exc(limit=-3))
        if failure is None:
            result.warnings = notes + result.warnings
            return result
        _free(device)  # after the except block, so the traceback's tensors are gone
        status, message, tb = failure
        if status == "oom" and not collected:
            collected = True  # the first OOM may be garbage not collected yet: the same batch once more
            continue
        if status == "oom" and oom_retry and bs > 1:
            notes.append(f"out of memory at batch {bs}; retrying with batch {bs // 2}")
            bs //= 2
            continue
        info = {"traceback": tb} if status == "error" else {}
        return Measurement(status=status, batch_size=bs, error=message[:2000], warnings=notes, info=info)


def build_runner(spec: ModelSpec, p: Protocol, resolution: int) -> tuple[Runner, dict[str, Any]]:
    """The runner of the network under protocol ``p`` and what the build reported."""
    device = torch.device(p.device)
    t0 = time.perf_counter()
    if p.backend in COMPILE_BACKENDS:
        # a fresh dynamo state per model: otherwise shared forward code objects hit the recompile
        # limit after a few models and silently fall back to eager
        torch._dynamo.reset()
    model = spec.build(device)
    if p.reparam:
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model, inplace=spec.module is None)
    construct_s = time.perf_counter() - t0
    if p.deploy:
        deployed = _deploy(model, precision=p.precision, batch_size=p.batch_size, resolution=resolution,
                           backend=p.backend, channels_last=p.channels_last, cudnn_benchmark=p.cudnn_benchmark,
                           **p.deploy_options)
        runner = deployed.runner()
        deploy_info = dict(getattr(deployed, "info", {}) or {})
        info = {k: v for k, v in runner.info.items() if k not in deploy_info}
        info["deploy"] = deploy_info
    else:
        example = torch.randn(p.batch_size, spec.in_chans, resolution, resolution, device=device)
        runner = prepare(model, example, p.backend, p.precision, p.channels_last, p.compile_mode)
        info = dict(runner.info)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    info.update(construct_s=round(construct_s, 4), prepare_s=round(build_s - construct_s, 4), build_s=build_s)
    return runner, info


def cudnn_for(p: Protocol) -> ContextManager:
    """cuDNN autotuning as protocol ``p`` asks, around a build and its timing (CUDA only; nothing elsewhere)."""
    return cudnn_autotuning(p.cudnn_benchmark) if p.device_type == "cuda" else contextlib.nullcontext()


def _measure_once(spec: ModelSpec, p: Protocol, timing: Timing, resolution: int,
                  timing_lock: ContextManager | None, build_lock: ContextManager | None) -> Measurement:
    with cudnn_for(p):
        with build_lock if build_lock is not None else contextlib.nullcontext():
            runner, info = build_runner(spec, p, resolution)
        with timing_lock if timing_lock is not None else contextlib.nullcontext():
            chunks, iterations, stats_from, noisy = time_runner(runner, torch.device(p.device), timing)
    values = chunks[-stats_from:]
    median = statistics.median(values)
    p10, p90 = np.percentile(values, [10, 90]).tolist()
    notes = []
    if noisy:
        notes.append(f"spread {spread_of(values):.1%} above the target {timing.target_spread:.1%} after "
                     f"{len(chunks)} chunks / {iterations} calls: the machine is too noisy for this target "
                     "(the numbers use every chunk)")
    if info.get("nonfinite_output"):
        notes.append(f"{info['nonfinite_output']:.0%} of the output is not finite (inf or NaN; with random weights "
                     f"a network can overflow in {p.precision}), the same in the graph's replay as in the eager run: "
                     "timed as it is")
    return Measurement(status="ok", median_ms=median, p10_ms=p10, p90_ms=p90, spread=spread_of(values),
                       images_per_s=p.batch_size * 1000.0 / median if median > 0 else None, batch_size=p.batch_size,
                       build_s=info.pop("build_s"), iterations=iterations, chunks_ms=[round(v, 6) for v in chunks],
                       info=info, warnings=notes)


def chunk_ms(fn: Callable[[], object], calls: int, device, events: bool = True) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls of ``fn`` (one timed chunk): CUDA events around
    them on a CUDA device (unless ``events`` is False), else the host clock between two synchronizations."""
    device = torch.device(device)
    if device.type == "cuda" and events:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / calls
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) * 1000 / calls


def time_runner(runner: Runner, device: torch.device, s: Timing) -> tuple[list[float], int, int, bool]:
    """Warm up, then time chunks until the spread target or a cap. Returns (chunk values in ms per call,
    calls timed, how many trailing chunks the statistics use, whether the cap was hit)."""
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    use_events = cuda and runner.backend != "onnxruntime"

    # warm-up, synchronized per call: it also estimates one call's time for sizing the chunks
    per_call: list[float] = []
    warm_start = time.perf_counter()
    while len(per_call) < 2 or (time.perf_counter() - warm_start) * 1000 < s.warmup_ms:
        t = time.perf_counter()
        runner()
        sync()
        per_call.append((time.perf_counter() - t) * 1000)
    estimate = statistics.median(per_call[-5:])
    calls = max(1, min(100_000, round(s.chunk_ms / max(estimate, 1e-3))))

    chunks: list[float] = []
    timing_start = time.perf_counter()
    while True:
        chunks.append(chunk_ms(runner, calls, device, events=use_events))
        if len(chunks) >= s.min_chunks and spread_of(chunks[-s.min_chunks:]) <= s.target_spread:
            return chunks, calls * len(chunks), s.min_chunks, False
        if len(chunks) >= s.min_chunks and (len(chunks) >= s.max_chunks
                                            or time.perf_counter() - timing_start >= s.max_time_s):
            return chunks, calls * len(chunks), len(chunks), True


# ==================================================================== isolated measurement
def _child(conn, args: dict) -> None:
    try:
        result = _measure_local(**args).to_dict()
    except BaseException as err:  # noqa: BLE001 - report everything to the parent
        result = Measurement(status="error", error=f"{type(err).__name__}: {err}",
                             batch_size=args["protocol"].batch_size).to_dict()
    conn.send(result)
    conn.close()


def _measure_isolated(args: dict, timeout_s: float | None) -> Measurement:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, args), daemon=True)
    try:
        proc.start()
    except Exception as err:  # noqa: BLE001 - e.g. an unpicklable module or lock
        return Measurement(status="error", batch_size=args["protocol"].batch_size,
                           error=f"could not start the isolated process: {type(err).__name__}: {err}")
    sender.close()
    result, timed_out = None, False
    try:
        if receiver.poll(timeout_s):
            result = receiver.recv()
        else:
            timed_out = True
    except (EOFError, OSError):  # the child died without sending
        result = None
    finally:
        receiver.close()
    if timed_out:
        proc.kill()
        proc.join()
        return Measurement(status="error", batch_size=args["protocol"].batch_size,
                           error=f"isolated measurement timed out after {timeout_s} s and was killed")
    proc.join()
    if result is None:
        code = proc.exitcode
        how = f"exit code {code}"
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        return Measurement(status="error", batch_size=args["protocol"].batch_size,
                           error=f"isolated measurement process died ({how}) before reporting a result")
    return Measurement.from_dict(result)
