"""One device shared by several worker processes: trainings run side by side, a timing runs alone.

Training holds the device *shared*, timing holds it *exclusive*: a measurement waits until the trainings
running on that device finish, and keeps new ones from starting meanwhile, so latency is always timed on
an otherwise idle device. A second lock file, the gate, keeps a waiting measurement from being starved by
trainings that keep starting. The locks are ``filelock.ReadWriteLock`` files (any operating system);
keep them on a local disk.
"""
from __future__ import annotations

from pathlib import Path

from filelock import ReadWriteLock

__all__ = ["DeviceGate"]


class _Hold:
    """A context manager holding one side of a :class:`DeviceGate`; picklable (it carries only paths), so
    it crosses into isolated measurement processes."""

    def __init__(self, path: str, exclusive: bool):
        self.path, self.exclusive = path, exclusive
        self._held: list[ReadWriteLock] = []

    def __enter__(self):
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        gate = ReadWriteLock(self.path + ".gate", is_singleton=False)
        device = ReadWriteLock(self.path, is_singleton=False)
        if self.exclusive:
            gate.acquire_write()
            device.acquire_write()
            self._held = [device, gate]
        else:  # a training only passes the gate; it keeps the device until it ends
            gate.acquire_read()
            device.acquire_read()
            gate.close()
            self._held = [device]
        return self

    def __exit__(self, *exc):
        for lock in self._held:
            lock.close()
        self._held = []

    def __getstate__(self):
        return {"path": self.path, "exclusive": self.exclusive, "_held": []}


class DeviceGate:
    """Shared use of one device by several processes: ``with gate.training():`` around work that may run
    side by side, ``with gate.timing():`` around a measurement that must have the device alone."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def training(self) -> _Hold:
        return _Hold(self.path, exclusive=False)

    def timing(self) -> _Hold:
        return _Hold(self.path, exclusive=True)
