"""Export trials as architecture YAML files in the preset format (``lowspace train`` reads them directly).

Each file holds ``name``, ``recipe``, ``notes`` (the trial's metrics and protocol, and its comparisons with
the study's presets) and the full ArchConfig; loading it gives the trial's arch_id (checked before the file
is written). Beside it, ``<stem>.recipe.yaml`` holds the search's proxy recipe as it trained this
architecture, so the config trains the way it was searched; the header shows the complete command.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Iterable, Sequence

import optuna
import yaml

from ..arch.config import ArchConfig
from ..arch.presets import get_preset
from ..errors import ConfigError, LowspaceError
from ..io import atomic_write_text
from .significance import DEFAULT_LEVEL, accuracy_scale, binomial_se

HEADER = "# Exported by `lowspace export`"
_FIRST = ("name", "recipe", "notes", "resolution", "in_chans", "num_classes", "act", "mlp_act", "stem")


class ExportError(LowspaceError):
    """A trial that cannot be exported (not finished, no config recorded)."""


def trial_config(trial: optuna.trial.FrozenTrial) -> ArchConfig:
    """The ArchConfig a trial evaluated (from its ``config`` user attribute)."""
    text = trial.user_attrs.get("config")
    if not text:
        why = f"{trial.user_attrs.get('status', '-')}: {trial.user_attrs.get('error', '')}".rstrip(": ")
        raise ExportError(f"trial {trial.number} has no recorded config (state {trial.state.name}, status {why})")
    return ArchConfig.from_yaml(text if "\n" in text else text + "\n")


def describe_trial(study, trial: optuna.trial.FrozenTrial) -> str:
    """A one-paragraph note: where the architecture comes from and what it measured."""
    from ..search._resume import stored_config
    a = trial.user_attrs
    cfg = stored_config(study)
    status = a.get("status", trial.state.name.lower())
    parts = [f"lowspace search: study {study.study_name!r}, trial {trial.number} ({status})"]
    if a.get("preset"):
        parts.append(f"= preset {a['preset']}")
    proxy = cfg.get("proxy") or {}
    data = (cfg.get("data") or {}).get("dataset")
    if a.get("accuracy") is not None:
        sched = ", ".join(f"{k} {v}" for k, v in proxy.items() if k in ("epochs", "resolutions", "train_per_class"))
        images = (((a.get("proxy") or {}).get("info") or {}).get("validation") or {}).get("images")
        se = binomial_se(a["accuracy"], images, accuracy_scale([a["accuracy"]]))
        parts.append(f"proxy top-1 {a['accuracy']:.4g}" + (f" ± {se:.2g} (binomial SE, {images:,} validation images)"
                                                           if se == se else "")
                     + (f" on {data}" if data else "") + (f" ({sched})" if sched else ""))
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


def searched_recipe(study) -> dict | None:
    """The recipe the study's proxy trained every candidate with, as ``load_recipe`` reads it (``base: proxy``
    and its fields), or None for a study that recorded no proxy. Fields today's recipe does not know (from a
    study made by an older lowspace) are left out and listed under ``dropped``."""
    from ..search._resume import PROXY_ATTR, stored_config
    from ..train.recipe import Recipe
    fields = study.user_attrs.get(PROXY_ATTR) or stored_config(study).get("proxy")
    if fields is None:
        return None
    known = {f.name for f in dataclasses.fields(Recipe)}
    out = {k: v for k, v in fields.items() if k in known and k != "name"}
    if out.get("resolutions") == "arch":
        out["resolutions"] = None  # the search trained each architecture at its own resolution
    dropped = sorted(k for k in fields if k not in known and k != "name")
    return {"base": "proxy", "name": _file_stem(f"{study.study_name}-proxy"), **out, **({"dropped": dropped}
                                                                                     if dropped else {})}


def recipe_for(searched: dict, cfg: ArchConfig) -> dict:
    """``searched`` as the proxy applied it to ``cfg``: training resolutions no larger than the architecture's,
    evaluation at the (largest) training resolution."""
    from .evaluate import searched_sizes
    recipe = {k: v for k, v in searched.items() if k != "dropped"}
    if "resolutions" not in recipe:  # a study that recorded only the fields it changed
        from ..train.recipe import get_recipe
        recipe["resolutions"] = list(get_recipe("proxy").resolutions)
    sizes, side = searched_sizes(recipe["resolutions"], cfg.resolution)
    if sizes is not None:
        recipe["resolutions"] = sizes
        recipe["eval_resolution"] = recipe.get("eval_resolution") or side
    return recipe


# data options of a search config that `lowspace train` takes as flags (its --val-per-class sizes the held-out
# split, which the recipe file already sets, not a cap on the test split as the data option does)
_DATA_FLAGS = {"classes": "--classes", "train_per_class": "--train-per-class"}


def train_command(study, config_path: Path, recipe_path: Path | None) -> str:
    """A complete ``lowspace train`` command for an exported config: the recipe and the study's data."""
    from ..search._resume import stored_config
    data = dict(stored_config(study).get("data") or {})
    words = ["lowspace", "train", str(config_path)]
    if recipe_path is not None:
        words += ["--recipe", str(recipe_path)]
    words += ["--data", str(data.pop("dataset", None) or "DATA")]
    for key, flag in _DATA_FLAGS.items():
        if data.get(key) is not None:
            words += [flag, str(data.pop(key))]
    command = " ".join(shlex.quote(w) for w in words)
    return command + (f"  (data options without a flag: {data})" if data else "")


