"""Latency-aware architecture search: spaces, the trial pipeline, studies, workers.

    space = load_space("lowformer")                      # or a YAML path
    config = SearchConfig.from_yaml("experiments/demo/demo.yaml")
    summary = run_search(config)                         # creates or resumes the study

Names are imported from their modules on first use (``lowspace search --help`` stays quick).
"""

from .._lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(("abandoned", "counted_trials", "is_duplicate", "outcome_counts"), "_accounting"),
    **dict.fromkeys(("budget_reason", "spent_gpu_s", "trial_gpu_s"), "_budget"),
    "DeviceGate": "_gate",
    **dict.fromkeys(("HalvingSettings", "ParetoHalving", "keep_at_rung", "rung_epochs"), "halving"),
    "SearchConfig": "settings",
    **dict.fromkeys(("Param", "SearchSpace", "builtin_spaces", "load_space"), "space"),
    **dict.fromkeys(("StorageError", "load_study", "normalize_storage", "open_storage"), "storage"),
    "run_search": "_launch",
    **dict.fromkeys(("SearchSummary", "count_states", "run_worker"), "_loop"),
    **dict.fromkeys(("make_pruner", "make_sampler"), "_samplers"),
    **dict.fromkeys(("create_or_load_study", "enqueue_points"), "_setup"),
    **dict.fromkeys(("Engines", "TrialFailed", "TrialPipeline", "default_engines"), "trial"),
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
