"""Export trials as architecture YAML files in the preset format (``lowspace train`` reads them directly).

Each file holds ``name``, ``recipe``, ``notes`` (the trial's metrics and protocol) and the full ArchConfig;
loading it gives the trial's arch_id (checked before the file is written).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import optuna
import yaml

from ..arch.config import ArchConfig
from ..arch.presets import get_preset
from ..errors import ConfigError, LowspaceError
from ..io import atomic_write_text

_FIRST = ("name", "recipe", "notes", "resolution", "in_chans", "num_classes", "act", "mlp_act", "stem")


class ExportError(LowspaceError):
    """A trial that cannot be exported (not finished, no config recorded)."""


def trial_config(trial: optuna.trial.FrozenTrial) -> ArchConfig:
    """The ArchConfig a trial evaluated (from its ``config`` user attribute)."""
    text = trial.user_attrs.get("config")
    if not text:
        raise ExportError(f"trial {trial.number} has no recorded config (state {trial.state.name}, status "
                          f"{trial.user_attrs.get('status', '-')}: {trial.user_attrs.get('error', '')})".rstrip(": )") + ")")
    return ArchConfig.from_yaml(text if "\n" in text else text + "\n")


def describe_trial(study, trial: optuna.trial.FrozenTrial) -> str:
    """A one-paragraph note: where the architecture comes from and what it measured."""
    a = trial.user_attrs
    cfg = study.user_attrs.get("lowspace_config") or {}
    parts = [f"lowspace search: study {study.study_name!r}, trial {trial.number} ({a.get('status', trial.state.name.lower())})"]
    if a.get("preset"):
        parts.append(f"= preset {a['preset']}")
    proxy = cfg.get("proxy") or {}
    data = (cfg.get("data") or {}).get("dataset")
    if a.get("accuracy") is not None:
        sched = ", ".join(f"{k} {v}" for k, v in proxy.items() if k in ("epochs", "resolution", "train_per_class"))
        parts.append(f"proxy top-1 {a['accuracy']:.4g}" + (f" on {data}" if data else "") + (f" ({sched})" if sched else ""))
    if a.get("latency_ms") is not None:
        p = a.get("protocol") or {}
        proto = " ".join(str(p[k]) for k in ("device", "backend", "precision") if p.get(k))
        if p.get("batch_size"):
            proto += f" batch {p['batch_size']}"
        if p.get("resolution"):
            proto += f" at {p['resolution']} px"
        parts.append(f"latency {a['latency_ms']:.4g} ms" + (f" ({proto.strip()})" if proto.strip() else ""))
    if a.get("images_per_s"):
        parts.append(f"{a['images_per_s']:.0f} img/s at batch {(a.get('throughput') or {}).get('batch_size')}")
    if a.get("params") is not None:
        parts.append(f"{a['params']:,} params")
    if a.get("macs") is not None:
        parts.append(f"{a['macs'] / 1e6:,.1f} MMACs")
    return "; ".join(parts) + "."


def _file_stem(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def export_trial(study, trial: optuna.trial.FrozenTrial | int, out_dir: str | Path, recipe: str | None = None,
                 name: str | None = None) -> Path:
    """Write one trial's architecture as ``OUT/<study>-t<N>-<arch_id>.yaml``; returns the path."""
    if isinstance(trial, int):
        numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
        if trial not in numbers:
            last = max(numbers) if numbers else None
            raise ConfigError("--trial", trial, f"study {study.study_name!r} has trials 0..{last}" if numbers
                              else f"study {study.study_name!r} has no trials")
        trial = numbers[trial]
    cfg = trial_config(trial)
    want = trial.user_attrs.get("arch_id")
    stem = f"{study.study_name}-t{trial.number:04d}-{cfg.arch_id}"
    safe = _file_stem(stem)
    preset = trial.user_attrs.get("preset")
    if recipe is None:
        recipe = get_preset(preset).recipe if preset else cfg.recipe
    cfg = cfg.replace(name=name or safe.replace("-", "_"), recipe=recipe, notes=describe_trial(study, trial))
    data = cfg.to_dict()
    ordered = {k: data[k] for k in _FIRST}
    ordered.update({k: v for k, v in data.items() if k not in _FIRST})
    header = (f"# Exported by `lowspace export` from study {study.study_name!r}, trial {trial.number}.\n"
              f"# arch_id {cfg.arch_id}. Train it: lowspace train {safe}.yaml\n")
    text = header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=110)
    again = ArchConfig.from_yaml(text)
    if again.arch_id != cfg.arch_id or (want and again.arch_id != want):
        raise ExportError(f"trial {trial.number}: the exported config does not rebuild arch_id {want} "
                          f"(got {again.arch_id})")
    path = Path(out_dir) / f"{safe}.yaml"
    atomic_write_text(path, text)
    return path


def export_trials(study, trials: Iterable, out_dir: str | Path, recipe: str | None = None) -> list[Path]:
    """Export several trials (numbers or FrozenTrials)."""
    return [export_trial(study, t, out_dir, recipe=recipe) for t in trials]


def pareto_trials(study) -> list[optuna.trial.FrozenTrial]:
    """Trials on the Pareto front (accuracy vs latency[, MACs]) of complete, feasible, distinct architectures."""
    from .tables import trials_frame
    df = trials_frame(study)
    numbers = set(df.loc[df["pareto"], "number"].astype(int)) if not df.empty else set()
    return [t for t in study.get_trials(deepcopy=False) if t.number in numbers]


def export_pareto(study, out_dir: str | Path, recipe: str | None = None, prune: bool = True) -> list[Path]:
    """Export every Pareto-optimal architecture of a study.

    ``prune``: remove this study's earlier exports in ``out_dir`` that are no longer on the front (files
    this function wrote, recognised by name and header), so the folder is the current front.
    """
    trials = pareto_trials(study)
    if not trials:
        raise ExportError(f"study {study.study_name!r} has no complete, feasible trials to export yet")
    paths = export_trials(study, trials, out_dir, recipe=recipe)
    if prune:
        keep = {p.resolve() for p in paths}
        prefix = _file_stem(f"{study.study_name}-t")
        header = f"# Exported by `lowspace export` from study {study.study_name!r}"
        for old in Path(out_dir).glob(f"{prefix}*.yaml"):
            if old.resolve() not in keep and old.read_text().startswith(header):
                old.unlink()
    return paths
