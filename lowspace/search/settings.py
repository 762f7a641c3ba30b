"""The search config: what ``lowspace search --config FILE`` reads (CLI flags override it).

Example (``experiments/demo/demo.yaml`` is a complete one)::

    space: demo                      # a bundled space name or a space YAML path
    mode: pareto                     # pareto | constrained | random
    sampler: tpe                     # tpe | nsga2 | gp | random (default: tpe; random for mode random)
    objectives: [accuracy, latency]  # pareto/random: add macs for a 3-objective front
    n_trials: 20                     # complete trials to reach (rejected, stopped, failed ones don't count)
    study_name: demo
    storage: sqlite:///demo_out/study.db   # any SQLAlchemy URL, journal:PATH, or a .db file path
    out: demo_out                    # reports (Pareto HTML/PNG, CSV, exported YAML) after the search
    constraints: {max_latency_ms: 5.0, max_macs: 50e6, max_params: null}
    protocol: {device: auto, batch_size: 1}   # backend/precision auto: see ProtocolSettings.resolve
    proxy: {epochs: 4, resolution: 32, batch_size: 128, train_per_class: 200}
    data: {dataset: fashion_mnist}
    early_stopping: {kind: halving, min_epochs: 1, eta: 2, min_peers: 4}

Relative paths (space, storage files, out) are relative to the working directory.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .yamldoc import YamlDoc

MODES = ("pareto", "constrained", "random")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
OBJECTIVES = ("accuracy", "latency", "macs")
PRUNERS = ("median", "halving", "hyperband", "none")
EARLY_STOPPING = ("halving", "none")
DEFAULT_STORAGE_FILE = "lowspace.db"
# measure() arguments that the trial pipeline passes itself (from ProtocolSettings), so not allowed in options
PROTOCOL_MEASURE_ARGS = ("device", "batch_size", "resolution", "precision", "channels_last", "backend", "deploy",
                         "cudnn_benchmark", "cache")


@dataclass
class ProtocolSettings:
    """The latency protocol every trial is timed on (passed to ``lowspace.cost.measure.measure``).

    device: ``auto`` (cuda if present, else cpu), ``cpu`` or ``cuda[:N]``. resolution: None = the
    architecture's own. throughput_batch: also time this batch size and record images/s (None: skip).
    backend / precision ``auto`` and channels_last / deploy None pick the default protocol for the device
    (:meth:`resolve`). cudnn_benchmark: cuDNN autotuning while a trial's network is built on CUDA. The
    default, False, times cuDNN's heuristic algorithm choice: a new architecture is built and timed at
    batch 1 and 200 in at most 2.8 s on the H100 (up to 8.3 s autotuned), and ranked as a second
    autotuned run ranks it (experiments/bench_presets, harness speed). True (or N: at most N algorithms per convolution) is the
    protocol of timm's benchmark. options: extra keyword arguments for ``measure`` (e.g. target_spread,
    max_time_s).
    """

    device: str = "auto"
    batch_size: int = 1
    resolution: int | None = None
    precision: str = "auto"
    backend: str = "auto"
    channels_last: bool | None = None
    deploy: bool | None = None
    throughput_batch: int | None = None
    cudnn_benchmark: bool | int = False
    options: dict = field(default_factory=dict)

    def resolve(self, device_type: str) -> "ProtocolSettings":
        """Concrete values for the ``auto`` fields. On CUDA: the deploy path (BatchNorm folded, fp16 weights,
        channels_last) captured in a CUDA graph. It builds in about a second and ranks architectures like the
        compiled deploy protocol (Kendall tau 0.916 over 20 random architectures on the H100, both with cuDNN
        autotuning; experiments/deploy_speed). On CPU: eager fp32."""
        cuda = device_type == "cuda"
        return dataclasses.replace(
            self,
            backend=("cuda_graph" if cuda else "eager") if self.backend == "auto" else self.backend,
            precision=("fp16" if cuda else "fp32") if self.precision == "auto" else self.precision,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            deploy=cuda if self.deploy is None else self.deploy)


@dataclass
class EarlyStopSettings:
    """Pareto mode's own successive halving on proxy epochs (see :mod:`lowspace.search.halving`)."""

    kind: str = "halving"
    min_epochs: int = 1
    eta: int = 2
    min_peers: int = 4


