"""The sampler and pruner of a search config."""
from __future__ import annotations

import warnings

import numpy as np
import optuna

from ..errors import ConfigError
from .settings import SearchConfig


def worker_seed(seed: int | None, worker_index: int, trials_before: int) -> int | None:
    """The sampler seed of one worker of one run: derived from the search's ``seed``, the worker's index and
    the number of trials the study held when the worker started, so that workers draw differently and a
    resumed study continues instead of drawing its first run's candidates again. None stays None
    (unseeded)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker_index, trials_before]).generate_state(1)[0])


def make_sampler(config: SearchConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``config`` with ``seed`` (one worker's, from :func:`worker_seed`).

    Model-based samplers start after a few random trials (4 to 10, a quarter of ``n_trials``); NSGA-II's
    population is a quarter of ``n_trials`` within 8 to 50.
    """
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
    """Optuna's pruner on proxy epochs (constrained mode only: Optuna cannot prune multi-objective trials,
    so Pareto mode stops candidates with lowspace's own successive halving)."""
    if config.mode != "constrained" or config.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.early_stopping.min_epochs,
                                                      reduction_factor=config.early_stopping.eta)
    return optuna.pruners.HyperbandPruner(min_resource=config.early_stopping.min_epochs,
                                          reduction_factor=max(config.early_stopping.eta, 2))
