"""What a speed number means: the protocol a network is run under, and the timing rule that stops the clock.

``Protocol`` fixes how the network runs (device, backend, precision, memory format, batch, resolution,
deploy path, cuDNN autotuning); ``Timing`` fixes how long and how precisely it is timed. Both are frozen
:class:`lowspace.config.Config` dataclasses, validated when built, so a bad value is a
:class:`~lowspace.errors.ConfigError` before anything runs.
``lowspace bench``, the search's trials and :func:`lowspace.measure` all take these two objects;
docs/measurement.md explains every field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Config, option
from ..errors import ConfigError
from ..runtime import BACKENDS, PRECISIONS, DeployOptions, check_protocol
from ..runtime._options import resolve_options

__all__ = ["Protocol", "Timing", "COMPILE_BACKENDS", "COMPILE_MODES"]

COMPILE_BACKENDS = ("compile", "compile_cuda_graph")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Upper bounds that stop a typo (an extra zero or three) before the input batch is allocated
MAX_BATCH = 65_536
MAX_RESOLUTION = 4096

# Timing defaults that depend on the device: (chunk_ms, warmup_ms, max_time_s)
_DEVICE_TIMING = {"cuda": (40.0, 50.0, 3.0), "cpu": (100.0, 100.0, 10.0)}


@dataclass(frozen=True)
class Protocol(Config):
    """How a network is run while it is timed.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        backend: eager, cuda_graph, compile, compile_cuda_graph, torchscript or onnxruntime.
        precision: fp32, fp16 or bf16.
        channels_last: the channels_last memory format for input and weights.
        batch_size: images per forward pass (at most 65,536).
        resolution: input side in pixels (at most 4096); None times each network at its own resolution.
        deploy: time the deployed network (BatchNorm folded, cast, captured) instead of the eval-mode one.
        deploy_options: further keyword arguments for ``deploy()`` (only with ``deploy=True``).
        reparam: apply timm's ``reparameterize_model`` first (for re-parameterizable peers).
        compile_mode: ``torch.compile`` mode of the compile backends (ignored by the others).
        cudnn_benchmark: cuDNN autotuning while the network is built on CUDA: False (cuDNN's heuristic
            choice, the default everywhere), True, or N (autotune over at most N algorithms).
    """

    device: str = "cpu"
    backend: str = option("eager", choices=BACKENDS)
    precision: str = option("fp32", choices=PRECISIONS)
    channels_last: bool = False
    batch_size: int = option(1, ge=1, le=MAX_BATCH)
    resolution: int | None = option(None, ge=1, le=MAX_RESOLUTION)
    deploy: bool = False
    deploy_options: dict[str, Any] = option(default_factory=dict)
    reparam: bool = False
    compile_mode: str | None = option(None, choices=COMPILE_MODES)
    cudnn_benchmark: bool | int = option(False, ge=1, le=1000)

    def validate(self) -> None:
        self._set("device", str(check_protocol(self.backend, self.precision, self.device)))
        if self.deploy_options and not self.deploy:
            raise ConfigError("deploy_options", self.deploy_options, "only with deploy=True")
        if "cudnn_benchmark" in self.deploy_options:
            raise ConfigError("deploy_options.cudnn_benchmark", self.deploy_options["cudnn_benchmark"],
                              "set it once, as the protocol's cudnn_benchmark")
        try:  # deploy()'s own check, before anything runs
            DeployOptions.from_dict(self.deploy_options)
        except ConfigError as err:
            raise err.within("deploy_options") from None
        if self.backend not in COMPILE_BACKENDS or self.deploy:  # deploy() takes its own compile settings
            self._set("compile_mode", None)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

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
            "deploy_resolved": self._resolved_deploy_options() if self.deploy else None,
            "reparam": self.reparam, "cudnn_benchmark": self.cudnn_benchmark if cuda else None,
        }

    def _resolved_deploy_options(self) -> dict[str, Any]:
        """Every deploy option as ``deploy()`` will apply it here (defaults and ``auto`` values decided), so a
        change of a default is a new protocol, never a stale cached number."""
        opts = resolve_options(DeployOptions.from_dict(self.deploy_options), self.batch_size, self.device_type,
                               self.backend)
        resolved = dataclasses.asdict(opts)
        for key in ("check", "cache", "cudnn_benchmark"):  # how it is built, not what runs (or recorded apart)
            resolved.pop(key)
        return resolved


@dataclass(frozen=True)
class Timing(Config):
    """When the clock stops: warm up, then time chunks of back-to-back calls until the spread of the last
    ``min_chunks`` chunk values is at most ``target_spread``, or a cap is reached.

    Args:
        target_spread: stop when (max - min) / median of the last ``min_chunks`` chunks is at most this.
        min_chunks: the window the spread is taken over (at least 2).
        max_chunks: stop after this many chunks (at least ``min_chunks``).
        chunk_ms: time per chunk (None: 40 on CUDA, 100 on CPU).
        warmup_ms: warm-up time (None: 50 on CUDA, 100 on CPU).
        max_time_s: stop timing after this long (None: 3 on CUDA, 10 on CPU).
    """

    target_spread: float = option(0.02, gt=0)
    min_chunks: int = option(5, ge=2)
    max_chunks: int = option(50, ge=2)
    chunk_ms: float | None = option(None, gt=0)
    warmup_ms: float | None = option(None, ge=0)
    max_time_s: float | None = option(None, gt=0)

    def validate(self) -> None:
        if self.max_chunks < self.min_chunks:
            raise ConfigError("max_chunks", self.max_chunks, f"an integer >= min_chunks ({self.min_chunks})")

    def for_device(self, device_type: str) -> "Timing":
        """A copy with the device-dependent defaults filled in."""
        chunk_ms, warmup_ms, max_time_s = _DEVICE_TIMING["cuda" if device_type == "cuda" else "cpu"]
        return self.replace(chunk_ms=chunk_ms if self.chunk_ms is None else self.chunk_ms,
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
