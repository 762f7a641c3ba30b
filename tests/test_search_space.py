"""Search-space YAML: parsing, sampling, building ArchConfigs, presets as points, clear errors."""
import random
import textwrap

import optuna
import pytest
import yaml

from lowspace.arch import get_preset
from lowspace.errors import ConfigError
from lowspace.search import enqueue_points
from lowspace.search.space import SearchSpace, builtin_spaces, load_space

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_bundled_spaces_exist():
    assert {"lowformer", "wide", "demo"} <= set(builtin_spaces())


@pytest.mark.parametrize("space_name,presets", [("lowformer", ["b0", "b1", "b15", "b3"]),
                                                ("wide", ["b0", "b1", "b15", "b3", "e1", "e2", "e3"])])
def test_presets_are_points_of_the_space(space_name, presets):
    space = load_space(space_name)
    assert set(presets) <= set(space.preset_points())
    for key in presets:
        cfg = space.build(space.point(key))
        assert cfg.arch_id == get_preset(key).arch_id


def test_enqueued_presets_are_run_first_and_rebuild_the_presets():
    space = load_space("lowformer")
    study = optuna.create_study(directions=["maximize", "minimize"])
    names = enqueue_points(study, space)
    assert names == ["b0", "b1", "b15", "b3"]
    enqueue_points(study, space)  # idempotent
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 4
    for key in names:
        trial = study.ask()
        cfg = space.build(space.suggest(trial))
        assert cfg.arch_id == get_preset(key).arch_id
        study.tell(trial, [0.5, 1.0])


def test_random_samples_respect_conditionals_and_build():
    space = load_space("wide")
    rng = random.Random(0)
    built = 0
    for _ in range(40):
        a = space.sample(rng)
        if a["attn3"] == "none":
            assert "stride3" not in a and "mlp3" not in a
        else:
            assert a["stride3"] in (1, 2, 4)
        try:
            cfg = space.build(a)
        except ConfigError as err:  # e.g. last:2 on a 1-block stage: a recorded failure, not a crash
            assert "placement" in err.path
            continue
        built += 1
        assert cfg.stages[2].depth == a["depth3"]
        assert cfg.resolution == a["resolution"]
        assert cfg.stages[3].width == 16 * a["width"]
    assert built > 20


def test_optuna_suggest_matches_build():
    space = load_space("demo")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        t = study.ask()
        a = space.suggest(t)
        assert set(a) == set(t.params)
        cfg = space.build(a)
        assert cfg.in_chans == 1 and cfg.num_classes == 10
        if a["attn2"] == "none":
            assert cfg.stages[1].attention_blocks() == ()
        study.tell(t, 0.0)


def test_inactive_parameter_keeps_base_value_and_wildcards_skip_missing_blocks():
    text = textwrap.dedent("""
        base: b1
        params:
          attn4: {choices: [all, none], path: stages.3.attention.placement}
          stride4: {choices: [1, 2], path: stages.3.attention.stride, when: {attn4: all}}
          dexp: {choices: [4, 6], path: stages.*.downsample.expand_ratio}
    """)
    space = SearchSpace.from_text(text)
    cfg = space.build({"attn4": "none", "dexp": 4})
    assert cfg.stages[3].attention.stride == get_preset("b1").stages[3].attention.stride
    assert all(s.downsample.expand_ratio == 4.0 for s in cfg.stages)
    cfg2 = space.build({"attn4": "all", "stride4": 2, "dexp": 6})
    assert cfg2.stages[3].attention.stride == 2
    # a stage without downsample block is left alone by the wildcard
    base = get_preset("b1").to_dict()
    base["stages"][1]["downsample"] = None
    base["stages"][1].update(width=32, depth=1)
    space3 = SearchSpace.from_text(yaml.safe_dump(
        {"base": base, "params": {"dexp": {"choices": [4], "path": "stages.*.downsample.expand_ratio"}}}))
    assert space3.build({"dexp": 4}).stages[1].downsample is None


