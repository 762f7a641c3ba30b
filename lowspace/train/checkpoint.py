"""Training checkpoints, written so that a killed process never leaves a half-written one behind.

Layout of a run directory::

    OUT/checkpoints/step_00001234/model.safetensors   raw model weights
                                  ema.safetensors     EMA weights (if any)
                                  state.pt            optimizer, RNG, progress, recipe (plain tensors/dicts)
    OUT/latest.json                                   {"step": 1234, "path": "checkpoints/step_00001234"}

Every file is written atomically (``lowspace.io``) and ``latest.json`` is replaced only after the whole
checkpoint is on disk, so resuming always finds a complete one. ``state.pt`` holds nothing but tensors,
numbers, strings, lists and dicts, and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LowspaceError
from ..io import atomic_save, atomic_write_json

LATEST = "latest.json"
CHECKPOINTS = "checkpoints"


class ResumeError(LowspaceError):
    """A run directory that cannot be resumed (no checkpoint, unreadable files, different set-up)."""


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict as safetensors (CPU, contiguous), atomically."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise ResumeError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(out_dir: str | Path, step: int, model_state: dict, ema_state: dict | None,
                    state: dict, keep: int = 2, protect: str | None = None) -> Path:
    """Write checkpoint ``step`` under ``out_dir`` and point ``latest.json`` at it; keep the newest ``keep``
    and the one named ``protect`` (a path relative to ``out_dir``: the best epoch's, for auto-restart)."""
    out_dir = Path(out_dir)
    rel = checkpoint_dir(step)
    path = out_dir / rel
    path.mkdir(parents=True, exist_ok=True)
    save_weights(path / "model.safetensors", model_state)
    if ema_state is not None:
        save_weights(path / "ema.safetensors", ema_state)
    atomic_save(path / "state.pt", lambda tmp: torch.save(state, tmp))
    atomic_write_json(out_dir / LATEST, dict(step=step, path=rel))
    steps = sorted(p for p in (out_dir / CHECKPOINTS).glob("step_*") if p.is_dir())
    kept = {path} | ({out_dir / protect} if protect else set())
    for old in steps[:-keep] if keep > 0 else []:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoint_dir(step: int) -> str:
    """The path of checkpoint ``step`` relative to the run directory."""
    return str(Path(CHECKPOINTS) / f"step_{step:08d}")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The directory ``latest.json`` points to, or None when the run has no checkpoint yet."""
    out_dir = Path(out_dir)
    pointer = out_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        return out_dir / info["path"]
    except (ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"{pointer}: unreadable ({err})") from None


def load_checkpoint_dir(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`."""
    path = Path(path)
    for name in ("model.safetensors", "state.pt"):
        if not (path / name).is_file():
            raise ResumeError(f"{path / name}: missing; the checkpoint is incomplete")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ResumeError(f"{path / 'state.pt'}: cannot be read ({type(err).__name__}: {err})") from None
    ema = load_weights(path / "ema.safetensors") if (path / "ema.safetensors").is_file() else None
    return Checkpoint(path, int(state.get("step", 0)), load_weights(path / "model.safetensors"), ema, state)


def find_weights(path: str | Path) -> Path:
    """The weights file to evaluate for ``path``: the file itself, or in a run directory ``best``, then
    ``ema``, then ``model`` ``.safetensors``, then the latest checkpoint's EMA / model weights."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ResumeError(f"checkpoint {path}: no such file or directory")
    for name in ("best.safetensors", "ema.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    latest = latest_checkpoint(path)
    if latest is not None:
        for name in ("ema.safetensors", "model.safetensors"):
            if (latest / name).is_file():
                return latest / name
    raise ResumeError(f"checkpoint {path}: a directory without weights (best/ema/model.safetensors or {LATEST})")