def export_trial(study, trial: optuna.trial.FrozenTrial | int, out_dir: str | Path, recipe: str | None = None,
                 name: str | None = None, level: float = DEFAULT_LEVEL, extra_notes: Sequence[str] = (),
                 frame=None) -> Path:
    """Write one trial's architecture as ``OUT/<study>-t<N>-<arch_id>.yaml``; returns the path.

    ``recipe`` (a name or YAML path) is written into the config; by default the search's own proxy recipe,
    as it applied to this architecture, is written beside it as ``<stem>.recipe.yaml`` and named there, so
    the config trains the way it was searched. The header holds a complete ``lowspace train`` command; the
    notes hold the trial's metrics, its comparisons with the study's presets at ``level`` and
    ``extra_notes``. ``frame``: the study's :func:`~lowspace.report.tables.trials_frame`, if at hand.
    """
    if isinstance(trial, int):
        numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
        if trial not in numbers:
            last = max(numbers) if numbers else None
            raise ConfigError("--trial", trial, f"study {study.study_name!r} has trials 0..{last}" if numbers
                              else f"study {study.study_name!r} has no trials")
        trial = numbers[trial]
    cfg = trial_config(trial)
    want = trial.user_attrs.get("arch_id")
    safe = _file_stem(f"{study.study_name}-t{trial.number:04d}-{cfg.arch_id}")
    path = Path(out_dir) / f"{safe}.yaml"
    recipe_path, recipe_text, how = _recipe_file(study, cfg, recipe, Path(out_dir) / f"{safe}.recipe.yaml")
    if recipe is None:
        preset = trial.user_attrs.get("preset")
        recipe = recipe_path.name if recipe_path is not None else (get_preset(preset).recipe if preset else cfg.recipe)
    if frame is None:
        from .tables import trials_frame
        frame = trials_frame(study)
    notes = " ".join([describe_trial(study, trial), *_claims(frame, trial.number, level), *extra_notes])
    cfg = cfg.replace(name=name or safe.replace("-", "_"), recipe=recipe, notes=notes)
    data = cfg.to_dict()
    ordered = {k: data[k] for k in _FIRST}
    ordered.update({k: v for k, v in data.items() if k not in _FIRST})
    header = (f"{HEADER} from study {study.study_name!r}, trial {trial.number}.\n"
              f"# arch_id {cfg.arch_id}. {how}\n"
              f"# Train it: {train_command(study, path, recipe_path)}\n")
    text = header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=110)
    again = ArchConfig.from_yaml(text)
    if again.arch_id != cfg.arch_id or (want and again.arch_id != want):
        raise ExportError(f"trial {trial.number}: the exported config does not rebuild arch_id {want} "
                          f"(got {again.arch_id})")
    if recipe_path is not None:
        atomic_write_text(recipe_path, recipe_text)
    atomic_write_text(path, text)
    return path


