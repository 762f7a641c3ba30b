"""The search config: what ``lowspace search --config FILE`` reads (flags and ``--set`` override it; the
checks, the YAML rules and the error format are described in docs/config.md).

Example (``experiments/demo/demo.yaml`` is a complete one)::

    space: demo                      # a bundled space name or a space YAML path
    space_fixed: {}                  # parameters of the space held at one value, e.g. {resolution: 224}
    mode: pareto                     # pareto | constrained | random
    sampler: tpe                     # tpe | nsga2 | gp | random (default: tpe; random for mode random)
    objectives: [accuracy, latency]  # pareto/random: add macs for a 3-objective front
    n_trials: 20                     # complete trials to reach (rejected, stopped, failed ones don't count)
    study_name: demo
    storage: sqlite:///demo_out/study.db   # any SQLAlchemy URL, journal:PATH, or a .db file path
    out: demo_out                    # reports (Pareto HTML/PNG, CSV, exported YAML) after the search
    constraints: {max_latency_ms: 5.0, max_macs: 50e6, max_params: null}
    protocol: {device: auto, batch_size: 1}   # backend/precision auto: see ProtocolSettings.resolve
    proxy: {epochs: 4, resolutions: [32], batch_size: 128, train_per_class: 200}
    data: {dataset: fashion_mnist}
    early_stopping: {kind: promotion}   # pareto mode: promotion (default) | halving | none
    promotion: {rungs: [{epochs: 1}, {epochs: 2}, {}], eta: 3}   # the last rung is the proxy schedule
    budget_gpu_s: 36000              # also stop once trials have spent this many GPU-seconds (null: no limit)

Relative paths (space, storage files, out) are relative to the working directory.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..config import Config, option
from ..errors import ConfigError, unknown_key_error

MODES = ("pareto", "constrained", "random")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
OBJECTIVES = ("accuracy", "latency", "macs")
PRUNERS = ("median", "halving", "hyperband", "none")
EARLY_STOPPING = ("promotion", "halving", "none")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_STORAGE_FILE = "lowspace.db"
# measure() arguments that the trial pipeline passes itself (from ProtocolSettings, the device gate, the
# architecture), so not allowed in options
PROTOCOL_MEASURE_ARGS = ("device", "batch_size", "resolution", "precision", "channels_last", "backend", "deploy",
                         "cudnn_benchmark", "cache", "timing_lock", "build_lock", "cache_key")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,2})?")
_DAY_S = 86_400.0


def _check_device(path: str, value: str) -> None:
    if not _DEVICE_RE.fullmatch(value):
        raise ConfigError(path, value, "allowed: auto, cpu, mps, cuda or cuda:N")


@dataclass
class ProtocolSettings(Config):
    """The latency protocol every trial is timed on (passed to ``lowspace.cost.measure.measure``).

    device: ``auto`` (cuda if present, else cpu), ``cpu`` or ``cuda[:N]``. resolution: None = the
    architecture's own. throughput_batch: also time this batch size and record images/s (None: skip).
    backend / precision ``auto`` and channels_last / deploy None pick the default protocol for the device
    (:meth:`resolve`). cudnn_benchmark: cuDNN autotuning while a trial's network is built on CUDA. The
    default, False, times cuDNN's heuristic algorithm choice, which builds a new architecture several times
    faster and ranks architectures as autotuning does (experiments/bench_presets, harness speed). True (or
    N: at most N algorithms per convolution) is the protocol of timm's benchmark. options: extra keyword
    arguments for ``measure`` (e.g. target_spread, max_time_s).
    """

    device: str = "auto"
    batch_size: int = option(1, ge=1, le=65_536)
    resolution: int | None = option(None, ge=8, le=4096)
    precision: str = option("auto", choices=PRECISIONS)
    backend: str = "auto"
    channels_last: bool | None = None
    deploy: bool | None = None
    throughput_batch: int | None = option(None, ge=1, le=65_536)
    cudnn_benchmark: bool | int = option(False, ge=1, le=1000)
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        _check_device("device", self.device)
        names = {f.name for f in dataclasses.fields(self)}
        for key in self.options:
            if key in PROTOCOL_MEASURE_ARGS:
                raise ConfigError(f"options.{key}", self.options[key],
                                  f"set by the search itself; use protocol.{key}" if key in names
                                  else "set by the search itself")
        if self.options:
            self._check_options()

    def _check_options(self) -> None:
        """Every option is a ``measure()`` argument; the timing ones are checked as ``Timing`` checks them."""
        from ..cost.measure import RUN_OPTIONS
        from ..cost.protocol import PROTOCOL_FIELDS, TIMING_FIELDS, Timing
        allowed = [k for k in PROTOCOL_FIELDS + TIMING_FIELDS + RUN_OPTIONS if k not in PROTOCOL_MEASURE_ARGS]
        for key in self.options:
            if key not in allowed:
                raise unknown_key_error("options", str(key), allowed)
        try:
            Timing.from_dict({k: v for k, v in self.options.items() if k in TIMING_FIELDS})
        except ConfigError as err:
            raise err.within("options") from None

    def resolve(self, device_type: str) -> "ProtocolSettings":
        """Concrete values for the ``auto`` fields. On CUDA: the deploy path (BatchNorm folded, fp16 weights,
        channels_last) captured in a CUDA graph, which builds in about a second; experiments/deploy_speed
        measures how well it ranks architectures like the compiled deploy protocol. On CPU: eager fp32."""
        cuda = device_type == "cuda"
        return dataclasses.replace(
            self,
            backend=("cuda_graph" if cuda else "eager") if self.backend == "auto" else self.backend,
            precision=("fp16" if cuda else "fp32") if self.precision == "auto" else self.precision,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            deploy=cuda if self.deploy is None else self.deploy)


@dataclass
class EarlyStopSettings(Config):
    """How Pareto mode spends less than the proxy schedule on poor candidates (docs/search.md).

    kind ``promotion``: rungs of increasing fidelity up to the proxy schedule (the ``promotion`` section,
    :mod:`lowspace.search._promotion`); ``halving``: successive halving within one proxy run at
    ``min_epochs * eta**k`` epochs (:mod:`lowspace.search.halving`); ``none``: every candidate trains the
    proxy schedule. min_epochs and eta also set constrained mode's Optuna pruner.
    """

    kind: str = option("promotion", choices=EARLY_STOPPING)
    min_epochs: int = option(1, ge=1, le=10_000)
    eta: int = option(2, ge=2, le=100)
    min_peers: int = option(4, ge=0, le=10_000)


# Rung keys that must stay as the proxy has them: seeds are the promotion's, every rung is evaluated on the
# same held-out images.
FIXED_RUNG_KEYS = ("seed", "val_per_class", "split_seed", "eval_split")


@dataclass
class PromotionSettings(Config):
    """Promotion to the full schedule (``early_stopping.kind: promotion``, pareto mode).

    rungs: proxy-recipe fields changed from the proxy schedule, one mapping per rung, in increasing
    fidelity (epochs, train_per_class, resolutions); the last rung is the proxy schedule itself (``{}``).
    None: ``epochs / eta**2``, ``epochs / eta`` and the proxy schedule. eta: about 1 in eta candidates of a
    rung goes on to the next. repeats_top: seeds trained on the last rung (its accuracy is their mean).
    promote_points: the space's named points (presets) always go on, so they are compared on the full
    schedule.
    """

    rungs: tuple[dict, ...] | None = None
    eta: int = option(3, ge=2, le=100)
    repeats_top: int = option(1, ge=1, le=100)
    promote_points: bool = True

    def validate(self) -> None:
        if self.rungs is None:
            return
        if not 1 <= len(self.rungs) <= 20:
            raise ConfigError("rungs", list(self.rungs), "1 to 20 rungs (mappings of proxy fields), the last one {}"
                                                         " or the proxy schedule's values")
        previous = 0
        for i, rung in enumerate(self.rungs):
            for key in rung:
                if not isinstance(key, str):
                    raise ConfigError(f"rungs.{i}", key, "keys are proxy-recipe field names")
                if key in FIXED_RUNG_KEYS:
                    raise ConfigError(f"rungs.{i}.{key}", rung[key],
                                      "fixed for every rung (seeds: repeats_top; validation: the proxy section)")
            if "epochs" not in rung:
                continue
            epochs = rung["epochs"]
            if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
                raise ConfigError(f"rungs.{i}.epochs", epochs, "an integer between 1 and 10_000")
            if epochs < previous:
                raise ConfigError(f"rungs.{i}.epochs", epochs, f"rungs go up in fidelity: at least the {previous} "
                                                               "epochs of an earlier rung")
            previous = epochs


@dataclass
class ConstraintSettings(Config):
    """Upper limits; a candidate over a limit is rejected before it is trained."""

    max_latency_ms: float | None = option(None, gt=0, le=1e7)
    max_macs: float | None = option(None, gt=0, le=1e18)
    max_params: float | None = option(None, gt=0, le=1e15)


@dataclass
class StorageSettings(Config):
    """Heartbeat: a trial whose worker stops beating (RDB storages: Optuna's heartbeat; journal files:
    lowspace's liveness stamps, every ``heartbeat_interval`` s) for ``grace_period`` s is failed and retried up
    to ``max_retry`` times."""

    heartbeat_interval: int = option(30, ge=1, le=3600)
    grace_period: int | None = option(None, ge=1, le=int(_DAY_S))
    max_retry: int = option(2, ge=0, le=100)


@dataclass
class ReportSettings(Config):
    """What the search writes into ``out`` when it finishes (docs/reports.md).

    significance: the level at which a report says one architecture dominates another (else "within
    noise"). reference_latency_ms / reference_macs: the hypervolume reference, recorded when the study is
    created (default: the constraint on it). cdn: HTML loads plotly.js from its CDN instead of embedding it.
    """

    peers: str | None = None
    baseline: str | None = None
    baseline_study: str | None = None
    png: bool = True
    export: str = option("pareto", choices=("pareto", "none"))
    significance: float = option(0.95, ge=0.5, lt=1)
    reference_latency_ms: float | None = option(None, gt=0, le=1e7)
    reference_macs: float | None = option(None, gt=0, le=1e18)
    cdn: bool = False


@dataclass
class SearchConfig(Config):
    """Everything a search needs. ``proxy`` changes fields of the proxy training recipe
    (:func:`lowspace.train.proxy_recipe`); ``data`` holds the options of ``get_dataset``.

    ``engines`` (``"module:function"``) names a factory returning :class:`lowspace.search.trial.Engines`,
    to plug in other cost or accuracy estimators (every worker process imports it); None = lowspace's.
    """

    config_kind = "search config"

    space: str = "lowformer"
    space_fixed: dict = field(default_factory=dict)
    mode: str = option("pareto", choices=MODES)
    sampler: str | None = option(None, choices=SAMPLERS)
    objectives: tuple[str, ...] = option(("accuracy", "latency"), choices=OBJECTIVES)
    n_trials: int = option(50, ge=1, le=1_000_000)
    seed: int | None = option(0, ge=0, le=2**31 - 1)
    study_name: str | None = None
    storage: str | None = None
    out: str | None = None
    workers: int = option(1, ge=1, le=1024)
    device: str = "auto"
    presets: bool = True
    pruner: str = option("median", choices=PRUNERS)
    max_attempts: int | None = option(None, ge=1, le=10_000_000)
    timeout_s: float | None = option(None, gt=0, le=365 * _DAY_S)
    engines: str | None = None
    constraints: ConstraintSettings = field(default_factory=ConstraintSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    proxy: dict = field(default_factory=dict)
    data: dict = field(default_factory=lambda: {"dataset": "fashion_mnist"})
    early_stopping: EarlyStopSettings = field(default_factory=EarlyStopSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    budget_gpu_s: float | None = option(None, gt=0, le=1e12)
    heartbeat: StorageSettings = field(default_factory=StorageSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    # ---------------------------------------------------------------- derived
    def search_space(self):
        """The space this config searches: ``space`` with ``space_fixed`` held (raises ConfigError)."""
        from .space import load_space
        return load_space(self.space).fix(self.space_fixed)

    @property
    def sampler_name(self) -> str:
        return self.sampler or ("random" if self.mode == "random" else "tpe")

    @property
    def directions(self) -> list[str]:
        if self.mode == "constrained":
            return ["maximize"]
        return ["maximize" if o == "accuracy" else "minimize" for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return ["accuracy"] if self.mode == "constrained" else list(self.objectives)

    @property
    def attempts_cap(self) -> int:
        if self.max_attempts:
            return self.max_attempts
        # under promotion about eta**(rungs - 1) candidates start for each one that reaches the last rung
        rungs = len(self.promotion.rungs) if self.promotion.rungs is not None else 3
        per_complete = self.promotion.eta ** (rungs - 1) if self.uses_promotion else 1
        return (10 * self.n_trials + 20) * per_complete

    @property
    def uses_halving(self) -> bool:
        return self.mode == "pareto" and self.early_stopping.kind == "halving"

    @property
    def uses_promotion(self) -> bool:
        return self.mode == "pareto" and self.early_stopping.kind == "promotion"

    # ---------------------------------------------------------------- checks across fields
    def validate(self) -> None:
        if not self.objectives or self.objectives[0] != "accuracy" or "latency" not in self.objectives:
            raise ConfigError("objectives", list(self.objectives),
                              "accuracy first, then latency, optionally macs: [accuracy, latency] or "
                              "[accuracy, latency, macs]")
        if len(set(self.objectives)) != len(self.objectives):
            raise ConfigError("objectives", list(self.objectives), "objectives must not repeat")
        _check_device("device", self.device)
        if self.mode == "random" and self.sampler not in (None, "random"):
            raise ConfigError("sampler", self.sampler, "mode random samples at random: leave sampler out (null) or "
                                                       "set it to random")
        limits = self.constraints
        if self.mode == "constrained" and (limits.max_latency_ms, limits.max_macs, limits.max_params) == (None,) * 3:
            raise ConfigError("constraints", None,
                              "constrained mode needs at least one of max_latency_ms, max_macs, max_params")
        if not isinstance(self.data.get("dataset", "fashion_mnist"), str):
            raise ConfigError("data.dataset", self.data.get("dataset"), "a data set name or folder path")
        if self.engines is not None and ":" not in self.engines:
            raise ConfigError("engines", self.engines, "module:function returning lowspace.search.trial.Engines")

