"""Study set-up: open the storage, create the study (or load it to resume), record what it was made with,
and enqueue the space's named points (and, under promotion, continuations of interrupted trials)."""
from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from .. import __version__
from ..errors import ConfigError
from ..pareto import REFERENCE_ATTR, reference_point
from ._accounting import is_duplicate
from ._promotion import enqueue_continuations
from ._resume import (CONFIG_ATTR, DEPLOY_ATTR, PROXY_ATTR, SPACE_HASH_ATTR, SPLIT_ATTR, check_compatible,
                      check_space, resolved_deploy, resolved_proxy, space_hash, split_settings, stored_form,
                      unsplit_note)
from ._samplers import make_pruner, make_sampler, worker_seed
from .settings import SearchConfig
from .space import SearchSpace
from .storage import display_url, normalize_storage, open_storage

_NO_CUDA = "no CUDA device is visible here (torch.cuda.is_available() is False); use cpu or auto"


def study_name_for(config: SearchConfig, space: SearchSpace) -> str:
    return config.study_name or f"{space.name}-{config.mode}"


def storage_for(config: SearchConfig):
    """The study storage of ``config``, with its heartbeat settings."""
    hb = config.heartbeat
    return open_storage(config.storage, heartbeat_interval=hb.heartbeat_interval, grace_period=hb.grace_period,
                        max_retry=hb.max_retry)


def check_device(path: str, spec: str) -> None:
    """Raise ConfigError if device ``spec`` (``cuda``, ``cuda:N``, ``mps``) is not present on this machine."""
    if not spec.startswith(("cuda", "mps")):
        return
    import torch
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(path, spec, "no Apple GPU (MPS) is available here; use cpu or auto")
        return
    if not torch.cuda.is_available():
        raise ConfigError(path, spec, _NO_CUDA)
    index = int(spec.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(path, spec, f"this machine has {torch.cuda.device_count()} CUDA device(s): cuda:0 to "
                                      f"cuda:{torch.cuda.device_count() - 1}")


def validate_search(config: SearchConfig, space: SearchSpace, engines=None, data=None):
    """Check what every trial needs before a study is created or resumed: the devices, the proxy schedule
    and the latency protocol (by building the trial pipeline), the data set (loaded once) and the proxy's
    classes. Returns the pipeline and notes for the user (files the data scan skipped or left out, a corrupt
    measurement cache that was rebuilt)."""
    from .trial import TrialPipeline
    check_device("device", config.device)
    check_device("protocol.device", config.protocol.device)
    pipeline = TrialPipeline(space, config, engines=engines, data=data)
    _ = pipeline.data  # a missing or broken data set is one clear error now, not a failure in every trial
    _check_classes(pipeline)
    notes = [_data_note(pipeline.data), _check_measurement_cache()]
    return pipeline, [note for note in notes if note]


def _data_note(data) -> str | None:
    """What scanning class folders skipped or left out (one line), or None."""
    from ..data.folders import describe_scan
    info = getattr(data, "info", None)
    note = describe_scan(info) if isinstance(info, dict) else None
    return f"data {info.get('root', '')}: {note}" if note else None


def _check_classes(pipeline) -> None:
    """The proxy's (and each rung's) ``classes`` exist in the data set: a class count it has, names it holds."""
    from ..data import DataError, select_classes
    known = getattr(pipeline.data, "classes", None)
    if known is None:  # data of custom engines
        return
    schedules = [("proxy", pipeline.schedule)]
    if pipeline.ladder is not None:
        schedules += [(f"promotion.rungs.{r.index}", r.schedule) for r in pipeline.ladder.rungs]
    for path, schedule in schedules:
        classes = getattr(schedule, "classes", None)
        if classes is None:
            continue
        try:
            select_classes(known, classes, getattr(schedule, "seed", 0) or 0)
        except DataError as err:
            raise ConfigError(f"{path}.classes", classes, str(err).removeprefix("classes: ")) from None


def _check_measurement_cache() -> str | None:
    """Open the measurement cache once, so that a corrupt file is rebuilt (and said so) before any trial."""
    from ..cost.cache import CacheError, CacheRebuilt, MeasurementCache
    cache = MeasurementCache()
    if not cache.path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheRebuilt)  # returned as a note instead
            return cache.check()
    except CacheError as err:
        return f"{err}; latencies are measured without the cache"


