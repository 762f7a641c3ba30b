"""The environment a speed number was measured in (no hostnames, nothing identifying a person).

Two measurements are comparable, and a cached one reusable, only when their fingerprints are equal:
device model, driver, torch / CUDA / cuDNN / timm / onnxruntime versions, Python, CPU model and threads,
and the lowspace version with a hash of the source files that shape a measurement (:func:`source_hash`),
so numbers taken by older code are never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .. import __version__

__all__ = ["fingerprint", "fingerprint_key", "source_hash", "MEASUREMENT_SOURCES"]

# The parts of lowspace (relative to the package folder) whose code shapes a measured number: the model
# definition, the runtime that prepares and runs it, and the measurement itself.
MEASUREMENT_SOURCES = ("arch", "runtime", "cost/measure.py", "cost/protocol.py", "cost/spec.py")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=None)
def nvidia_driver() -> str | None:
    """NVIDIA driver version, from the kernel module (no subprocess) or nvidia-smi."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return out.strip().splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _onnxruntime() -> dict[str, Any]:
    version = _version("onnxruntime") or _version("onnxruntime-gpu")
    if version is None:
        return {"onnxruntime": None, "onnxruntime_providers": []}
    try:
        import onnxruntime as ort
        providers = list(ort.get_available_providers())
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        providers = []
    return {"onnxruntime": version, "onnxruntime_providers": providers}


@lru_cache(maxsize=None)
def _fingerprint(device_type: str, index: int | None, threads: int) -> str:
    fp: dict[str, Any] = {
        "device_type": device_type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "timm": _version("timm"),
        **_onnxruntime(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model(),
        "cpu_count": _cpu_count(),
        "torch_threads": threads,
    }
    if device_type == "cuda":
        idx = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(idx)
        fp.update({
            "device": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_multiprocessors": props.multi_processor_count,
            "driver": nvidia_driver(),
        })
    else:
        fp["device"] = fp["cpu"]
    return json.dumps(fp, sort_keys=True)


@lru_cache(maxsize=None)
def source_hash(root: Path | None = None) -> str:
    """A short hash of every Python file under :data:`MEASUREMENT_SOURCES` (names and contents) in the
    lowspace package folder, or in ``root``; parts that do not exist are skipped."""
    from ..provenance import files_hash
    return files_hash(Path(__file__).resolve().parents[1] if root is None else Path(root), MEASUREMENT_SOURCES)


def fingerprint(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The environment fingerprint for measurements on ``device`` (a plain, JSON-able dict)."""
    dev = torch.device(device)
    fp = json.loads(_fingerprint(dev.type, dev.index, torch.get_num_threads()))
    fp.update(lowspace=__version__, lowspace_source=source_hash())
    return fp


def fingerprint_key(fp: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint (part of the cache key)."""
    blob = json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
