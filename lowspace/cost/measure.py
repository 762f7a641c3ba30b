"""Latency and throughput under a declared protocol, with adaptive repeats, OOM handling and a cache.

How a number is taken:

1. The network is built directly on the device (random weights) and handed to
   :func:`lowspace.backends.prepare` (or to :func:`lowspace.deploy.deploy` with ``deploy=True``), which
   returns a runner for a static input. Graph-captured backends check their first replay against eager
   output. On CUDA, cuDNN autotunes new convolution shapes unless ``cudnn_benchmark=False`` (cuDNN's
   heuristic choice, 2-3x faster builds; the search's default); the setting is recorded in the protocol.
2. Warm-up: the runner runs (synchronized) for ``warmup_ms``; that also estimates one call's time.
3. Timing in *chunks* of back-to-back calls sized to about ``chunk_ms`` of device time, timed with CUDA
   events on GPU (wall clock after a synchronize for onnxruntime, whose CUDA work runs on its own stream)
   and ``time.perf_counter`` on CPU. A chunk's value is its mean time per call.
4. *Spread* = (max - min) / median over the last ``min_chunks`` chunk values. Timing stops as soon as the
   spread is at most ``target_spread`` (default 2%); median / p10 / p90 / spread are then those of that
   window. If ``max_chunks`` or ``max_time_s`` is reached first, they are computed over every chunk and a
   warning says the machine is too noisy for the target.

``median_ms`` is milliseconds per batch; ``images_per_s = batch_size * 1000 / median_ms``.

A CUDA out-of-memory error gives ``status="oom"`` (with ``oom_retry`` the batch is halved until it fits,
as timm's benchmark does; the batch used is ``batch_size``, the one asked ``requested_batch_size``).
Any other failure while building or running gives ``status="error"`` with the message. Invalid
arguments (unknown backend, precision, device, model name) raise :class:`~lowspace.errors.ConfigError`
before anything runs. ``isolate=True`` runs the measurement in a fresh process (``spawn``): a crash there
becomes ``status="error"`` and leaves this process untouched.

Successful measurements of networks with a known identity (our configs, timm names, LowFormer modules)
are cached by (identity, protocol, environment fingerprint); see :mod:`lowspace.cost.cache`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import math
import multiprocessing
import signal
import statistics
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from ..backends import Runner, check_cudnn_benchmark, check_protocol, cudnn_autotuning, prepare
from ..errors import ConfigError, LowspaceError, unknown_key_error
from .cache import CacheError, MeasurementCache
from .fingerprint import fingerprint, fingerprint_key
from .locks import DeviceGate, FileLock  # noqa: F401 - re-exported for measure(timing_lock=...)
from .spec import ModelSpec, resolve_spec

__all__ = ["Measurement", "measure", "warm_up", "FileLock", "DeviceGate", "spread_of", "HARNESS_VERSION"]

# Bumped when the timing method changes in a way that makes older cached numbers incomparable.
HARNESS_VERSION = 1

# Defaults per device type: (chunk_ms, warmup_ms, max_time_s)
_DEFAULTS = {"cuda": (40.0, 50.0, 3.0), "cpu": (100.0, 100.0, 10.0)}


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
    return (max(values) - min(values)) / med if med > 0 else math.inf


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ==================================================================== argument checks
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, value, f"an integer >= {low}")
    return value


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(name, value, "a positive number")
    return float(value)


@dataclass
class _Settings:
    target_spread: float
    chunk_ms: float
    warmup_ms: float
    max_time_s: float
    min_chunks: int
    max_chunks: int


def _deploy_fn() -> Callable:
    try:
        module = importlib.import_module("lowspace.deploy")
    except ModuleNotFoundError as err:
        if err.name in ("lowspace.deploy", "lowspace"):
            raise LowspaceError("deploy=True needs lowspace.deploy (the deploy module, issue 8), which this "
                                "installation does not have yet; measure with deploy=False") from None
        raise
    return module.deploy


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


# ==================================================================== public entry point
def measure(model_or_config: Any, device: str | torch.device = "cpu", batch_size: int = 1,
            resolution: int | None = None, precision: str = "fp32", channels_last: bool = False,
            backend: str = "eager", deploy: bool = False, cache: bool | str | Path | MeasurementCache = True, *,
            reparam: bool = False, compile_mode: str | None = None, deploy_options: dict[str, Any] | None = None,
            target_spread: float = 0.02, chunk_ms: float | None = None, warmup_ms: float | None = None,
            max_time_s: float | None = None, min_chunks: int = 5, max_chunks: int = 50,
            cudnn_benchmark: bool | int | None = None, oom_retry: bool = False, isolate: bool = False,
            timeout_s: float | None = None, timing_lock: ContextManager | None = None,
            build_lock: ContextManager | None = None, cache_key: str | None = None, **unknown) -> Measurement:
    """Time one forward pass of a network under a protocol; see the module docstring for the method.

    Args:
        model_or_config: ArchConfig, dict, preset name, YAML path, timm model name (``timm:NAME`` forces
            timm), or an ``nn.Module`` (measured as given, moved to ``device``).
        device, batch_size, resolution (None: the network's own), precision (fp32 | fp16 | bf16),
            channels_last, backend (eager | cuda_graph | compile | compile_cuda_graph | torchscript |
            onnxruntime), compile_mode: the protocol (see :mod:`lowspace.backends`).
        deploy: time ``lowspace.deploy.deploy(model, ...)`` (BN folding etc.) with ``deploy_options``.
        reparam: first apply timm's ``reparameterize_model`` (the inference form of re-parameterizable
            peers such as FastViT / RepViT, as timm's benchmark ``--reparam``; no change for LowFormer).
        cache: True (default location), False, a path, or a :class:`MeasurementCache`.
        target_spread, chunk_ms, warmup_ms, max_time_s, min_chunks, max_chunks: the stopping rule.
        cudnn_benchmark: cuDNN autotuning on CUDA (default on); an int N turns it on and tries at most N
            algorithms per convolution (``torch.backends.cudnn.benchmark_limit``; torch's default is 10):
            shorter builds for architectures with many new convolution shapes.
        oom_retry: on CUDA OOM, halve the batch until it fits (throughput runs).
        isolate: run in a fresh process; ``timeout_s`` bounds it (then status "error").
        timing_lock: a context manager held during warm-up and timing only (e.g. :class:`FileLock`).
        build_lock: a context manager held while building (model, backend preparation, compilation);
            with a shared build lock and an exclusive timing lock, several processes can compile at
            once while no one builds when one of them times.
        cache_key: identity to cache an anonymous ``nn.Module`` under.
    """
    start = time.perf_counter()
    if unknown:  # options often come from YAML protocol settings: name the bad key and the valid ones
        import inspect
        valid = [n for n in inspect.signature(measure).parameters if n not in ("model_or_config", "unknown")]
        raise unknown_key_error("measure", next(iter(unknown)), valid)
    dev = check_protocol(backend, precision, device)
    batch_size = _check_int("batch_size", batch_size, 1)
    spec = resolve_spec(model_or_config)
    res = spec.default_resolution if resolution is None else _check_int("resolution", resolution, 1)
    if deploy_options is not None and not isinstance(deploy_options, dict):
        raise ConfigError("deploy_options", deploy_options, "a dict of keyword arguments for deploy()")
    if compile_mode is not None and backend not in ("compile", "compile_cuda_graph"):
        compile_mode = None
    chunk_d, warm_d, time_d = _DEFAULTS["cuda" if dev.type == "cuda" else "cpu"]
    settings = _Settings(
        target_spread=_check_positive("target_spread", target_spread),
        chunk_ms=_check_positive("chunk_ms", chunk_d if chunk_ms is None else chunk_ms),
        warmup_ms=float(warm_d if warmup_ms is None else warmup_ms),
        max_time_s=_check_positive("max_time_s", time_d if max_time_s is None else max_time_s),
        min_chunks=_check_int("min_chunks", min_chunks, 2),
        max_chunks=_check_int("max_chunks", max_chunks, min_chunks),
    )
    if deploy and "cudnn_benchmark" in (deploy_options or {}):  # one setting, recorded once in the protocol
        deploy_options = dict(deploy_options)
        chosen = deploy_options.pop("cudnn_benchmark")
        if cudnn_benchmark is not None and chosen != cudnn_benchmark:
            raise ConfigError("deploy_options.cudnn_benchmark", chosen,
                              f"the same as measure(cudnn_benchmark={cudnn_benchmark!r}), or left out")
        cudnn_benchmark = chosen
    if cudnn_benchmark is None:
        cudnn_benchmark = dev.type == "cuda"
    cudnn_benchmark = check_cudnn_benchmark("cudnn_benchmark", cudnn_benchmark)
    protocol = {
        "device": dev.type, "backend": backend, "precision": precision, "channels_last": bool(channels_last),
        "batch_size": batch_size, "resolution": res, "in_chans": spec.in_chans,
        "compile_mode": ((compile_mode or "default") if backend in ("compile", "compile_cuda_graph") and not deploy
                         else None),  # deploy() has its own compile settings, in deploy_options
        "deploy": bool(deploy), "deploy_options": dict(deploy_options or {}) if deploy else None,
        "reparam": bool(reparam),
        "cudnn_benchmark": cudnn_benchmark if dev.type == "cuda" else None,
        "harness": HARNESS_VERSION,
    }
    if deploy:
        _deploy_fn()  # fail early and clearly if the deploy module is missing
    fp = fingerprint(dev)
    identity = cache_key or spec.identity(res)
    store = _open_cache(cache) if identity is not None else None
    notes: list[str] = []
    if store is not None:
        try:
            record = store.get(identity, protocol, fingerprint_key(fp))
        except CacheError as err:
            notes.append(f"cache not used: {err}")
            store, record = None, None
        if record is not None and record.get("status") == "ok":
            hit = Measurement.from_dict(record)
            hit.cached = True
            return hit

    args = dict(spec=spec, dev=str(dev), batch_size=batch_size, res=res, precision=precision,
                channels_last=bool(channels_last), backend=backend, deploy=bool(deploy), reparam=bool(reparam),
                deploy_options=dict(deploy_options or {}), compile_mode=compile_mode, settings=settings,
                cudnn_benchmark=cudnn_benchmark, oom_retry=oom_retry, timing_lock=timing_lock,
                build_lock=build_lock)
    if isolate:
        result = _measure_isolated(args, timeout_s)
    else:
        result = _measure_local(**args)
    result.protocol, result.fingerprint = protocol, fp
    result.name, result.identity = spec.name, identity
    result.requested_batch_size = batch_size
    result.warnings = notes + result.warnings
    result.measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result.wall_s = time.perf_counter() - start
    # A measurement that missed its spread target is returned but not cached: a noisy moment must not
    # become the architecture's latency for every later study.
    if store is not None and result.status == "ok" and result.spread <= settings.target_spread:
        try:
            store.put(identity, protocol, fingerprint_key(fp), result.to_dict())
        except CacheError as err:
            result.warnings.append(f"not cached: {err}")
    return result


_WARM: set[tuple] = set()


def warm_up(device: str | torch.device = "cuda", precisions: tuple[str, ...] = ("fp16",),
            batch_sizes: tuple[int, ...] = (1, 200), backend: str = "cuda_graph", channels_last: bool = True,
            resolution: int = 224, deploy: bool = False, cudnn_benchmark: bool | int | None = None) -> float:
    """Pay a process's one-off costs of measuring before the first real measurement; returns seconds spent.

    The first network a process times on a GPU also loads the kernels cuDNN tries while autotuning and
    creates the cuBLAS / cuDNN handles (seconds, once per precision): measuring the B0 preset once under the
    same protocol takes that cost out of the first architecture's time. A no-op on CPU and on repeats.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return 0.0
    start = time.perf_counter()
    for precision in precisions:
        for bs in batch_sizes:
            key = (str(dev), precision, bs, backend, bool(channels_last), resolution, deploy, cudnn_benchmark)
            if key in _WARM:
                continue
            measure("b0", device=dev, batch_size=bs, resolution=resolution, precision=precision,
                    channels_last=channels_last, backend=backend, deploy=deploy, cudnn_benchmark=cudnn_benchmark,
                    cache=False, min_chunks=2, max_time_s=1.0)
            _WARM.add(key)
    return time.perf_counter() - start


# ==================================================================== in-process measurement
def _is_oom(err: BaseException) -> bool:
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


def _measure_local(spec: ModelSpec, dev: str, batch_size: int, res: int, precision: str, channels_last: bool,
                   backend: str, deploy: bool, reparam: bool, deploy_options: dict, compile_mode: str | None,
                   settings: _Settings, cudnn_benchmark: bool | int, oom_retry: bool,
                   timing_lock: ContextManager | None, build_lock: ContextManager | None) -> Measurement:
    device = torch.device(dev)
    notes: list[str] = []
    bs = batch_size
    collected = False  # memory held by earlier measurements' garbage cycles has been collected
    while True:
        failure = None
        try:
            result = _measure_once(spec, device, bs, res, precision, channels_last, backend, deploy, reparam,
                                   deploy_options, compile_mode, settings, cudnn_benchmark, timing_lock,
                                   build_lock)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - every runtime failure becomes a result, never a crash
            failure = ("oom" if _is_oom(err) else "error",
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


def _measure_once(spec: ModelSpec, device: torch.device, bs: int, res: int, precision: str,
                  channels_last: bool, backend: str, deploy: bool, reparam: bool, deploy_options: dict,
                  compile_mode: str | None, settings: _Settings, cudnn_benchmark: bool | int,
                  timing_lock: ContextManager | None, build_lock: ContextManager | None) -> Measurement:
    autotuning = cudnn_autotuning(cudnn_benchmark) if device.type == "cuda" else contextlib.nullcontext()
    with autotuning:
        with build_lock if build_lock is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            if backend in ("compile", "compile_cuda_graph"):
                # a fresh dynamo state per model: otherwise shared forward code objects hit the recompile
                # limit after a few models and silently fall back to eager
                torch._dynamo.reset()
            model = spec.build(device)
            if reparam:
                from timm.utils.model import reparameterize_model
                model = reparameterize_model(model, inplace=spec.module is None)
            construct_s = time.perf_counter() - t0
            if deploy:
                if device.type == "cuda":
                    deploy_options = {**deploy_options, "cudnn_benchmark": cudnn_benchmark}
                deployed = _deploy_fn()(model, precision=precision, batch_size=bs, resolution=res,
                                        backend=backend, channels_last=channels_last, **deploy_options)
                runner = deployed.runner()
                deploy_info = dict(getattr(deployed, "info", {}) or {})
                info = {k: v for k, v in runner.info.items() if k not in deploy_info}
                info["deploy"] = deploy_info
            else:
                example = torch.randn(bs, spec.in_chans, res, res, device=device)
                runner = prepare(model, example, backend, precision, channels_last, compile_mode)
                info = dict(runner.info)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            build_s = time.perf_counter() - t0
        info.update(construct_s=round(construct_s, 4), prepare_s=round(build_s - construct_s, 4))
        with timing_lock if timing_lock is not None else contextlib.nullcontext():
            chunks, iterations, stats_from, noisy = _time_runner(runner, device, settings)
    values = chunks[-stats_from:]
    median = statistics.median(values)
    notes = []
    if noisy:
        notes.append(f"spread {spread_of(values):.1%} above the target {settings.target_spread:.1%} after "
                     f"{len(chunks)} chunks / {iterations} calls: the machine is too noisy for this target "
                     "(the numbers use every chunk)")
    return Measurement(status="ok", median_ms=median, p10_ms=_percentile(values, 0.1),
                       p90_ms=_percentile(values, 0.9), spread=spread_of(values),
                       images_per_s=bs * 1000.0 / median if median > 0 else None, batch_size=bs,
                       build_s=build_s, iterations=iterations, chunks_ms=[round(v, 6) for v in chunks],
                       info=info, warnings=notes)


def _time_runner(runner: Runner, device: torch.device, s: _Settings) -> tuple[list[float], int, int, bool]:
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

    def chunk() -> float:
        if use_events:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls):
                runner()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / calls
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            runner()
        sync()
        return (time.perf_counter() - t) * 1000 / calls

    chunks: list[float] = []
    timing_start = time.perf_counter()
    while True:
        chunks.append(chunk())
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
                             batch_size=args.get("batch_size", 1)).to_dict()
    conn.send(result)
    conn.close()


def _measure_isolated(args: dict, timeout_s: float | None) -> Measurement:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, args), daemon=True)
    try:
        proc.start()
    except Exception as err:  # noqa: BLE001 - e.g. an unpicklable module or lock
        return Measurement(status="error", batch_size=args["batch_size"],
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
        return Measurement(status="error", batch_size=args["batch_size"],
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
        return Measurement(status="error", batch_size=args["batch_size"],
                           error=f"isolated measurement process died ({how}) before reporting a result")
    return Measurement.from_dict(result)
