"""Benchmark tables: counts plus measurements for several networks and protocols, as flat rows.

:func:`bench` is what ``lowspace bench`` runs; :func:`bench_row` and :func:`write_results` are shared
with the scripts under ``experiments/``.
"""
from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ConfigError, LowspaceError
from ..io import atomic_path, atomic_write_json
from .count import count_all
from .fingerprint import fingerprint_key
from .measure import Measurement, measure
from .protocol import Protocol, Timing
from .spec import TIMM_PREFIX, ModelSpec, resolve_spec

__all__ = ["BenchJob", "plan", "bench", "bench_row", "write_results", "read_results", "ROW_FIELDS"]

ROW_FIELDS = (
    "model", "implementation", "identity", "params", "macs", "fvcore_macs", "device", "device_name", "backend",
    "precision", "channels_last", "deploy", "reparam", "cudnn_benchmark", "resolution", "batch_size",
    "requested_batch_size", "status", "median_ms", "p10_ms", "p90_ms", "spread", "images_per_s", "build_s", "wall_s",
    "iterations", "cached", "warnings", "error", "measured_at", "fingerprint_key",
)


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
        res = spec.default_resolution if protocol.resolution is None else protocol.resolution
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
        "build_s": m.build_s, "wall_s": m.wall_s, "iterations": m.iterations, "cached": m.cached,
        "warnings": "; ".join(m.warnings), "error": m.error, "measured_at": m.measured_at,
        "fingerprint_key": fingerprint_key(m.fingerprint) if m.fingerprint else None,
    }


def bench(jobs: Iterable[BenchJob], timing: Timing | None = None, fvcore: bool = True,
          on_start: Callable[[BenchJob], None] | None = None,
          **run_options) -> Iterator[tuple[dict[str, Any], Measurement]]:
    """Measure every job; yields (row, measurement). Counts are computed once per network and resolution.
    ``run_options`` go to :func:`~lowspace.cost.measure.measure` (cache, oom_retry, isolate, ...)."""
    counts: dict[tuple[int, int], dict[str, Any]] = {}
    for job in jobs:
        if on_start is not None:
            on_start(job)
        key = (id(job.spec), job.protocol.resolution)
        if key not in counts:
            counts[key] = count_all(job.spec, job.protocol.resolution, fvcore=fvcore)
        m = measure(job.spec, job.protocol, timing, **run_options)
        yield bench_row(job.spec, counts[key], m), m


def write_results(rows: Sequence[dict[str, Any]], path: str | Path,
                  fingerprints: dict[str, dict[str, Any]] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write rows atomically as CSV or JSON (by suffix). JSON also holds ``fingerprints`` (by key) and ``meta``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_json(path, {"meta": meta or {}, "fingerprints": fingerprints or {}, "rows": list(rows)})
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
