"""Studies: samplers, pruners, storage, the worker loop and local multi-process workers.

``run_search(config)`` creates (or resumes) the study, enqueues the space's preset points, then runs one
worker in this process or ``config.workers`` worker processes, each pinned to one GPU (or the CPU).
Workers on other machines join by running the same command against the same PostgreSQL URL.

The stop condition counts COMPLETE trials across all workers: a worker starts a new trial only while
``complete + running < n_trials`` (running trials of dead workers are failed by the heartbeat and retried),
so a study ends with ``n_trials`` complete trials (a race between workers can add at most workers - 1).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from .. import __version__
from ..errors import ConfigError
from .settings import SearchConfig
from .space import SearchSpace, load_space
from .storage import display_url, normalize_storage, open_storage
from .trial import Engines, TrialPipeline, summary_line

CONFIG_ATTR = "lowspace_config"
PROXY_ATTR = "proxy_resolved"   # the proxy schedule with its defaults, so a later change of a default is caught


@dataclass
class SearchSummary:
    """What a search (or one worker) did."""

    study_name: str
    storage: str
    n_trials: int
    states: dict[str, int] = field(default_factory=dict)
    ran: int = 0
    stopped_reason: str = ""

    @property
    def complete(self) -> int:
        return self.states.get("COMPLETE", 0)


# ==================================================================== samplers, pruners, study
def make_sampler(config: SearchConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of ``config`` (seeded per worker so workers do not propose the same points)."""
    seed = None if config.seed is None else config.seed + worker_index
    name = config.sampler_name
    startup = max(4, min(10, config.n_trials // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                              constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, config.n_trials // 4)))
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    raise ConfigError("sampler", name, "allowed: tpe, nsga2, gp, random")


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner on proxy epochs (constrained mode only; Pareto mode uses lowspace's halving)."""
    if config.mode != "constrained" or config.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.early_stopping.min_epochs,
                                                      reduction_factor=config.early_stopping.eta)
    return optuna.pruners.HyperbandPruner(min_resource=config.early_stopping.min_epochs,
                                          reduction_factor=max(config.early_stopping.eta, 2))


def study_name_for(config: SearchConfig, space: SearchSpace) -> str:
    return config.study_name or f"{space.name}-{config.mode}"


def _storage_for(config: SearchConfig):
    hb = config.heartbeat
    return open_storage(config.storage, heartbeat_interval=hb.heartbeat_interval, grace_period=hb.grace_period,
                        max_retry=hb.max_retry)


def create_or_load_study(config: SearchConfig, space: SearchSpace, storage=None, worker_index: int = 0,
                         enqueue: bool = True) -> optuna.Study:
    """Create the study (or load it to resume) and, on creation, enqueue the space's preset points.

    A study is tied to its mode and objectives: resuming with different ones is an error.
    """
    storage = storage if storage is not None else _storage_for(config)
    name = study_name_for(config, space)
    study = optuna.create_study(storage=storage, study_name=name, directions=config.directions,
                                sampler=make_sampler(config, worker_index), pruner=make_pruner(config),
                                load_if_exists=True)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        stored_cfg = json.loads(json.dumps(config.to_dict(), default=str))
        stored_cfg["storage"] = display_url(normalize_storage(config.storage))
        study.set_user_attr(CONFIG_ATTR, stored_cfg)
        study.set_user_attr("space", space.name)
        study.set_user_attr("space_yaml", space.text or "")
        study.set_user_attr("objectives", config.objective_names)
        study.set_user_attr("directions", config.directions)
        study.set_user_attr("mode", config.mode)
        study.set_user_attr("sampler", config.sampler_name)
        study.set_user_attr("lowspace_version", __version__)
        study.set_user_attr(PROXY_ATTR, _resolved_proxy(config))
    else:
        _check_compatible(stored, config, name, space, study.user_attrs.get(PROXY_ATTR))
    if enqueue and config.presets:
        enqueue_points(study, space)
    return study


# Protocol fields whose default changed when they were added: what studies that did not record them used.
PROTOCOL_BEFORE_RECORDED = {"cudnn_benchmark": True}


def _check_compatible(stored: dict, config: SearchConfig, name: str, space: SearchSpace,
                      proxy_resolved: dict | None = None) -> None:
    mine = config.to_dict()
    for key in ("mode", "objectives"):
        if stored.get(key) != mine.get(key):
            raise ConfigError(key, mine.get(key), f"study {name!r} was created with {key} {stored.get(key)!r}; "
                                                  "resume with the same value or pick another --study-name")
    for key in ("protocol", "proxy", "data"):
        theirs, ours = stored.get(key) or {}, _jsonable(mine.get(key) or {})
        if key == "protocol":
            theirs = {**PROTOCOL_BEFORE_RECORDED, **theirs}
        if key == "proxy" and proxy_resolved is not None:
            theirs, ours = proxy_resolved, _resolved_proxy(config)
        changed = sorted(k for k in theirs if theirs[k] != ours.get(k))
        # Settings the study did not record: the protocol is stored whole, so a missing field was added to
        # lowspace after the study was made; so was a proxy field of a study made before proxy_resolved
        # existed. Say which value the resume uses. The data options are stored as given: a new one is a change.
        unrecorded = sorted(set(ours) - set(theirs))
        if key == "data":
            changed += unrecorded
        if changed:
            raise ConfigError(f"{key}.{changed[0]}", ours.get(changed[0]),
                              f"study {name!r} was created with {key} {theirs!r}; results would not be "
                              "comparable: resume with the same value or pick another --study-name")
        for k in unrecorded:
            warnings.warn(f"study {name!r} recorded no {key}.{k}; resuming with {key}.{k}={ours[k]!r}", stacklevel=2)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _resolved_proxy(config: SearchConfig) -> dict:
    """The proxy schedule with every default filled in, as recorded in a new study (``proxy_resolved``)."""
    from .trial import _make_schedule
    try:
        return _jsonable(dataclasses.asdict(_make_schedule(dict(config.proxy))))
    except ConfigError:  # an invalid schedule is reported by the trial pipeline, which builds it too
        return _jsonable(dict(config.proxy))


def enqueue_points(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue the space's points (presets first) unless already in the study; returns their names."""
    names = sorted(space.points, key=lambda n: (n not in space.preset_points(), n))
    for n in names:
        study.enqueue_trial(space.point(n), user_attrs={"point": n}, skip_if_exists=True)
    return names


def count_states(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (COMPLETE, RUNNING, WAITING, PRUNED, FAIL)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _heartbeat_enabled(study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled
    return is_heartbeat_enabled(study._storage)


def _fail_stale(study) -> None:
    if _heartbeat_enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


# ==================================================================== one worker
def run_worker(config: SearchConfig, worker_index: int = 0, engines: Engines | None = None, data: Any = None,
               on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               space: SearchSpace | None = None, poll_s: float | None = None, storage=None) -> SearchSummary:
    """Run trials until the study has ``config.n_trials`` complete ones (or the attempt cap / timeout).

    ``on_trial(study, frozen_trial)`` is called after every trial this worker runs.
    """
    space = space or load_space(config.space)
    storage = storage if storage is not None else _storage_for(config)
    study = create_or_load_study(config, space, storage, worker_index, enqueue=worker_index == 0)
    pipeline = TrialPipeline(space, config, engines=engines, data=data)
    _ = pipeline.data  # a missing data set is one clear error now, not a failure in every trial
    summary = SearchSummary(study.study_name, display_url(normalize_storage(config.storage)), config.n_trials)
    poll = poll_s if poll_s is not None else min(5.0, float(config.heartbeat.heartbeat_interval))
    deadline = None if config.timeout_s is None else time.monotonic() + config.timeout_s
    waits_on_running = _heartbeat_enabled(study)

    def callback(st, frozen):
        if on_trial is not None:
            on_trial(st, frozen)

    while True:
        _fail_stale(study)
        states = count_states(study)
        complete, running = states.get("COMPLETE", 0), states.get("RUNNING", 0)
        if complete >= config.n_trials:
            summary.stopped_reason = "reached n_trials"
            break
        attempts = sum(v for k, v in states.items() if k != "WAITING")
        if attempts >= config.attempts_cap:
            summary.stopped_reason = (f"gave up after {attempts} trials: too many candidates were rejected, stopped "
                                      "or failed (raise max_attempts or relax the constraints)")
            break
        if deadline is not None and time.monotonic() > deadline:
            summary.stopped_reason = "timeout"
            break
        if waits_on_running and complete + running >= config.n_trials:
            time.sleep(poll)  # the last trials are running elsewhere; take over if one of them fails
            continue
        study.optimize(pipeline, n_trials=1, catch=(Exception,), callbacks=[callback], gc_after_trial=False)
        summary.ran += 1
    summary.states = count_states(study)
    return summary


# ==================================================================== the search (one or many workers)
def run_search(config: SearchConfig, engines: Engines | None = None, data: Any = None,
               on_trial: Callable | None = None, progress: bool = False) -> SearchSummary:
    """Create or resume the study and run it to ``config.n_trials`` complete trials.

    With ``config.workers > 1`` this starts that many worker processes (``python -m
    lowspace.search.worker``), pins each to one GPU (``CUDA_VISIBLE_DEVICES``) or to the CPU, watches
    the study and waits for them. ``progress`` shows a rich progress bar (trials done / total, best so far,
    ETA). ``engines`` and ``data`` (objects) apply to a single in-process worker only.
    """
    if config.workers > 1 and (engines is not None or data is not None):
        raise ConfigError("workers", config.workers, "engine or data objects cannot reach worker processes; name an "
                                                     "engines factory (module:function) in the config instead")
    space = load_space(config.space)
    config = dataclasses.replace(config, storage=normalize_storage(config.storage))
    storage = _storage_for(config)
    study = create_or_load_study(config, space, storage)
    reporter = ProgressReporter(study, config) if progress else None
    try:
        if config.workers <= 1:
            def hook(st, frozen):
                if reporter is not None:
                    reporter.update(frozen)
                if on_trial is not None:
                    on_trial(st, frozen)
            if reporter is not None:
                reporter.start()
            summary = run_worker(config, 0, engines=engines, data=data, on_trial=hook, space=space, storage=storage)
        else:
            summary = _run_processes(config, study, reporter)
    finally:
        if reporter is not None:
            reporter.stop()
    return summary


def worker_environments(n_workers: int, device: str) -> list[dict[str, str]]:
    """Environment overrides per local worker: one GPU each (round robin), and CPU threads split evenly.

    Workers sharing a GPU are bound by Python and kernel launches, so each gets its share of the cores
    instead of every process starting one thread per core.
    """
    n_gpus = 0
    if device != "cpu":
        try:
            import torch
            n_gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001
            n_gpus = 0
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    lock_dir = Path(tempfile.gettempdir())
    envs = []
    for i in range(n_workers):
        env = {"LOWSPACE_WORKER_INDEX": str(i), "OMP_NUM_THREADS": str(threads),
               "LOWSPACE_NUM_THREADS": str(threads)}
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)
            # workers sharing a GPU take turns timing (their training still runs meanwhile)
            env["LOWSPACE_TIMING_LOCK"] = str(lock_dir / f"lowspace-timing-gpu{i % n_gpus}.lock")
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["LOWSPACE_TIMING_LOCK"] = str(lock_dir / "lowspace-timing-cpu.lock")
        envs.append(env)
    return envs


def _run_processes(config: SearchConfig, study: optuna.Study, reporter) -> SearchSummary:
    tmp = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="lowspace-search-", delete=False)
    with tmp:
        json.dump(config.to_dict(), tmp, default=str)
    procs: list[subprocess.Popen] = []
    logs = []
    log_dir = Path(config.out) / "workers" if config.out else Path(tempfile.mkdtemp(prefix="lowspace-workers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, extra in enumerate(worker_environments(config.workers, config.device)):
            env = {**os.environ, **extra}
            log = open(log_dir / f"worker{i}.log", "ab")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "lowspace.search.worker", tmp.name, str(i)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        if reporter is not None:
            reporter.start()
        seen: set[int] = set()
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            if reporter is not None:
                for t in study.get_trials(deepcopy=False):
                    if t.state.is_finished() and t.number not in seen:
                        seen.add(t.number)
                        reporter.update(t)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for log in logs:
            log.close()
        os.unlink(tmp.name)
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (0, None)]
    summary = SearchSummary(study.study_name, display_url(normalize_storage(config.storage)), config.n_trials,
                            states=count_states(study), ran=len(seen) if reporter else 0)
    if bad:
        summary.stopped_reason = "worker(s) exited with errors: " + ", ".join(
            f"{i} (code {c}, see {log_dir / f'worker{i}.log'})" for i, c in bad)
    else:
        summary.stopped_reason = "reached n_trials" if summary.complete >= config.n_trials else "workers stopped"
    return summary


# ==================================================================== progress
class ProgressReporter:
    """A rich progress bar over COMPLETE trials with the best accuracy so far and an ETA; prints one line
    per finished trial."""

    def __init__(self, study: optuna.Study, config: SearchConfig):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn
        self.study = study
        self.config = config
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=self.console, transient=False,
                                 speed_estimate_period=3600.0)  # trials take minutes: average over the hour
        self.task = None

    def _best(self) -> str:
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        accs = [t.user_attrs.get("accuracy") for t in trials if t.user_attrs.get("accuracy") is not None]
        if not accs:
            return "best: -"
        best = max(trials, key=lambda t: t.user_attrs.get("accuracy") or float("-inf"))
        text = f"best acc {best.user_attrs['accuracy']:.4g} (#{best.number}, {best.user_attrs.get('latency_ms', 0):.3g} ms)"
        if self.config.mode != "constrained":
            from ..pareto import pareto_mask
            pts = [(-t.user_attrs["accuracy"], t.user_attrs.get("latency_ms", 0.0)) for t in trials
                   if t.user_attrs.get("accuracy") is not None]
            text += f", front {int(pareto_mask(pts).sum())}"
        return text

    def start(self) -> None:
        complete = count_states(self.study).get("COMPLETE", 0)
        self.progress.start()
        self.task = self.progress.add_task(f"search {self.study.study_name}", total=self.config.n_trials,
                                           completed=min(complete, self.config.n_trials), best=self._best())

    def update(self, frozen) -> None:
        if self.task is None:
            return
        self.progress.console.print(summary_line(frozen), highlight=False, soft_wrap=True)
        complete = count_states(self.study).get("COMPLETE", 0)
        self.progress.update(self.task, completed=min(complete, self.config.n_trials), best=self._best())

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
