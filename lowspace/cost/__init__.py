"""The cost engine: parameter and MAC counts (``count``), measured latency / throughput under a protocol
(``protocol``, ``measure``), the measurement cache (``cache``), the environment fingerprint
(``fingerprint``) and bench tables (``bench``).

``lowspace.count_params``, ``lowspace.count_macs`` and ``lowspace.measure`` are the public entry points.
"""
from .count import count_all, count_macs, count_params, fvcore_macs
from .protocol import Protocol, Timing
from .spec import ModelSpec, resolve_spec

__all__ = ["count_all", "count_macs", "count_params", "fvcore_macs", "ModelSpec", "resolve_spec", "Protocol",
           "Timing", "Measurement", "MeasurementCache", "chunk_ms"]


def __getattr__(name):  # the measurement side imports lazily (sqlite, multiprocessing, backends)
    if name in ("Measurement", "chunk_ms"):
        from . import measure
        return getattr(measure, name)
    if name == "MeasurementCache":
        from .cache import MeasurementCache
        return MeasurementCache
    raise AttributeError(f"module 'lowspace.cost' has no attribute {name!r}")
