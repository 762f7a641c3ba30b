"""The trial pipeline: one candidate architecture from sample to reported objectives.

sample -> validate -> params / MACs -> reject on MAC / param limits (no GPU work yet) -> latency (and
throughput) on the declared protocol (cached by the cost engine) -> reject on the latency limit -> proxy
training (with early stopping) -> report.

Outcomes, as Optuna states and the ``status`` user attribute:

* ``complete`` (COMPLETE): objectives reported.
* ``rejected`` (PRUNED): over a limit; the limit's constraint value (> 0) is set on the trial so
  constraint-aware samplers learn where the feasible region is.
* ``stopped`` (PRUNED): not promoted past a rung, or stopped early by successive halving (Pareto mode), or by
  Optuna's pruner (constrained mode).
* ``failed`` (FAIL): invalid config, out of memory, or an error; ``error`` says why.

Every trial records JSON-only user attributes (optuna-dashboard reads the same storage): ``arch_id``,
``config`` (the full ArchConfig as YAML), ``preset``, ``params``, ``macs``, ``latency_ms``, ``latency``,
``throughput``, ``protocol``, ``fingerprint``, ``proxy`` (metrics and per-epoch history), ``accuracy``,
``timings`` (seconds per stage), ``status``, ``reason`` / ``error``, ``worker``. A candidate whose architecture
the study already has (evaluated, or running in another worker) is not evaluated again: it ends as FAIL with
status ``duplicate`` and ``duplicate_of`` (:mod:`lowspace.search._accounting`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna

from ..arch.config import ArchConfig
from ..errors import ConfigError, LowspaceError
from ._resume import SPLIT_ATTR
from ._accounting import CHECKING, DUPLICATE, FAILED, DuplicateTrial, find_original
from ._promotion import RUNG, RUNG_ACCURACY, Climb, build_ladder
from .halving import HalvingSettings, ParetoHalving
from .settings import SearchConfig
from .space import SearchSpace

_ACC_KEYS = ("top1", "val_top1", "acc1", "accuracy", "acc")
_REUSED_ATTRS = ("params", "macs", "latency_ms", "latency", "throughput", "images_per_s", "protocol", "fingerprint",
                 "proxy", "accuracy", "status", "reason", "error", "failed_stage", RUNG, RUNG_ACCURACY)


class TrialFailed(LowspaceError):
    """A candidate that cannot be evaluated (invalid, out of memory, error); the study goes on."""


# ==================================================================== engines (the other parts of lowspace)
@dataclass
class Engines:
    """The functions a trial calls; tests pass fakes. Defaults are the real cost and training engines.

    ``measure(config, protocol, timing, **options)`` is called as :func:`lowspace.measure` is, with a
    :class:`~lowspace.cost.Protocol`, a :class:`~lowspace.cost.Timing` and measure()'s run options.
    """

    count_params: Callable[..., int]
    count_macs: Callable[..., int]
    measure: Callable[..., Any]
    train_proxy: Callable[..., Any]
    make_schedule: Callable[[dict], Any]
    load_data: Callable[[dict, Any, str], Any]


def _make_schedule(options: dict):
    """The proxy recipe of a search config's ``proxy:`` section (recipe fields; errors name ``proxy.<key>``)."""
    from ..train import proxy_recipe
    return proxy_recipe(options)


def _load_data(options: dict, schedule, device: str):
    """The data set of the ``data`` section with the proxy's validation split held out of its training images
    (once, so every trial and rung validates on the same images)."""
    from ..data import get_dataset
    from ..train.engine import select_validation
    opts = dict(options)
    spec = opts.pop("dataset", "fashion_mnist")
    return select_validation(get_dataset(spec, **opts), schedule)


def default_engines() -> Engines:
    """The real engines (imported on first use)."""
    import importlib
    cost_count = importlib.import_module("lowspace.cost.count")
    cost_measure = importlib.import_module("lowspace.cost.measure")

    def train_proxy(*args, **kwargs):
        from ..train.proxy import train_proxy as fn
        return fn(*args, **kwargs)

    return Engines(count_params=cost_count.count_params, count_macs=cost_count.count_macs,
                   measure=cost_measure.measure, train_proxy=train_proxy, make_schedule=_make_schedule,
                   load_data=_load_data)


def load_engines(spec: str | None) -> Engines:
    """Engines from a ``"module:function"`` factory, or the default ones for None."""
    if not spec:
        return default_engines()
    import importlib
    module, _, func = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise ConfigError("engines", spec, f"cannot import it ({err})") from None
    engines = factory()
    if not isinstance(engines, Engines):
        raise ConfigError("engines", spec, "the factory must return lowspace.search.trial.Engines")
    return engines