def _recipe_file(study, cfg: ArchConfig, recipe: str | None, path: Path) -> tuple[Path | None, str, str]:
    """(path of the recipe file to write or None, its text, a header sentence saying how the config trains)."""
    if recipe is not None:
        return None, "", f"Recipe {recipe} (chosen at export)."
    searched = searched_recipe(study)
    if searched is None:
        return None, "", "The study recorded no proxy recipe: the config names its own recipe."
    from ..train.recipe import load_recipe
    fields = recipe_for(searched, cfg)
    try:
        resolved = load_recipe(fields)
    except ConfigError as err:
        raise ExportError(f"the study's proxy recipe does not load with this lowspace ({err}); pass --recipe") from None
    dropped = searched.get("dropped")
    text = (f"# The proxy recipe study {study.study_name!r} trained its candidates with, applied to arch_id "
            f"{cfg.arch_id}.\n" + (f"# Fields this lowspace no longer has were left out: {', '.join(dropped)}\n"
                                  if dropped else "")
            + yaml.safe_dump(fields, sort_keys=False, default_flow_style=None, width=110))
    sizes = list(resolved.resolutions) if resolved.resolutions else [cfg.resolution]
    how = (f"Trains as searched: {path.name} ({resolved.epochs} epochs at {'/'.join(map(str, sizes))} px, "
           f"evaluated at {resolved.eval_resolution or cfg.resolution} px).")
    return path, text, how


def _claims(frame, number: int, level: float) -> list[str]:
    from .claims import claim_lines
    lines = claim_lines(frame, level, number=number)
    return [f"Against the study's presets at the {level * 100:g} % level: " + "; ".join(lines) + "."] if lines else []


def export_trials(study, trials: Iterable, out_dir: str | Path, recipe: str | None = None,
                  level: float = DEFAULT_LEVEL) -> list[Path]:
    """Export several trials (numbers or FrozenTrials)."""
    from .tables import trials_frame
    frame = trials_frame(study)
    return [export_trial(study, t, out_dir, recipe=recipe, level=level, frame=frame) for t in trials]


def pareto_trials(study) -> list[optuna.trial.FrozenTrial]:
    """Trials on the Pareto front (accuracy vs latency[, MACs]) of complete, feasible, distinct architectures."""
    from .tables import trials_frame
    df = trials_frame(study)
    numbers = set(df.loc[df["pareto"], "number"].astype(int)) if not df.empty else set()
    return [t for t in study.get_trials(deepcopy=False) if t.number in numbers]


def export_pareto(study, out_dir: str | Path, recipe: str | None = None, prune: bool = True,
                  level: float = DEFAULT_LEVEL) -> list[Path]:
    """Export every Pareto-optimal architecture of a study.

    ``prune``: remove this study's earlier exports in ``out_dir`` that are no longer on the front (files
    this function wrote, recognised by name and header), so the folder is the current front.
    """
    trials = pareto_trials(study)
    if not trials:
        raise ExportError(f"study {study.study_name!r} has no complete, feasible trials to export yet")
    paths = export_trials(study, trials, out_dir, recipe=recipe, level=level)
    if prune:
        keep = {p.resolve() for p in paths} | {p.with_suffix(".recipe.yaml").resolve() for p in paths}
        prefix = _file_stem(f"{study.study_name}-t")
        mine = (f"{HEADER} from study {study.study_name!r}", f"# The proxy recipe study {study.study_name!r}")
        for old in Path(out_dir).glob(f"{prefix}*.yaml"):
            if old.resolve() not in keep and old.read_text().startswith(mine):
                old.unlink()
    return paths
