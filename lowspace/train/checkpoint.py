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


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001
        raise ResumeError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None


def check_resume(out_dir: str | Path, cfg, num_classes: int | None = None, in_chans: int | None = None) -> None:
    """Before a run resumes from ``out_dir``: the latest checkpoint's weights have the names and shapes of the
    model of ``cfg`` with ``num_classes`` and ``in_chans`` (None: the run's own, from its ``config.yaml``).
    Shapes come from the file's header and a model built on the meta device, so nothing is loaded or
    allocated; nothing is checked when the run has no checkpoint yet."""
    from ..arch import LowFormer
    from ..arch.checkpoint import LoadReport
    latest = latest_checkpoint(out_dir)
    if latest is None:
        return
    path = latest / "model.safetensors"
    if not path.is_file():
        raise ResumeError(f"{path}: missing; the checkpoint is incomplete")
    found = weight_shapes(path)
    saved = _run_config(Path(out_dir))
    own = saved or cfg
    cfg = cfg.replace(num_classes=num_classes or own.num_classes, in_chans=in_chans or own.in_chans)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LowFormer(cfg, init="torch").state_dict().items()}
    report = LoadReport("lowspace", missing=[k for k in expected if k not in found],
                        unexpected=[k for k in found if k not in expected],
                        mismatched=[(k, found[k], v) for k, v in expected.items() if k in found and found[k] != v])
    report.loaded = len(expected) - len(report.missing) - len(report.mismatched)
    if report.ok:
        return
    fits = report.describe(limit=2).removeprefix("format lowspace: ")
    if saved is not None and saved.replace(num_classes=cfg.num_classes, in_chans=cfg.in_chans).arch_id == cfg.arch_id:
        raise ResumeError(f"{latest}: was trained on {saved.num_classes} classes of {saved.in_chans} channels, the "
                          f"data has {cfg.num_classes} of {cfg.in_chans} ({fits}); resume on the data it was "
                          "trained on")
    trained = f"{saved.name or saved.arch_id}" if saved is not None else "another one"
    raise ResumeError(f"{latest}: was trained with architecture {trained}, not {cfg.name or cfg.arch_id} ({fits}); "
                      f"resume with the config it was trained with ({Path(out_dir) / 'config.yaml'}) or choose "
                      "another output directory")


def _run_config(out_dir: Path):
    """The architecture config a run directory was started with, or None where it has none (or it is unreadable)."""
    from ..arch import resolve_config
    path = out_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return resolve_config(str(path))
    except LowspaceError:
        return None


def weight_problems(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """What makes weights unfit to use: tensors stored as integers where ``model`` holds floating point ones
    (quantized weights, which need their scales), and NaN or infinite values."""
    from ..arch.checkpoint import to_lowspace_keys
    own = model.state_dict()
    renamed, _ = to_lowspace_keys(model, state_dict)
    integer = [(k, v.dtype) for k, v in renamed.items()
               if k in own and own[k].is_floating_point() and not (v.is_floating_point() or v.is_complex())]
    problems = []
    if integer:
        key, dtype = integer[0]
        problems.append(f"{len(integer)} tensor(s) are {str(dtype).removeprefix('torch.')}, not floating point "
                        f"(e.g. {key}): quantized weights, which this model cannot use")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state_dict.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        key = next(iter(bad))
        problems.append(f"{len(bad)} tensor(s) hold NaN or infinite values (e.g. {key}: {bad[key]} of "
                        f"{state_dict[key].numel()}), as a diverged run leaves them")
    return problems


def load_checked_weights(model: torch.nn.Module, path: str | Path, allow_bad: bool = False) -> None:
    """Load the weights file ``path`` (lowspace, timm or official) into ``model`` after checking them
    (:func:`weight_problems`): a problem is a one-line error naming the file, or with ``allow_bad`` a warning
    line on stderr and the weights are loaded as they are."""
    import sys

    from ..arch import load_checkpoint
    from ..arch.checkpoint import CheckpointError, read_state_dict
    state_dict = read_state_dict(path)
    problems = weight_problems(state_dict, model)
    if problems and not allow_bad:
        raise CheckpointError(f"{path}: " + "; ".join(problems) + "; --allow-bad-weights loads them anyway")
    for problem in problems:
        print(f"warning: {path}: {problem}", file=sys.stderr)
    load_checkpoint(model, state_dict)


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
