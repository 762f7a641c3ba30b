"""experiments/demo/demo.yaml (what ``make demo`` runs) loads with the current settings and stays sized for a CPU."""
import dataclasses
from pathlib import Path

import yaml

from lowspace.cost.count import count_macs
from lowspace.search.settings import SearchConfig
from lowspace.search.space import load_space
from lowspace.search.trial import TrialPipeline
from lowspace.train import Recipe, proxy_recipe

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo" / "demo.yaml"


def _config() -> SearchConfig:
    return SearchConfig.from_yaml(DEMO)


def test_the_budget_is_a_number_of_trials_not_a_timeout():
    config = _config()
    assert config.timeout_s is None and config.budget_gpu_s is None  # nothing cuts the search short
    assert 10 <= config.n_trials <= 20  # enough for a front of several points, few enough for 2 cores
    assert config.attempts_cap >= 4 * config.n_trials  # stopped candidates cannot end it before n_trials


def test_every_proxy_key_is_a_recipe_field_and_the_search_accepts_the_file():
    config = _config()
    raw = yaml.safe_load(DEMO.read_text())["proxy"]
    fields = {f.name for f in dataclasses.fields(Recipe)}
    assert set(raw) <= fields, set(raw) - fields  # no renamed key (lr, resolution) left behind
    schedule = proxy_recipe(config.proxy)
    for key, value in raw.items():
        got = getattr(schedule, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    pipeline = TrialPipeline(load_space(config.space), config)  # what `lowspace search` checks before a study
    assert pipeline.schedule == schedule
    assert pipeline.ladder is not None  # pareto mode's promotion, with the file's rungs
    assert pipeline.ladder.rungs[-1].schedule == schedule


def test_each_candidate_is_cheap_on_a_cpu():
    config = _config()
    pipeline = TrialPipeline(load_space(config.space), config)
    images = [r.schedule.epochs * r.schedule.train_per_class * 10 for r in pipeline.ladder.rungs]
    assert images == sorted(images) and images[0] * 5 <= images[-1]  # rung 0 is a fraction of the full run
    assert images[-1] <= 5_000  # Fashion-MNIST images seen by a candidate trained on the full schedule
    assert pipeline.schedule.resolutions == (32,) and pipeline.schedule.val_per_class <= 100
    assert pipeline.timing.max_time_s <= 1.0


def test_the_named_points_pass_the_mac_limit():
    config = _config()
    space = load_space(config.space)
    assert space.points
    for name, point in space.points.items():
        cfg = space.build(point)
        assert count_macs(cfg, resolution=cfg.resolution) <= config.constraints.max_macs, name
