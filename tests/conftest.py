"""Shared test set-up: marker skips and small determinism helpers."""
import os

import pytest
import torch

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
