"""A file of the wrong kind (a search space where an architecture is expected, ...) is said to be one; a file
of the expected kind with a typo still gets the unknown-key error with its hint."""
import pytest

from lowspace import ArchConfig
from lowspace.errors import ConfigError
from lowspace.search.settings import SearchConfig
from lowspace.search.space import SearchSpace

ARCH = "name: t\nstages:\n  - {width: 16, depth: 1}\n"
SPACE = "name: s\nbase: b0\nparams:\n  d: {low: 1, high: 2, path: stages.0.depth}\n"
SEARCH = "space: demo\nmode: pareto\nn_trials: 3\n"
RECIPE = "base: b1\nepochs: 5\nbase_lr: 0.001\n"


@pytest.mark.parametrize("load, text, message", [
    (ArchConfig.from_yaml, SPACE, "<architecture config>, line 3: this is a search space, not an architecture config "
                                  "(it has params:); use it with lowspace search --space"),
    (ArchConfig.from_yaml, SEARCH, "this is a search config, not an architecture config (it has space:, mode:, "
                                   "n_trials:); use it with lowspace search --config"),
    (ArchConfig.from_yaml, RECIPE, "this is a recipe, not an architecture config (it has epochs:, base_lr:)"),
    (SearchSpace.from_text, ARCH, "<search space>, line 2: this is an architecture config, not a search space"),
    (SearchSpace.from_text, SEARCH, "this is a search config, not a search space"),
    (SearchConfig.from_yaml, ARCH, "<search config>, line 2: this is an architecture config, not a search config"),
    (SearchConfig.from_yaml, SPACE, "this is a search space, not a search config (it has params:)"),
])
def test_a_file_of_another_kind_is_named(load, text, message):
    assert message in str(pytest.raises(ConfigError, load, text).value)


@pytest.mark.parametrize("load, text, message", [
    (ArchConfig.from_yaml, "stagse:\n  - {width: 16, depth: 1}\nhead: {widths: []}\n", "did you mean 'stages'"),
    (SearchConfig.from_yaml, "n_trails: 3\nmode: pareto\nspace: demo\n", "did you mean 'n_trials'"),
    (SearchSpace.from_text, "base: b0\nparms: {}\npoints: {}\n", "did you mean 'params'"),
])
def test_a_file_of_the_expected_kind_gets_the_key_hint(load, text, message):
    err = str(pytest.raises(ConfigError, load, text).value)
    assert message in err and "this is" not in err
