"""Cheap stand-ins for the cost and training engines, for tests of the search logic.

They go through the real study / trial code; only counting, timing and training are faked, with numbers
that depend on the architecture so that fronts, duplicates and constraints behave as in a real search.
``fake_engines`` is also importable as ``search_fakes:fake_engines`` by worker processes (tests put this
folder on PYTHONPATH); ``LOWSPACE_FAKE_EPOCH_S`` sets the sleep per proxy epoch there.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from lowspace.search.trial import Engines

CALLS: dict[str, int] = {"count": 0, "measure": 0, "train": 0}


def fake_schedule(options: dict) -> SimpleNamespace:
    """The proxy section as given, whatever its field names (the fake training reads only ``epochs``)."""
    return SimpleNamespace(**{"epochs": 4, **options})


@dataclass
class FakeMeasurement:
    status: str = "ok"
    median_ms: float = 1.0
    p10_ms: float = 0.9
    p90_ms: float = 1.1
    spread: float = 0.2
    images_per_s: float = 1000.0
    batch_size: int = 1
    protocol: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=lambda: {"torch": "fake", "device_name": "fake cpu"})
    build_s: float = 0.0
    wall_s: float = 0.0
    error: str | None = None
    cached: bool = False

    def to_dict(self):
        return dict(self.__dict__)


@dataclass
class FakeResult:
    top1: float
    top5: float = 1.0
    best_top1: float = 0.0
    epochs_run: int = 0
    history: list = field(default_factory=list)
    train_s: float = 0.0
    images_per_s: float = 0.0
    stopped_early: bool = False


def fake_params(cfg) -> int:
    return sum(s.width * max(s.depth, 1) for s in cfg.stages) * 100 + cfg.stem.width * (1 + cfg.stem.depth)


def fake_engines(epoch_s: float | None = None, oom_over_params: int | None = None,
                 train_error: str | None = None) -> Engines:
    """Engines whose latency grows with size and whose accuracy grows with size and epochs."""
    if epoch_s is None:
        epoch_s = float(os.environ.get("LOWSPACE_FAKE_EPOCH_S", "0"))

    def count_params(cfg):
        CALLS["count"] += 1
        return fake_params(cfg)

    def count_macs(cfg, resolution=224):
        return fake_params(cfg) * resolution

    def measure(cfg, protocol, timing=None, cache=True, **options):
        CALLS["measure"] += 1
        batch_size = protocol.batch_size
        protocol = protocol.record(protocol.resolution or cfg.resolution, cfg.in_chans)
        if oom_over_params is not None and fake_params(cfg) > oom_over_params:
            return FakeMeasurement(status="oom", median_ms=float("nan"), error="CUDA out of memory (fake)",
                                   protocol=protocol, batch_size=batch_size)
        ms = fake_params(cfg) / 1e5 * batch_size
        return FakeMeasurement(median_ms=ms, images_per_s=1000.0 * batch_size / ms, protocol=protocol,
                               batch_size=batch_size)

    def train_proxy(cfg, data, schedule, device, on_epoch=None):
        CALLS["train"] += 1
        if train_error:
            raise RuntimeError(train_error)
        final = 0.5 + 0.4 * (1 - 1 / (1 + fake_params(cfg) / 20000))
        hist = []
        acc = 0.0
        for e in range(schedule.epochs):
            if epoch_s:
                time.sleep(epoch_s)
            acc = final * (e + 1) / schedule.epochs
            hist.append({"epoch": e + 1, "top1": acc})
            if on_epoch is not None and on_epoch(e + 1, {"epoch": e + 1, "top1": acc}):
                return FakeResult(top1=acc, best_top1=acc, epochs_run=e + 1, history=hist, stopped_early=True)
        return FakeResult(top1=acc, best_top1=acc, epochs_run=schedule.epochs, history=hist)

    return Engines(count_params=count_params, count_macs=count_macs, measure=measure, train_proxy=train_proxy,
                   make_schedule=fake_schedule, load_data=lambda d, s, dev: "fake-data")
