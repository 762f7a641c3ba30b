"""The sampler and pruner of a search config."""
from __future__ import annotations

import warnings

import optuna

from ..errors import ConfigError
from .settings import SearchConfig


def make_sampler(config: SearchConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of ``config``, seeded per worker so that workers do not propose the same points.

    Model-based samplers start after a few random trials (4 to 10, a quarter of ``n_trials``); NSGA-II's
    population is a quarter of ``n_trials`` within 8 to 50.
    """
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
