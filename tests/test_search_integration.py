"""A real (tiny) search: the real cost engine (params, MACs, CPU latency) and proxy training on synthetic data."""
import math

import pytest

from lowspace.arch import ArchConfig
from lowspace.report import export_pareto
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import load_study
from lowspace.search import run_search

pytestmark = pytest.mark.slow


def test_tiny_real_search_end_to_end(tmp_path):
    config = SearchConfig.from_dict({
        "space": "demo", "n_trials": 2, "study_name": "real", "storage": f"sqlite:///{tmp_path / 'real.db'}",
        "device": "cpu",
        "protocol": {"device": "cpu", "options": {"max_time_s": 0.3, "min_chunks": 2, "chunk_ms": 5.0,
                                                  "warmup_ms": 5.0, "target_spread": 0.5}},
        "data": {"dataset": "synthetic", "num_classes": 10, "train_size": 80, "val_size": 40, "image_size": 16,
                 "channels": 1},
        "proxy": {"epochs": 2, "resolutions": [16], "batch_size": 40, "warmup_epochs": 0.5, "eval_batch_size": 40,
                  "bn_reestimate_images": 40},
        "early_stopping": {"kind": "halving", "min_epochs": 1, "eta": 2, "min_peers": 4},
    })
    summary = run_search(config)
    assert summary.complete == 2
    study = load_study(tmp_path / "real.db", "real")
    for t in study.trials:
        a = t.user_attrs
        assert a["status"] == "complete", a.get("error")
        assert a["latency_ms"] > 0 and math.isfinite(a["latency_ms"])
        assert a["protocol"]["device"] == "cpu" and a["protocol"]["batch_size"] == 1
        assert a["fingerprint"]
        assert a["proxy"]["epochs_run"] == 2
        assert a["proxy"]["info"]["resolution"] == 16
        assert a["params"] > 0 and a["macs"] > 0
        assert "1" in a["rungs"]  # the halving callback saw the real per-epoch metrics
    paths = export_pareto(study, tmp_path / "configs")
    assert paths and ArchConfig.from_yaml(paths[0]).arch_id in {t.user_attrs["arch_id"] for t in study.trials}