def latency_settings(config) -> tuple[str, Any]:
    """The device the search times latencies on, and its protocol settings with their ``auto`` fields decided
    for that device."""
    device = resolve_device(config.protocol.device)
    return device, config.protocol.resolve(device.split(":")[0])


def measurement_protocol(settings, device: str):
    """The search's protocol settings (``auto`` fields resolved) as the cost engine's (Protocol, Timing,
    other measure() options); bad values raise ConfigError before any trial runs."""
    from ..cost.measure import RUN_OPTIONS, resolve_protocol
    from ..cost.protocol import Protocol
    base = Protocol(device=device, backend=settings.backend, precision=settings.precision,
                    channels_last=settings.channels_last, batch_size=settings.batch_size,
                    resolution=settings.resolution, deploy=settings.deploy, cudnn_benchmark=settings.cudnn_benchmark)
    options = dict(settings.options)
    run_options = {k: options.pop(k) for k in list(options) if k in RUN_OPTIONS}
    protocol, timing = resolve_protocol(base, None, where="protocol.options", **options)
    return protocol, timing, run_options


# ==================================================================== helpers
def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` if a GPU is visible, else ``cpu``."""
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy (non-finite floats become None, unknown objects their str)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "item"):
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def accuracy_of(metrics: Any) -> float | None:
    """Top-1 accuracy from a metrics dict or a ProxyResult-like object."""
    for key in _ACC_KEYS:
        v = metrics.get(key) if isinstance(metrics, dict) else getattr(metrics, key, None)
        if v is not None:
            return float(v)
    return None


@functools.lru_cache(maxsize=1)
def preset_ids() -> dict[str, str]:
    """arch_id -> preset key for every published preset."""
    from ..arch.presets import PRESET_NAMES, get_preset
    return {get_preset(k).arch_id: k for k in PRESET_NAMES}


def summary_line(t: optuna.trial.FrozenTrial) -> str:
    """One line describing a finished trial (for logs and progress)."""
    a = t.user_attrs
    status = a.get("status", t.state.name.lower())
    parts = [f"#{t.number:<4}", f"{status:<9}", a.get("arch_id", "-")]
    if a.get("preset"):
        parts.append(f"[{a['preset']}]")
    if a.get("accuracy") is not None:
        parts.append(f"acc {a['accuracy']:.4g}")
    if a.get("latency_ms") is not None:
        parts.append(f"lat {a['latency_ms']:.3g} ms")
        cache = (a.get("latency") or {}).get("cache") if status != DUPLICATE else None
        if cache:
            parts.append(f"(cached in {cache})")
    if a.get("params") is not None:
        parts.append(f"{a['params'] / 1e6:.2f} M params")
    if a.get("macs") is not None:
        parts.append(f"{a['macs'] / 1e6:.1f} MMACs")
    if a.get("duplicate_of") is not None:
        parts.append(f"(= #{a['duplicate_of']})")
    why = a.get("reason") or a.get("error")
    if why and status != "complete":
        parts.append(f"- {why}")
    if a.get("latency_warning"):
        parts.append(f"! {a['latency_warning']}")
    total = (a.get("timings") or {}).get("total_s")
    if total is not None:
        parts.append(f"[{total:.1f}s]")
    return " ".join(parts)


def cost_vector(t, objectives: list[str]) -> list[float] | None:
    """The cost objectives (latency, MACs) of a trial from its user attributes."""
    a = t.user_attrs
    out = []
    for o in objectives:
        if o == "latency":
            v = a.get("latency_ms")
        elif o == "macs":
            v = a.get("macs")
        else:
            continue
        if v is None:
            return None
        out.append(float(v))
    return out


# ==================================================================== the pipeline
class TrialPipeline:
    """The objective function: ``study.optimize(TrialPipeline(space, config), ...)``.

    Args:
        space: the search space.
        config: the search config (mode, constraints, protocol, proxy, data).
        engines: the cost / training functions (default: the real ones).
        data: the proxy data set (default: loaded on first use from ``config.data``).

    ``on_wait`` (set by the worker loop) is called now and then while a trial waits for the same
    architecture running in another worker, to find trials of dead workers.
    """

    on_wait: Callable[[], None] | None = None

    def __init__(self, space: SearchSpace, config: SearchConfig, engines: Engines | None = None, data: Any = None):
        self.space = space
        self.config = config
        self.engines = engines or load_engines(config.engines)
        if config.proxy.get("eval_split") == "test":
            raise ConfigError("proxy.eval_split", "test", "holdout: the search selects architectures by this accuracy, "
                                                          "so the test split is left to their final evaluation")
        proxy = dict(config.proxy)
        if proxy.get("resolutions") == "arch":
            proxy["resolutions"] = None  # train at each architecture's own resolution
        self.schedule = self.engines.make_schedule(proxy)
        # promotion's rungs, checked against the proxy schedule now (before any trial)
        self.ladder = build_ladder(config.promotion, proxy, self.engines.make_schedule) if config.uses_promotion \
            else None
        self.train_device = resolve_device(config.device)
        self.latency_device, self.settings = latency_settings(config)
        self.protocol, self.timing, self.run_options = measurement_protocol(self.settings, self.latency_device)
        self._data = data
        self._split_recorded = False
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def data(self):
        if self._data is None:
            self._data = self.engines.load_data(dict(self.config.data), self.schedule, self.train_device)
        return self._data

    # ---------------------------------------------------------------- entry point
    def __call__(self, trial: optuna.Trial):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        trial.set_user_attr("worker", self.worker)
        stage = "sample"
        try:
            params = self.space.suggest(trial)
            stage = "validate"
            try:
                cfg = self.space.build(params)
            except ConfigError as err:
                raise TrialFailed(f"invalid architecture: {err}") from None
            timings["sample_s"] = time.perf_counter() - start
            self._record_config(trial, cfg)
            self._stage(trial, CHECKING)
            original = find_original(trial, cfg.arch_id, on_wait=self.on_wait)
            if original is not None:
                self._reuse(trial, original, timings, start)
            return self._evaluate(trial, cfg, timings, start)
        except DuplicateTrial:
            raise
        except optuna.TrialPruned:
            self._finish(trial, timings, start)
            raise
        except KeyboardInterrupt:
            self._fail(trial, trial.user_attrs.get("stage", stage), "interrupted", timings, start)
            raise
        except TrialFailed as err:
            self._fail(trial, getattr(err, "stage", None) or stage, str(err), timings, start)
            raise
        except Exception as err:  # noqa: BLE001 - recorded on the trial, then Optuna marks it FAIL
            msg = _short_error(err)
            self._fail(trial, trial.user_attrs.get("stage", stage), msg, timings, start)
            raise TrialFailed(msg) from err

    # ---------------------------------------------------------------- stages
    def _evaluate(self, trial, cfg: ArchConfig, timings: dict, start: float):
        c = self.config
        eng = self.engines

        # params / MACs (cheap; on the meta device) and the limits on them
        self._stage(trial, "count")
        t = time.perf_counter()
        n_params = int(eng.count_params(cfg))
        macs = int(eng.count_macs(cfg, resolution=cfg.resolution))
        timings["count_s"] = time.perf_counter() - t
        trial.set_user_attr("params", n_params)
        trial.set_user_attr("macs", macs)
        self._check_limit(trial, "params", n_params, c.constraints.max_params, timings, start)
        self._check_limit(trial, "macs", macs, c.constraints.max_macs, timings, start)

        # latency (and throughput) on the declared protocol
        self._stage(trial, "latency")
        t = time.perf_counter()
        m = self._measure(cfg, self.protocol.batch_size)
        timings["latency_s"] = time.perf_counter() - t
        if m.status != "ok":
            err = TrialFailed(_measure_error(m, self.protocol.batch_size, self.latency_device))
            err.stage = "latency"
            raise err
        md = jsonable(m.to_dict())
        trial.set_user_attr("latency_ms", float(m.median_ms))
        latency = {k: md.get(k) for k in ("median_ms", "p10_ms", "p90_ms", "spread", "images_per_s", "batch_size",
                                          "build_s", "wall_s", "cached", "noisy")}
        if m.cached:
            latency["cache"] = _cache_location()
        trial.set_user_attr("latency", latency)
        if getattr(m, "noisy", False):
            trial.set_user_attr("latency_warning", f"noisy latency: spread {m.spread:.0%} above the "
                                                   f"{self.timing.target_spread:.0%} target in two measurements")
        trial.set_user_attr("protocol", jsonable(m.protocol))
        trial.set_user_attr("fingerprint", jsonable(m.fingerprint))
        self._check_limit(trial, "latency_ms", float(m.median_ms), c.constraints.max_latency_ms, timings, start)
        if self.settings.throughput_batch:
            t = time.perf_counter()
            tm = self._measure(cfg, self.settings.throughput_batch, oom_retry=True)
            timings["throughput_s"] = time.perf_counter() - t
            if tm.status == "ok":
                trial.set_user_attr("images_per_s", float(tm.images_per_s))
                trial.set_user_attr("throughput", jsonable({"batch_size": tm.batch_size,
                                                            "images_per_s": tm.images_per_s,
                                                            "median_ms": tm.median_ms, "cached": tm.cached}))
            else:  # a throughput OOM does not sink the candidate: batch-1 latency is the objective
                trial.set_user_attr("throughput", {"batch_size": self.settings.throughput_batch, "status": tm.status,
                                                   "error": _measure_error(tm, self.settings.throughput_batch,
                                                                           self.latency_device)})

        # proxy training
        self._stage(trial, "train")
        self._record_split(trial)
        t = time.perf_counter()
        result, stopper = self._train(trial, cfg, float(m.median_ms), macs)
        timings["train_s"] = time.perf_counter() - t
        proxy = jsonable({k: getattr(result, k, None) for k in ("top1", "top5", "best_top1", "epochs_run", "train_s",
                                                               "images_per_s", "stopped_early", "history", "info")})
        acc = accuracy_of(result)
        if acc is None or not math.isfinite(acc):
            err = TrialFailed(f"proxy training gave no accuracy ({acc})")
            err.stage = "train"
            raise err
        trial.set_user_attr("proxy", proxy)
        trial.set_user_attr("accuracy", acc)
        if stopper is not None and stopper.stopped:
            trial.set_user_attr("status", "stopped")
            trial.set_user_attr("reason", stopper.reason)
            raise optuna.TrialPruned(stopper.reason)
        trial.set_user_attr("status", "complete")
        self._finish(trial, timings, start)
        return self._values(acc, float(m.median_ms), macs)

    def _measure(self, cfg: ArchConfig, batch_size: int, **extra):
        options = dict(self.run_options, **extra)
        gate = self._device_gate()
        if gate is not None and "timing_lock" not in options:
            options["timing_lock"] = gate.timing()
            # building (graph capture, cuDNN autotuning) runs GPU work too: like training, it must not
            # overlap another worker's timing
            options.setdefault("build_lock", gate.training())
        return self.engines.measure(cfg, self.protocol.replace(batch_size=batch_size), self.timing, cache=True,
                                    **options)

    def _train(self, trial, cfg: ArchConfig, latency_ms: float, macs: int):
        if self.ladder is not None:
            costs = [latency_ms if o == "latency" else macs for o in self.config.objectives if o != "accuracy"]
            climb = Climb(self.ladder, trial, costs, self.config.objectives,
                          lambda schedule: self._train_once(cfg, schedule), accuracy_of)
            return climb.run()
        stopper = self._stopper(trial, latency_ms, macs, self.schedule)
        return self._train_once(cfg, self.schedule, stopper), stopper

    def _train_once(self, cfg: ArchConfig, schedule, on_epoch=None):
        gate = self._device_gate()
        with gate.training() if gate is not None else contextlib.nullcontext():
            return self.engines.train_proxy(cfg, self.data, schedule, self.train_device, on_epoch=on_epoch)

    @staticmethod
    def _device_gate():
        """Workers sharing a device (``--workers N``) never time while another one trains or times."""
        path = os.environ.get("LOWSPACE_TIMING_LOCK")
        if not path:
            return None
        from ._gate import DeviceGate
        return DeviceGate(path)

    def _stopper(self, trial, latency_ms: float, macs: int, schedule):
        c = self.config
        epochs = int(getattr(schedule, "epochs", 0) or 0)
        if c.uses_halving:
            costs = [latency_ms if o == "latency" else macs for o in c.objectives if o != "accuracy"]
            objectives = list(c.objectives)
            halving = ParetoHalving(trial, costs, lambda t: cost_vector(t, objectives), epochs,
                                    HalvingSettings(c.early_stopping.min_epochs, c.early_stopping.eta,
                                                    c.early_stopping.min_peers), accuracy_of)
            return _EpochStopper(halving=halving)
        if c.mode == "constrained" and c.pruner != "none":
            return _EpochStopper(trial=trial)
        return _EpochStopper()

    def _values(self, acc: float, latency_ms: float, macs: int):
        if self.config.mode == "constrained":
            return acc
        by_name = {"accuracy": acc, "latency": latency_ms}
        return [by_name[o] if o in by_name else float(macs) for o in self.config.objectives]

    # ---------------------------------------------------------------- bookkeeping
    def _record_config(self, trial, cfg: ArchConfig) -> None:
        trial.set_user_attr("arch_id", cfg.arch_id)
        trial.set_user_attr("config", cfg.to_yaml())
        preset = preset_ids().get(cfg.arch_id)
        if preset:
            trial.set_user_attr("preset", preset)

    def _record_split(self, trial) -> None:
        """Record the validation split of the proxy data in the study (its size and index hash), once per
        worker; a study that recorded another split gets a warning instead."""
        if self._split_recorded:
            return
        self._split_recorded = True
        record = (getattr(self.data, "info", None) or {}).get("validation")
        if not record:
            return
        study = trial.study
        known = study.user_attrs.get(SPLIT_ATTR) or {}
        if known.get("indices_sha256") not in (None, record.get("indices_sha256")):
            warnings.warn(f"study {study.study_name!r} recorded validation split {known['indices_sha256']}, but this "
                          f"worker holds out {record.get('indices_sha256')}: did the data change?", stacklevel=2)
            return
        full = {**known, "split": "holdout", **jsonable(record)}
        if full != known:
            study.set_user_attr(SPLIT_ATTR, full)

    def _stage(self, trial, name: str) -> None:
        trial.set_user_attr("stage", name)

    def _check_limit(self, trial, key: str, value: float, limit: float | None, timings: dict, start: float) -> None:
        if limit is None:
            return
        violation = (value - limit) / limit
        trial.set_constraint(key, violation)
        if violation > 0:
            unit = " ms" if key == "latency_ms" else ""
            trial.set_user_attr("status", "rejected")
            trial.set_user_attr("reason", f"{key} {value:.4g}{unit} > limit {limit:.4g}{unit}")
            self._finish(trial, timings, start)
            raise optuna.TrialPruned(trial.user_attrs["reason"] if hasattr(trial, "user_attrs") else "rejected")

    def _reuse(self, trial, original, timings: dict, start: float):
        """End ``trial`` as a duplicate of ``original`` (FAIL, so that no sampler or count takes it twice); its
        results are shown on it for reading only."""
        for key in _REUSED_ATTRS:
            if key in original.user_attrs and key not in ("status", "reason", "error", "failed_stage"):
                trial.set_user_attr(key, original.user_attrs[key])
        if original.state == optuna.trial.TrialState.RUNNING:
            where = f"running in worker {original.user_attrs.get('worker', '?')}"
        else:
            where = original.user_attrs.get("status", original.state.name.lower())
        reason = f"same architecture as trial {original.number} ({where})"
        trial.set_user_attr("status", DUPLICATE)
        trial.set_user_attr("duplicate_of", original.number)
        trial.set_user_attr("reason", reason)
        self._finish(trial, timings, start)
        raise DuplicateTrial(reason)

    def _finish(self, trial, timings: dict, start: float) -> None:
        timings["total_s"] = time.perf_counter() - start
        trial.set_user_attr("timings", {k: round(v, 4) for k, v in timings.items()})

    def _fail(self, trial, stage: str, message: str, timings: dict, start: float) -> None:
        try:
            trial.set_user_attr("status", FAILED)
            trial.set_user_attr("failed_stage", stage)
            trial.set_user_attr("error", message[:2000])
            self._finish(trial, timings, start)
        except Exception:  # noqa: BLE001 - never hide the original error behind a storage hiccup
            pass
        _free_memory()


class _EpochStopper:
    """The ``on_epoch`` callback: successive halving (pareto) or Optuna's pruner (constrained)."""

    def __init__(self, halving: ParetoHalving | None = None, trial=None):
        self.halving = halving
        self.trial = trial
        self.stopped = False
        self.reason = ""

    def __call__(self, epoch: int, metrics: dict) -> bool:
        done = int(epoch)  # train_proxy counts epochs from 1: the number of epochs done
        acc = accuracy_of(metrics)
        if self.halving is not None:
            if self.halving(done, metrics):
                self.stopped = True
                self.reason = f"successive halving: dominated at the {done}-epoch rung"
            return self.stopped
        if self.trial is not None and acc is not None:
            self.trial.report(acc, step=done)
            if self.trial.should_prune():
                self.stopped = True
                self.reason = f"pruned by the {type(self.trial.study.pruner).__name__} after {done} epochs"
        return self.stopped


def _short_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    if "out of memory" in first.lower() or type(err).__name__ == "OutOfMemoryError":
        return f"out of memory ({type(err).__name__}: {first[:300]})"
    return f"{type(err).__name__}: {first[:500]}"


def _measure_error(m, batch_size: int, device: str) -> str:
    if m.status == "oom":
        return f"out of memory measuring batch {batch_size} on {device}" + (f" ({m.error})" if m.error else "")
    return f"latency measurement failed on {device}: {m.error or m.status}"


def _cache_location() -> str:
    """The measurement cache file, with the home folder as ``~``."""
    from pathlib import Path

    from ..cost.cache import default_cache_path
    path, home = default_cache_path(), Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _free_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
