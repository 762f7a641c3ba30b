"""Latency-aware architecture search: spaces, the trial pipeline, studies, workers.

    space = load_space("lowformer")                      # or a YAML path
    config = SearchConfig.from_yaml("experiments/demo/demo.yaml")
    summary = run_search(config)                         # creates or resumes the study
"""
from ._accounting import counted_trials, is_duplicate, outcome_counts
from ._gate import DeviceGate
from .halving import HalvingSettings, ParetoHalving, keep_at_rung, rung_epochs
from .settings import SearchConfig
from .space import Param, SearchSpace, builtin_spaces, load_space
from .storage import StorageError, load_study, normalize_storage, open_storage
from ._launch import run_search
from ._loop import SearchSummary, count_states, run_worker
from ._samplers import make_pruner, make_sampler
from ._setup import create_or_load_study, enqueue_points
from .trial import Engines, TrialFailed, TrialPipeline, default_engines

__all__ = [
    "SearchSpace", "Param", "load_space", "builtin_spaces", "SearchConfig",
    "open_storage", "load_study", "normalize_storage", "StorageError",
    "create_or_load_study", "enqueue_points", "make_sampler", "make_pruner", "run_search", "run_worker",
    "count_states", "SearchSummary", "TrialPipeline", "TrialFailed", "Engines", "default_engines",
    "HalvingSettings", "ParetoHalving", "keep_at_rung", "rung_epochs", "DeviceGate",
    "counted_trials", "is_duplicate", "outcome_counts",
]