@dataclass
class ConstraintSettings:
    """Upper limits; a candidate over a limit is rejected before it is trained."""

    max_latency_ms: float | None = None
    max_macs: float | None = None
    max_params: float | None = None


@dataclass
class StorageSettings:
    """Heartbeat (RDB storages): a trial whose worker stops beating for ``grace_period`` s is failed and
    retried up to ``max_retry`` times."""

    heartbeat_interval: int = 30
    grace_period: int | None = None
    max_retry: int = 2


@dataclass
class ReportSettings:
    """What the search writes into ``out`` when it finishes."""

    peers: str | None = None
    baseline: str | None = None
    baseline_study: str | None = None
    png: bool = True
    export: str = "pareto"  # pareto | none


@dataclass
class SearchConfig:
    """Everything a search needs. ``proxy`` goes to ``ProxySchedule``; ``data`` to ``get_dataset``.

    ``engines`` (``"module:function"``) names a factory returning :class:`lowspace.search.trial.Engines`,
    to plug in other cost or accuracy estimators (every worker process imports it); None = lowspace's.
    """

    space: str = "lowformer"
    mode: str = "pareto"
    sampler: str | None = None
    objectives: tuple[str, ...] = ("accuracy", "latency")
    n_trials: int = 50
    seed: int | None = 0
    study_name: str | None = None
    storage: str | None = None
    out: str | None = None
    workers: int = 1
    device: str = "auto"
    presets: bool = True
    pruner: str = "median"
    max_attempts: int | None = None
    timeout_s: float | None = None
    engines: str | None = None
    constraints: ConstraintSettings = field(default_factory=ConstraintSettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    proxy: dict = field(default_factory=dict)
    data: dict = field(default_factory=lambda: {"dataset": "fashion_mnist"})
    early_stopping: EarlyStopSettings = field(default_factory=EarlyStopSettings)
    heartbeat: StorageSettings = field(default_factory=StorageSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    def __post_init__(self):
        self.objectives = tuple(self.objectives)

    # ---------------------------------------------------------------- derived
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
        return self.max_attempts or (10 * self.n_trials + 20)

    @property
    def uses_halving(self) -> bool:
        return self.mode == "pareto" and self.early_stopping.kind == "halving"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        return d

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], doc: YamlDoc | None = None) -> "SearchConfig":
        """Parse and validate a plain dict (``doc`` adds file and line to errors)."""
        doc = doc or YamlDoc("{}", None, kind="search config")
        if not isinstance(data, Mapping):
            raise doc.error([], data, "a search config is a mapping")
        kwargs = _parse_dataclass(cls, data, [], doc)
        cfg = cls(**kwargs)
        cfg.validate(doc)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "SearchConfig":
        """Read a config file, then apply dotted ``overrides`` (``{"proxy.epochs": 2}``)."""
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError("--config", str(path), f"cannot read the search config ({err.strerror})") from None
        doc = YamlDoc(text, str(path), kind="search config")
        data = doc.data if doc.data is not None else {}
        if not isinstance(data, Mapping):
            raise doc.error([], type(data).__name__, "a search config is a mapping")
        return cls.from_dict(apply_overrides(data, overrides or {}), doc)

    def validate(self, doc: YamlDoc | None = None) -> None:
        doc = doc or YamlDoc("{}", None, kind="search config")
        _choice(doc, ["mode"], self.mode, MODES)
        if self.sampler is not None:
            _choice(doc, ["sampler"], self.sampler, SAMPLERS)
        if not self.objectives or self.objectives[0] != "accuracy" or "latency" not in self.objectives:
            raise doc.error(["objectives"], list(self.objectives),
                            "accuracy first, then latency, optionally macs: [accuracy, latency] or "
                            "[accuracy, latency, macs]")
        for i, o in enumerate(self.objectives):
            _choice(doc, ["objectives", i], o, OBJECTIVES)
        if len(set(self.objectives)) != len(self.objectives):
            raise doc.error(["objectives"], list(self.objectives), "objectives must not repeat")
        _positive(doc, ["n_trials"], self.n_trials)
        _positive(doc, ["workers"], self.workers)
        _choice(doc, ["pruner"], self.pruner, PRUNERS)
        _choice(doc, ["early_stopping", "kind"], self.early_stopping.kind, EARLY_STOPPING)
        _positive(doc, ["early_stopping", "min_epochs"], self.early_stopping.min_epochs)
        if self.early_stopping.eta < 2:
            raise doc.error(["early_stopping", "eta"], self.early_stopping.eta, "an integer >= 2")
        _positive(doc, ["protocol", "batch_size"], self.protocol.batch_size)
        if self.protocol.throughput_batch is not None:
            _positive(doc, ["protocol", "throughput_batch"], self.protocol.throughput_batch)
        if self.protocol.resolution is not None:
            _positive(doc, ["protocol", "resolution"], self.protocol.resolution)
        if not isinstance(self.protocol.cudnn_benchmark, bool):
            _positive(doc, ["protocol", "cudnn_benchmark"], self.protocol.cudnn_benchmark)
        for key in self.protocol.options:
            if key in PROTOCOL_MEASURE_ARGS:
                raise doc.error(["protocol", "options", key], self.protocol.options[key],
                                f"set by the search itself; use protocol.{key}"
                                if key in {f.name for f in dataclasses.fields(ProtocolSettings)}
                                else "set by the search itself")
        for name in ("max_latency_ms", "max_macs", "max_params"):
            v = getattr(self.constraints, name)
            if v is not None and not v > 0:
                raise doc.error(["constraints", name], v, "a positive number or null")
        if self.mode == "constrained" and self.constraints.max_latency_ms is None and self.constraints.max_macs is None \
                and self.constraints.max_params is None:
            raise doc.error(["constraints"] if "constraints" in (doc.data or {}) else ["mode"], None,
                            "constrained mode needs at least one of max_latency_ms, max_macs, max_params")
        _positive(doc, ["heartbeat", "heartbeat_interval"], self.heartbeat.heartbeat_interval)
        if not isinstance(self.data.get("dataset", "fashion_mnist"), str):
            raise doc.error(["data", "dataset"], self.data.get("dataset"), "a data set name or folder path")
        if self.engines is not None and (not isinstance(self.engines, str) or ":" not in self.engines):
            raise doc.error(["engines"], self.engines, "module:function returning lowspace.search.trial.Engines")
        if self.report.export not in ("pareto", "none"):
            raise doc.error(["report", "export"], self.report.export, "allowed: pareto, none")


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with dotted keys set (None values are skipped)."""
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        if value is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _choice(doc, path, value, options) -> None:
    if value not in options:
        raise doc.error(path, value, "allowed: " + ", ".join(map(str, options)))


def _positive(doc, path, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise doc.error(path, value, "a positive integer")


def _type_ok(tp: str, value: Any) -> bool:
    tp = tp.replace(" ", "")
    if value is None:
        return "None" in tp or tp.startswith("Optional")
    if isinstance(value, bool):
        return tp.startswith("bool")
    options = tp.split("|")
    for opt in options:
        if opt == "int" and isinstance(value, int):
            return True
        if opt == "float" and isinstance(value, (int, float)):
            return True
        if opt == "str" and isinstance(value, str):
            return True
        if opt == "dict" and isinstance(value, Mapping):
            return True
        if opt.startswith("tuple") and isinstance(value, (list, tuple)):
            return True
    return False


def _parse_dataclass(tp, data: Mapping[str, Any], path: list, doc: YamlDoc) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(tp)]
    doc.check_keys(path, data, names)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = path + [f.name]
        ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        sub_cls = _NESTED.get(ftype)
        if sub_cls is not None:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise doc.error(sub, value, "a mapping with keys: " + ", ".join(x.name for x in dataclasses.fields(sub_cls)))
            kwargs[f.name] = sub_cls(**_parse_dataclass(sub_cls, value, sub, doc))
            continue
        if isinstance(value, str) and ("float" in ftype or "int" in ftype) and "str" not in ftype:
            try:  # YAML reads 50e6 as a string
                value = float(value)
                value = int(value) if ftype.startswith("int") and value.is_integer() else value
            except ValueError:
                pass
        if not _type_ok(ftype, value):
            raise doc.error(sub, value, f"expected {ftype}")
        if ftype == "float | None" and isinstance(value, int):
            value = float(value)
        if ftype == "dict":
            value = dict(value)
        kwargs[f.name] = value
    return kwargs


_NESTED = {
    "ConstraintSettings": ConstraintSettings,
    "ProtocolSettings": ProtocolSettings,
    "EarlyStopSettings": EarlyStopSettings,
    "StorageSettings": StorageSettings,
    "ReportSettings": ReportSettings,
}