def create_or_load_study(config: SearchConfig, space: SearchSpace, storage=None, worker_index: int = 0,
                         enqueue: bool = True, notes: list[str] | None = None) -> optuna.Study:
    """Create the study (or load it to resume), give it this worker's sampler (:func:`seed_sampler`) and
    enqueue the space's points that have not run.

    A study is tied to the settings that make its results comparable and to its search space (see
    :mod:`._resume`): resuming with other ones is a ConfigError, unless no trial of the study has started
    or produced a result, in which case the study is made again with the new settings (said in ``notes``).
    """
    storage = storage if storage is not None else storage_for(config)
    name = study_name_for(config, space)
    study = _open_study(storage, name, config)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_compatible(stored, config, name, study.user_attrs.get(PROXY_ATTR),
                                 study.user_attrs.get(DEPLOY_ATTR))
                check_space(study, space, name, config.space)
            except ConfigError as err:
                if _has_results(study):
                    raise
                optuna.delete_study(study_name=name, storage=storage)
                study, stored, caught = _open_study(storage, name, config), None, []
                if notes is not None:
                    notes.append(f"study {name!r} had no results yet; made it again with these settings ({err})")
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if stored is None:
        _record(study, config, space)
    else:
        note = unsplit_note(study.user_attrs, name)
        if note:
            warnings.warn(note, stacklevel=2)
    if enqueue and config.uses_promotion:
        enqueue_continuations(study)  # before the points: an interrupted point goes on from its last rung
    if enqueue and config.presets:
        enqueue_points(study, space)
    seed_sampler(study, config, worker_index)
    return study


def _open_study(storage, name: str, config: SearchConfig) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, directions=config.directions,
                               pruner=make_pruner(config), load_if_exists=True)


def _has_results(study: optuna.Study) -> bool:
    """Whether any trial of ``study`` has started and not merely failed (failed trials of bad settings are
    no results to keep)."""
    return any(t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))


def seed_sampler(study: optuna.Study, config: SearchConfig, worker_index: int) -> int | None:
    """Give ``study`` the sampler of worker ``worker_index`` for this run, seeded from the search seed, the
    worker index and the number of trials the study holds (:func:`~._samplers.worker_seed`); returns
    the seed."""
    seed = worker_seed(config.seed, worker_index, len(study.get_trials(deepcopy=False)))
    study.sampler = make_sampler(config, seed)
    return seed


def _record(study: optuna.Study, config: SearchConfig, space: SearchSpace) -> None:
    stored = stored_form(config.to_dict())
    stored["storage"] = display_url(normalize_storage(config.storage))
    study.set_user_attr(CONFIG_ATTR, stored)
    study.set_user_attr("space", space.name)
    study.set_user_attr("space_yaml", space.text or "")
    study.set_user_attr(SPACE_HASH_ATTR, space_hash(space))
    study.set_user_attr("objectives", config.objective_names)
    study.set_user_attr("directions", config.directions)
    study.set_user_attr("mode", config.mode)
    study.set_user_attr("sampler", config.sampler_name)
    study.set_user_attr("lowspace_version", __version__)
    study.set_user_attr(PROXY_ATTR, resolved_proxy(config))
    study.set_user_attr(DEPLOY_ATTR, resolved_deploy(config))
    study.set_user_attr(SPLIT_ATTR, split_settings(config))
    limits = config.constraints
    study.set_user_attr(REFERENCE_ATTR, reference_point(
        config.objectives, limits={"latency_ms": limits.max_latency_ms, "macs": limits.max_macs},
        declared={"latency_ms": config.report.reference_latency_ms, "macs": config.report.reference_macs}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.objective_names)  # optuna-dashboard shows the objectives by name


def enqueue_points(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue the space's points (presets first) that the study has not run, is not running and has not
    queued; a point whose trial failed or was interrupted is queued again. Returns the points' names."""
    names = sorted(space.points, key=lambda n: (n not in space.preset_points(), n))
    trials = study.get_trials(deepcopy=False)
    for n in names:
        params = space.point(n)
        if not any(_covers(t, n, params) for t in trials):
            study.enqueue_trial(params, user_attrs={"point": n})
    return names


def _covers(t, name: str, params: dict) -> bool:
    """Whether trial ``t`` has run, runs or will run point ``name`` (a failed or interrupted one has not)."""
    if t.state == TrialState.FAIL and not is_duplicate(t):
        return False
    if t.state == TrialState.WAITING:
        return t.user_attrs.get("point") == name
    return t.params == params
