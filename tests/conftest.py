"""Shared test set-up: marker skips, small determinism helpers, experiment scripts as modules."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    has_pg = bool(os.environ.get("LOWSPACE_TEST_PG_URL"))
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_pg = pytest.mark.skip(reason="needs LOWSPACE_TEST_PG_URL (PostgreSQL; .ci/run starts one)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "postgres" in item.keywords and not has_pg:
            item.add_marker(skip_pg)


@pytest.fixture
def pg_url():
    """SQLAlchemy URL of the test PostgreSQL database."""
    return os.environ["LOWSPACE_TEST_PG_URL"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep every test's measurement cache and other user-level state inside its tmp dir."""
    monkeypatch.setenv("LOWSPACE_CACHE_DIR", str(tmp_path / "lowspace-cache"))


def _load_experiment(relative: str):
    """``experiments/<relative>`` (a script) as a module, registered under its file name."""
    path = EXPERIMENTS / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_experiment():
    """Loads an experiment script as a module: ``load_experiment("deploy_speed/protocol_tau.py")``."""
    return _load_experiment
