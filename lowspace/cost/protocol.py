"""What a speed number means: the protocol a network is run under, and the timing rule that stops the clock.

``Protocol`` fixes how the network runs (device, backend, precision, memory format, batch, resolution,
deploy path, cuDNN autotuning); ``Timing`` fixes how long and how precisely it is timed. Both are frozen
and validated when built, so a bad value is a :class:`~lowspace.errors.ConfigError` before anything runs.
``lowspace bench``, the search's trials and :func:`lowspace.measure` all take these two objects;
docs/measurement.md explains every field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..runtime import check_cudnn_benchmark, check_protocol
from ..errors import ConfigError

__all__ = ["Protocol", "Timing", "COMPILE_BACKENDS", "COMPILE_MODES"]

COMPILE_BACKENDS = ("compile", "compile_cuda_graph")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Timing defaults that depend on the device: (chunk_ms, warmup_ms, max_time_s)
_DEVICE_TIMING = {"cuda": (40.0, 50.0, 3.0), "cpu": (100.0, 100.0, 10.0)}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, value, f"an integer >= {low}")
    return value


def _check_number(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(name, value, "a number >= 0" if allow_zero else "a positive number")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")
    return value


@dataclass(frozen=True)
class Protocol:
    """How a network is run while it is timed.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        backend: eager, cuda_graph, compile, compile_cuda_graph, torchscript or onnxruntime.
        precision: fp32, fp16 or bf16.
        channels_last: the channels_last memory format for input and weights.
        batch_size: images per forward pass.
        resolution: input side in pixels; None times each network at its own resolution.
        deploy: time the deployed network (BatchNorm folded, cast, captured) instead of the eval-mode one.
        deploy_options: further keyword arguments for ``deploy()`` (only with ``deploy=True``).
        reparam: apply timm's ``reparameterize_model`` first (for re-parameterizable peers).
        compile_mode: ``torch.compile`` mode of the compile backends (ignored by the others).
        cudnn_benchmark: cuDNN autotuning while the network is built on CUDA: False (cuDNN's heuristic
            choice, the default everywhere), True, or N (autotune over at most N algorithms).
    """

    device: str = "cpu"
    backend: str = "eager"
    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 1
    resolution: int | None = None
    deploy: bool = False
    deploy_options: dict[str, Any] = field(default_factory=dict)
    reparam: bool = False
    compile_mode: str | None = None
    cudnn_benchmark: bool | int = False

    def __post_init__(self):
        dev = check_protocol(self.backend, self.precision, self.device)
        self._set("device", str(dev))
        _check_bool("channels_last", self.channels_last)
        _check_bool("deploy", self.deploy)
        _check_bool("reparam", self.reparam)
        _check_int("batch_size", self.batch_size, 1)
        if self.resolution is not None:
            _check_int("resolution", self.resolution, 1)
        check_cudnn_benchmark("cudnn_benchmark", self.cudnn_benchmark)
        self._check_deploy_options()
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError("compile_mode", self.compile_mode, "allowed: " + ", ".join(COMPILE_MODES))
        if self.backend not in COMPILE_BACKENDS or self.deploy:  # deploy() takes its own compile settings
            self._set("compile_mode", None)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_deploy_options(self) -> None:
        options = self.deploy_options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError("deploy_options", options, "a dict of keyword arguments for deploy()")
        if options and not self.deploy:
            raise ConfigError("deploy_options", options, "only with deploy=True")
        if "cudnn_benchmark" in options:
            raise ConfigError("deploy_options.cudnn_benchmark", options["cudnn_benchmark"],
                              "set it once, as the protocol's cudnn_benchmark")
        self._set("deploy_options", dict(options))

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def replace(self, **changes) -> "Protocol":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def record(self, resolution: int, in_chans: int) -> dict[str, Any]:
        """The protocol as it travels with a number (and keys the cache): concrete resolution, the input
        channels, and only the settings that apply on this device and backend."""
        cuda = self.device_type == "cuda"
        compiled = self.backend in COMPILE_BACKENDS and not self.deploy
        return {
            "device": self.device_type, "backend": self.backend, "precision": self.precision,
            "channels_last": self.channels_last, "batch_size": self.batch_size, "resolution": resolution,
            "in_chans": in_chans, "compile_mode": (self.compile_mode or "default") if compiled else None,
            "deploy": self.deploy, "deploy_options": dict(self.deploy_options) if self.deploy else None,
            "reparam": self.reparam, "cudnn_benchmark": self.cudnn_benchmark if cuda else None,
        }


@dataclass(frozen=True)
class Timing:
    """When the clock stops: warm up, then time chunks of back-to-back calls until the spread of the last
    ``min_chunks`` chunk values is at most ``target_spread``, or a cap is reached.

    Args:
        target_spread: stop when (max - min) / median of the last ``min_chunks`` chunks is at most this.
        min_chunks: the window the spread is taken over (at least 2).
        max_chunks: stop after this many chunks.
        chunk_ms: time per chunk (None: 40 on CUDA, 100 on CPU).
        warmup_ms: warm-up time (None: 50 on CUDA, 100 on CPU).
        max_time_s: stop timing after this long (None: 3 on CUDA, 10 on CPU).
    """

    target_spread: float = 0.02
    min_chunks: int = 5
    max_chunks: int = 50
    chunk_ms: float | None = None
    warmup_ms: float | None = None
    max_time_s: float | None = None

    def __post_init__(self):
        _check_number("target_spread", self.target_spread)
        _check_int("min_chunks", self.min_chunks, 2)
        _check_int("max_chunks", self.max_chunks, self.min_chunks)
        for name in ("chunk_ms", "max_time_s"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name))
        if self.warmup_ms is not None:
            _check_number("warmup_ms", self.warmup_ms, allow_zero=True)

    def for_device(self, device_type: str) -> "Timing":
        """A copy with the device-dependent defaults filled in."""
        chunk_ms, warmup_ms, max_time_s = _DEVICE_TIMING["cuda" if device_type == "cuda" else "cpu"]
        return dataclasses.replace(
            self, chunk_ms=chunk_ms if self.chunk_ms is None else self.chunk_ms,
            warmup_ms=warmup_ms if self.warmup_ms is None else self.warmup_ms,
            max_time_s=max_time_s if self.max_time_s is None else self.max_time_s)


PROTOCOL_FIELDS = tuple(f.name for f in dataclasses.fields(Protocol))
TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(Timing))


def split_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Keyword arguments split into (Protocol fields, Timing fields, the rest)."""
    protocol = {k: v for k, v in fields.items() if k in PROTOCOL_FIELDS}
    timing = {k: v for k, v in fields.items() if k in TIMING_FIELDS}
    rest = {k: v for k, v in fields.items() if k not in protocol and k not in timing}
    return protocol, timing, rest
