"""Inter-process locks for processes sharing one device.

* :class:`FileLock`: an exclusive ``fcntl.flock`` on a file.
* :class:`DeviceGate`: training holds the device *shared*, timing takes it *exclusive*: a measurement waits
  until the running trainings on that device finish and keeps new ones from starting, so latency is always
  timed on an otherwise idle device. A second "gate" file keeps a waiting measurement from being starved
  by trainings that keep starting.

All are picklable (they carry only paths), so they also cross into isolated measurement processes.
"""
from __future__ import annotations

import fcntl
from pathlib import Path


class FileLock:
    """An exclusive (or, with ``shared=True``, shared) lock on a file; a context manager."""

    def __init__(self, path: str | Path, shared: bool = False):
        self.path = str(path)
        self.shared = shared
        self._fh = None

    def __enter__(self):
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __getstate__(self):
        return {"path": self.path, "shared": self.shared, "_fh": None}


class _GateLock:
    def __init__(self, path: str, exclusive: bool):
        self.path, self.exclusive = path, exclusive
        self._held: list[FileLock] = []

    def __enter__(self):
        gate = FileLock(self.path + ".gate", shared=not self.exclusive).__enter__()
        device = FileLock(self.path, shared=not self.exclusive).__enter__()
        if self.exclusive:
            self._held = [device, gate]
        else:  # a training only passes the gate; it keeps the device lock until it ends
            gate.__exit__(None, None, None)
            self._held = [device]
        return self

    def __exit__(self, *exc):
        for lock in self._held:
            lock.__exit__(*exc)
        self._held = []

    def __getstate__(self):
        return {"path": self.path, "exclusive": self.exclusive, "_held": []}


class DeviceGate:
    """Shared use of one device by several processes: ``with gate.training():`` around work that may run
    side by side, ``with gate.timing():`` around a measurement that must have the device alone."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def training(self) -> _GateLock:
        return _GateLock(self.path, exclusive=False)

    def timing(self) -> _GateLock:
        return _GateLock(self.path, exclusive=True)
