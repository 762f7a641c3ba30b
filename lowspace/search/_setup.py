"""Study set-up: open the storage, create the study (or load it to resume), record what it was made with,
and enqueue the space's named points (and, under promotion, continuations of interrupted trials)."""
from __future__ import annotations

import warnings

import optuna

from .. import __version__
from ..pareto import REFERENCE_ATTR, reference_point
from ._promotion import enqueue_continuations
from ._resume import (CONFIG_ATTR, PROXY_ATTR, SPLIT_ATTR, check_compatible, resolved_proxy, split_settings,
                      stored_form, unsplit_note)
from ._samplers import make_pruner, make_sampler
from .settings import SearchConfig
from .space import SearchSpace
from .storage import display_url, normalize_storage, open_storage


def study_name_for(config: SearchConfig, space: SearchSpace) -> str:
    return config.study_name or f"{space.name}-{config.mode}"


def storage_for(config: SearchConfig):
    """The study storage of ``config``, with its heartbeat settings."""
    hb = config.heartbeat
    return open_storage(config.storage, heartbeat_interval=hb.heartbeat_interval, grace_period=hb.grace_period,
                        max_retry=hb.max_retry)


def uses_heartbeat(storage) -> bool:
    """Whether trials in ``storage`` (one opened by :func:`storage_for`) beat, so that a dead worker's
    running trial is failed and retried."""
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def create_or_load_study(config: SearchConfig, space: SearchSpace, storage=None, worker_index: int = 0,
                         enqueue: bool = True) -> optuna.Study:
    """Create the study (or load it to resume) and, on creation, enqueue the space's preset points.

    A study is tied to the settings that make its results comparable (see :mod:`._resume`): resuming
    with other ones is a ConfigError.
    """
    storage = storage if storage is not None else storage_for(config)
    name = study_name_for(config, space)
    study = optuna.create_study(storage=storage, study_name=name, directions=config.directions,
                                sampler=make_sampler(config, worker_index), pruner=make_pruner(config),
                                load_if_exists=True)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        _record(study, config, space)
    else:
        check_compatible(stored, config, name, study.user_attrs.get(PROXY_ATTR))
        note = unsplit_note(study.user_attrs, name)
        if note:
            warnings.warn(note, stacklevel=2)
    if enqueue and config.uses_promotion:
        enqueue_continuations(study)  # before the points: an interrupted point goes on from its last rung
    if enqueue and config.presets:
        enqueue_points(study, space)
    return study


def _record(study: optuna.Study, config: SearchConfig, space: SearchSpace) -> None:
    stored = stored_form(config.to_dict())
    stored["storage"] = display_url(normalize_storage(config.storage))
    study.set_user_attr(CONFIG_ATTR, stored)
    study.set_user_attr("space", space.name)
    study.set_user_attr("space_yaml", space.text or "")
    study.set_user_attr("objectives", config.objective_names)
    study.set_user_attr("directions", config.directions)
    study.set_user_attr("mode", config.mode)
    study.set_user_attr("sampler", config.sampler_name)
    study.set_user_attr("lowspace_version", __version__)
    study.set_user_attr(PROXY_ATTR, resolved_proxy(config))
    study.set_user_attr(SPLIT_ATTR, split_settings(config))
    study.set_user_attr(REFERENCE_ATTR, reference_point(
        config.objectives, limits={"latency_ms": config.constraints.max_latency_ms, "macs": config.constraints.max_macs},
        declared={"latency_ms": config.report.reference_latency_ms, "macs": config.report.reference_macs}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.objective_names)  # optuna-dashboard shows the objectives by name


def enqueue_points(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue the space's points (presets first) unless already in the study; returns their names."""
    names = sorted(space.points, key=lambda n: (n not in space.preset_points(), n))
    for n in names:
        study.enqueue_trial(space.point(n), user_attrs={"point": n}, skip_if_exists=True)
    return names
