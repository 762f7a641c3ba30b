"""A search from start to end: set up (or resume) the study, then run one worker in this process or
``config.workers`` worker processes (``python -m lowspace.search.worker``), each pinned to one GPU or
to the CPU. Workers on other machines join by running the same command against the same storage URL."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from ..errors import ConfigError
from ._accounting import outcome_counts
from ._loop import SearchSummary, count_states, run_worker, stop_reason
from ._progress import ProgressReporter
from ._setup import create_or_load_study, storage_for, validate_search
from ._stale import recover_stale, running_elsewhere
from .settings import SearchConfig
from .storage import display_url, normalize_storage
from .trial import Engines


def run_search(config: SearchConfig, engines: Engines | None = None, data: Any = None,
               on_trial: Callable | None = None, progress: bool = False) -> SearchSummary:
    """Create or resume the study and run it to ``config.n_trials`` complete trials.

    With ``config.workers > 1`` this starts that many worker processes, pins each to one GPU
    (``CUDA_VISIBLE_DEVICES``) or to the CPU, watches the study and waits for them. ``progress`` shows a
    progress bar (trials done / total, best so far, ETA). ``engines`` and ``data`` (objects) apply to a
    single in-process worker only.
    """
    if config.workers > 1 and (engines is not None or data is not None):
        raise ConfigError("workers", config.workers, "engine or data objects cannot reach worker processes; name an "
                                                     "engines factory (module:function) in the config instead")
    space = config.search_space()
    config = dataclasses.replace(config, storage=normalize_storage(config.storage))
    # everything is checked before the study is created or resumed
    pipeline, notes = validate_search(config, space, engines, data)
    storage = storage_for(config)
    study = create_or_load_study(config, space, storage, notes=notes)
    hb = config.heartbeat
    grace = float(hb.grace_period or 4 * hb.heartbeat_interval)
    notes += recover_stale(study, storage, grace, hb.max_retry)
    elsewhere = running_elsewhere(study, grace)
    if elsewhere:
        notes.append(elsewhere)
    deadline = None if config.timeout_s is None else time.monotonic() + config.timeout_s
    reporter = ProgressReporter(study, config, deadline) if progress else None
    try:
        if reporter is not None:
            reporter.start()
            for note in notes:
                reporter.note(note)
        if config.workers > 1:
            summary = _run_processes(config, study, reporter, deadline)
            summary.notes[:0] = notes
            return summary

        def hook(st, frozen):
            if reporter is not None:
                reporter.update(frozen)
            if on_trial is not None:
                on_trial(st, frozen)
        summary = run_worker(config, 0, engines=pipeline.engines, data=pipeline.data, on_trial=hook, space=space,
                             storage=storage, notify=reporter.note if reporter is not None else None,
                             deadline=deadline, study=study)
        summary.notes[:0] = notes
        return summary
    finally:
        if reporter is not None:
            reporter.stop()


def worker_environments(n_workers: int, device: str) -> list[dict[str, str]]:
    """Environment overrides per local worker: one GPU each (round robin), and CPU threads split evenly.

    Workers sharing a GPU are bound by Python and kernel launches, so each gets its share of the cores
    instead of every process starting one thread per core. ``LOWSPACE_TIMING_LOCK`` names the
    :class:`~lowspace.search.DeviceGate` of the worker's device.
    """
    n_gpus = 0
    if device != "cpu":
        try:
            import torch
            n_gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no usable CUDA: the workers run on the CPU
            n_gpus = 0
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    lock_dir = Path(tempfile.gettempdir())
    envs = []
    for i in range(n_workers):
        env = {"LOWSPACE_WORKER_INDEX": str(i), "OMP_NUM_THREADS": str(threads),
               "LOWSPACE_NUM_THREADS": str(threads)}
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)
            env["LOWSPACE_TIMING_LOCK"] = str(lock_dir / f"lowspace-timing-gpu{i % n_gpus}.lock")
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["LOWSPACE_TIMING_LOCK"] = str(lock_dir / "lowspace-timing-cpu.lock")
        envs.append(env)
    return envs


def _start_workers(config: SearchConfig, config_path: str, log_dir: Path, logs: list) -> list[subprocess.Popen]:
    procs = []
    for i, extra in enumerate(worker_environments(config.workers, config.device)):
        log = open(log_dir / f"worker{i}.log", "ab")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "lowspace.search.worker", config_path, str(i)],
                                      env={**os.environ, **extra}, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _interrupt(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def _watch(procs: list[subprocess.Popen], study: optuna.Study, reporter: ProgressReporter | None) -> set[int]:
    """Wait for the workers; report every trial that finishes meanwhile. Returns the numbers reported."""
    seen: set[int] = set()
    while any(p.poll() is None for p in procs):
        time.sleep(1.0)
        if reporter is None:
            continue
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                reporter.update(t)
    return seen


def _run_processes(config: SearchConfig, study: optuna.Study, reporter: ProgressReporter | None,
                   deadline: float | None) -> SearchSummary:
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="lowspace-search-", delete=False) as tmp:
        json.dump(config.to_dict(), tmp, default=str)
    log_dir = Path(config.out) / "workers" if config.out else Path(tempfile.mkdtemp(prefix="lowspace-workers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    logs: list = []
    procs: list[subprocess.Popen] = []
    try:
        procs = _start_workers(config, tmp.name, log_dir, logs)
        seen = _watch(procs, study, reporter)
    except KeyboardInterrupt:
        _interrupt(procs)
        raise
    finally:
        for log in logs:
            log.close()
        os.unlink(tmp.name)
    summary = SearchSummary(study.study_name, display_url(normalize_storage(config.storage)), config.n_trials,
                            states=count_states(study), ran=len(seen), outcomes=outcome_counts(study))
    summary.stop, summary.stopped_reason = stop_reason(study, config, deadline)
    progress = f"{summary.complete} of {config.n_trials} complete trials"
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (0, None)]
    if bad:
        summary.stop = "workers_failed"
        summary.stopped_reason = "worker(s) exited with errors: " + ", ".join(
            f"{i} (code {c}, see {log_dir / f'worker{i}.log'})" for i, c in bad) + \
            f"; {summary.stopped_reason or progress}"
    elif not summary.stop:
        summary.stop, summary.stopped_reason = "workers_stopped", f"workers stopped with {progress}"
    return summary