def test_patch_choices_and_scaled_paths():
    text = textwrap.dedent("""
        base: b1
        params:
          w: {choices: [16, 24], paths: {stem.width: 1, stages.0.width: 2, stages.1.width: 4,
                                         stages.2.width: 8, stages.3.width: 16}}
          stem:
            choices:
              plain: {stem.depth: 0}
              deep: {stem.depth: 1, stages.0.depth: 1}
          head: {choices: [[1536, 1600], [2304, 2560]], path: head.widths}
    """)
    space = SearchSpace.from_text(text)
    head_labels = space.params[2].labels
    assert all(isinstance(lab, str) for lab in head_labels)
    cfg = space.build({"w": 24, "stem": "deep", "head": [2304, 2560]})
    assert [s.width for s in cfg.stages] == [48, 96, 192, 384]
    assert cfg.stem.depth == 1 and cfg.stages[0].depth == 1
    assert cfg.head.widths == (2304, 2560)
    assert space.build({"w": 24, "stem": "deep", "head": head_labels[1]}).arch_id == cfg.arch_id


def _error(text, name="bad.yaml", tmp_path=None):
    if tmp_path is not None:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        with pytest.raises(ConfigError) as info:
            SearchSpace.load(path)
        return info.value
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_text(textwrap.dedent(text))
    return info.value


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    err = _error("""\
        base: b1
        params:
          d3: {low: 2, hihg: 8, path: stages.2.depth}
    """, tmp_path=tmp_path)
    assert "bad.yaml, line 3" in str(err)
    assert "params.d3.hihg" in str(err) and "'high'" in str(err)


def test_bad_path_is_reported_with_the_valid_fields(tmp_path):
    err = _error("""\
        base: b1
        params:
          d3: {low: 2, high: 8, path: stages.2.dept}
    """, tmp_path=tmp_path)
    assert "line 3" in str(err) and "stages.2.dept" in str(err) and "depth" in str(err)
    err = _error("""\
        base: b1
        params:
          d3: {low: 2, high: 8, path: stages.7.depth}
    """)
    assert "4 entries" in str(err)


def test_type_errors_of_choices_are_caught_on_load():
    err = _error("""\
        base: b1
        params:
          d3: {choices: [2, deep], path: stages.2.depth}
    """)
    assert "params.d3" in str(err) and "stages.2.depth" in str(err) and "integer" in str(err)
    err = _error("""\
        base: b1
        params:
          s: {choices: [1, 3], path: stages.2.attention.stride}
    """)
    assert "allowed: 1, 2, 4" in str(err)


@pytest.mark.parametrize("text,needle", [
    ("base: b1\nparams:\n  a: {choices: [1, 2], path: stages.2.depth, when: {b: 1}}\n"
     "  b: {choices: [1, 2], path: stages.3.depth}\n", "defined above"),
    ("base: b1\nparams:\n  a: {low: 5, high: 2, path: stages.2.depth}\n", "must be >= low"),
    ("base: b1\nparams:\n  a: {choices: [1, 2], low: 1, path: stages.2.depth}\n", "either 'choices' or"),
    ("base: b1\nparams:\n  a: {choices: [1, 1], path: stages.2.depth}\n", "must not repeat"),
    ("base: b1\nparams:\n  a: {choices: [1, 2]}\n", "mapping of path -> value"),
    ("base: b9\nparams:\n  a: {choices: [1, 2], path: stages.2.depth}\n", "known presets"),
    ("params:\n  a: {choices: [1, 2], path: stages.2.depth}\n", "base config is required"),
    ("base: b1\nparams: {}\n", "params"),
    ("base: b1\nparams:\n  a: {choices: [1, 2], path: stages.2.depth\n", "not valid YAML"),
    ("base: b1\nparms: {}\n", "did you mean 'params'"),
    ("base: b1\nparams:\n  a: {choices: [1, .nan], path: stages.2.depth}\n",
     "line 3: params.a.choices.1: got '.nan'; NaN"),
    ("base: b1\nbase: b2\nparams: {}\n", "line 2: got 'base'; duplicate key"),
    ('base: b1\nparams:\n  a: {choices: [all, "none\\n"], path: stages.3.attention.placement}\n',
     "surrounding whitespace"),
    ("", "empty document"),
    ("base: b1\nparams:\n  w: {choices: [16, [1]], paths: {stem.width: 1, stages.0.width: 2}}\n",
     "the paths scale each choice"),
    ("base: b1\nparams:\n  d: {low: 2, high: 8, path: stages.2.depth}\npoints:\n  p: {d: null}\n", "int in [2, 8]"),
])
def test_bad_space_files_give_clear_errors(text, needle):
    err = _error(text)
    assert needle in str(err)


def test_points_must_rebuild_the_preset_they_are_named_after():
    text = textwrap.dedent("""\
        base: b1
        params:
          d3: {low: 2, high: 8, path: stages.2.depth}
        points:
          b1: {d3: 4}
    """)
    err = _error(text)
    assert "does not rebuild preset b1" in str(err) and "stages.2.depth" in str(err) and "line 5" in str(err)
    ok = SearchSpace.from_text(text.replace("d3: 4", "d3: 5"))
    assert ok.point("b1") == {"d3": 5}


def test_point_errors():
    base = "base: b1\nparams:\n  a: {choices: [all, none], path: stages.3.attention.placement}\n" \
           "  s: {choices: [1, 2], path: stages.3.attention.stride, when: {a: all}}\n"
    assert "inactive" in str(_error(base + "points:\n  p: {a: none, s: 1}\n"))
    assert "missing s" in str(_error(base + "points:\n  p: {a: all}\n"))
    assert "one of" in str(_error(base + "points:\n  p: {a: some}\n"))


def test_binary_space_file_names_file_and_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"base: b1\nparams: \x89PNG\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}, line 2: not UTF-8 text")


def test_unknown_space_name_lists_bundled_spaces():
    with pytest.raises(ConfigError) as info:
        load_space("nonexistent_space")
    assert "lowformer" in str(info.value)


def test_build_rejects_unknown_and_missing_parameters():
    space = load_space("demo")
    a = space.point("base")
    with pytest.raises(ConfigError, match="missing a value"):
        space.build({k: v for k, v in a.items() if k != "depth2"})
    with pytest.raises(ConfigError, match="unknown key"):
        space.build({**a, "depthh": 1})
    with pytest.raises(ConfigError, match="one of"):
        space.build({**a, "width": 9})


def test_fixed_parameters_are_held_and_points_that_disagree_are_left_out():
    from optuna.distributions import CategoricalDistribution

    from lowspace.search._resume import space_hash
    wide = load_space("wide")
    held = wide.fix({"resolution": 224})
    assert held.distributions()["resolution"] == CategoricalDistribution([224])
    assert set(held.points) == set(wide.points)  # every preset point is at 224 px
    rng = random.Random(0)
    assert {held.sample(rng)["resolution"] for _ in range(20)} == {224}
    assert held.build(held.point("e1")).resolution == 224
    assert space_hash(held) != space_hash(wide) and wide.fixed == {} and held.fixed == {"resolution": 224}
    shallow = load_space("lowformer").fix({"depth3": 3, "head": "standard"})  # an int range and labelled choices
    assert shallow.distributions()["depth3"] == CategoricalDistribution([3])
    assert set(shallow.points) == {"b0"}  # B1, B1.5 and B3 have deeper third stages
    assert shallow.build(shallow.point("b0")) == load_space("lowformer").build(shallow.point("b0"))


@pytest.mark.parametrize("fixed, needle", [
    ({"resolutions": 224}, "space_fixed"),                       # unknown name (with a suggestion)
    ({"depth3": 9}, "int in [2, 8]"),                            # outside the range
    ({"depth3": 2.5}, "int in [2, 8]"),
    ({"width": 18}, "one of 16, 20, 24, 32"),                    # not a choice
])
def test_fixed_parameters_outside_the_space_are_one_clear_error(fixed, needle):
    with pytest.raises(ConfigError) as err:
        load_space("lowformer").fix(fixed)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_search_config_holds_its_fixed_parameters():
    from lowspace.search import SearchConfig
    config = SearchConfig.from_dict({"space": "wide", "space_fixed": {"resolution": 224}})
    assert config.search_space().fixed == {"resolution": 224}
    with pytest.raises(ConfigError, match="space_fixed.resolution"):
        SearchConfig.from_dict({"space": "wide", "space_fixed": {"resolution": 100}}).search_space()


def test_invalid_draws_counts_what_the_space_lets_conflict():
    from lowspace.search.space import SearchSpace
    assert not SearchSpace.load("lowformer").invalid_draws(300)  # every stage has two blocks or more
    faults = SearchSpace.load("wide").invalid_draws(1000)  # a one-block stage may draw attention on its last two
    assert set(faults) <= {"stages.2.attention.placement", "stages.3.attention.placement"}
    assert 5 <= sum(faults.values()) <= 100
    narrowed = SearchSpace.load("wide").fix({"depth3": 4, "depth4": 4})
    assert not narrowed.invalid_draws(300)
    assert SearchSpace.load("wide").invalid_draws(1000) == faults  # the same draws for the same seed
