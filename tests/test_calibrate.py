"""lowspace calibrate: statistics on constructed data, the plan (architectures, schedules, held-out split),
resuming from rows, bad input, and the whole command end to end on CPU with the demo space."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from lowspace.errors import ConfigError
from lowspace.search import _calibrate_run as run
from lowspace.search._calibrate_report import summarize
from lowspace.search._calibrate_stats import (Candidate, agreement, bootstrap_correlations, knob_effects,
                                              recommend)
from lowspace.search.calibrate import (CalibrationSettings, calibrate, default_grid, draw_architectures,
                                       full_options, make_plan, parse_overrides, resolve_schedule,
                                       schedule_name)
from lowspace.search.space import load_space

SYNTHETIC = dict(dataset="synthetic", num_classes=4, train_size=192, val_size=16, image_size=8, channels=1,
                 noise=0.8)
FULL = dict(epochs=2, resolutions=[8], batch_size=32, warmup_epochs=0.5, bn_reestimate_images=64, base_lr=3e-3)


def tiny(out, **kw) -> CalibrationSettings:
    base = dict(source="demo", n_archs=4, presets="none", data=SYNTHETIC, full=FULL, default_schedules=False,
                schedules={"e1": {"epochs": 1}}, out=str(out), device="cpu", resamples=300, png=False)
    return CalibrationSettings(**{**base, **kw})


# ==================================================================== statistics
def test_one_swap_gives_the_textbook_tau_and_rho():
    x = list(range(10))
    y = x[:]
    y[3], y[4] = y[4], y[3]
    a = agreement(x, y, resamples=500, seed=0)
    assert a.tau == pytest.approx(1 - 2 / 45)  # one discordant pair of 45
    assert a.rho == pytest.approx(1 - 6 * 2 / (10 * 99))
    assert a.tau_low <= a.tau <= a.tau_high <= 1


def test_perfect_and_reversed_rankings_have_degenerate_intervals():
    x = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0]
    up = agreement(x, [2 * v for v in x], resamples=300)
    down = agreement(x, [-v for v in x], resamples=300)
    assert (up.tau, up.tau_low, up.tau_high) == (pytest.approx(1), pytest.approx(1), pytest.approx(1))
    assert (down.tau, down.tau_low, down.tau_high) == (pytest.approx(-1), pytest.approx(-1), pytest.approx(-1))


def test_bootstrap_tau_matches_scipy_on_each_resample_and_is_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12).round(1), rng.normal(size=12).round(1)  # rounding makes ties
    taus, rhos = bootstrap_correlations(x, y, resamples=40, seed=5)
    idx = np.random.default_rng(5).integers(0, 12, size=(40, 12))  # the same draws
    for k in range(40):
        xs, ys = x[idx[k]], y[idx[k]]
        assert taus[k] == pytest.approx(sps.kendalltau(xs, ys).statistic, nan_ok=True)
        assert rhos[k] == pytest.approx(sps.spearmanr(xs, ys).statistic, nan_ok=True)
    again, _ = bootstrap_correlations(x, y, resamples=40, seed=5)
    np.testing.assert_array_equal(taus, again)


def test_bootstrap_interval_narrows_with_more_architectures():
    rng = np.random.default_rng(0)

    def width(n):
        x = rng.normal(size=n)
        a = agreement(x, x + rng.normal(scale=0.7, size=n), resamples=800, seed=0)
        return a.tau_high - a.tau_low

    assert width(200) < width(12)


def test_recommend_picks_the_cheapest_schedule_that_reaches_the_target():
    cands = [Candidate("good-but-dear", 0.78, 0.5), Candidate("good", 0.72, 0.15),
             Candidate("cheaper-good", 0.70, 0.10), Candidate("cheap-bad", 0.40, 0.02)]
    pick = recommend(cands, ceiling=0.8, target=0.85, max_cost_share=0.2)  # needs tau >= 0.68
    assert pick.name == "cheaper-good"
    assert recommend(cands, ceiling=0.9, target=0.85, max_cost_share=0.2) is None  # needs 0.765
    assert recommend(cands, ceiling=0.9, target=0.85, max_cost_share=0.6).name == "good-but-dear"
    assert recommend(cands, ceiling=-0.1, target=0.85, max_cost_share=1.0) is None
    assert recommend(cands, ceiling=math.nan, target=0.85, max_cost_share=1.0) is None


def test_knob_effects_compare_schedules_differing_in_one_knob_only():
    base = dict(epochs=2, warmup_epochs=0.2, eval_every=2, resolutions=[64], base_lr=0.002, train_per_class=None)
    schedules = {"e2": base, "e1": {**base, "epochs": 1, "warmup_epochs": 0.1, "eval_every": 1},
                 "e2-r32": {**base, "resolutions": [32]},
                 "e1-r32": {**base, "epochs": 1, "warmup_epochs": 0.1, "eval_every": 1, "resolutions": [32]},
                 "e2-lr": {**base, "base_lr": 0.004}}
    taus = {"e2": 0.5, "e1": 0.45, "e2-r32": 0.2, "e1-r32": 0.9, "e2-lr": 0.55}
    effects = {e.knob: e for e in knob_effects(schedules, taus)}
    assert set(effects) == {"epochs", "resolutions", "base_lr"}
    assert effects["epochs"].delta == pytest.approx(0.7)  # e2-r32 -> e1-r32; e1-r32 vs e2 differs in two knobs
    assert (effects["epochs"].low, effects["epochs"].high) == ("e2-r32", "e1-r32")
    assert effects["resolutions"].delta == pytest.approx(0.45)  # e1 -> e1-r32
    assert effects["resolutions"].label == "resolution" and effects["base_lr"].label == "learning rate"
    assert knob_effects(schedules, taus)[0].knob == "epochs"


# ==================================================================== the plan
def test_schedules_resolve_against_the_full_one_and_scale_the_warmup():
    full = full_options({}, dict(epochs=10, warmup_epochs=1.0, resolutions=[64], base_lr=0.002))
    s = resolve_schedule("e2", {"epochs": 2}, full)
    assert s.options["epochs"] == 2 and s.options["warmup_epochs"] == pytest.approx(0.2)
    assert s.options["resolutions"] == [64] and s.options["val_per_class"] is None
    grid = default_grid(full, per_class=5000)
    assert {"epochs": 2} in grid and {"epochs": 1} in grid
    assert {"epochs": 2, "resolutions": [32]} in grid and {"epochs": 2, "train_per_class": 2500} in grid
    assert {"epochs": 2, "base_lr": 0.004} in grid and {"epochs": 4, "resolutions": [32]} in grid
    assert [schedule_name(g) for g in grid] == ["e2", "e1", "e2-r32", "e2-lr0.004", "e2-n2500", "e4-r32"]


def test_candidates_equal_to_the_full_schedule_or_each_other_are_dropped(tmp_path):
    plan = make_plan(tiny(tmp_path, default_schedules=True, schedules={"same": {"epochs": 2}}))
    names = [c.name for c in plan.candidates]
    assert "same" not in names  # identical to the full schedule (2 epochs)
    keys = [json.dumps(c.options, sort_keys=True) for c in plan.candidates]
    assert len(keys) == len(set(keys))


def test_architectures_are_drawn_reproducibly_with_the_presets():
    space = load_space("lowformer")
    a = draw_architectures(space, 5, "all", seed=3)
    b = draw_architectures(space, 5, "all", seed=3)
    assert [x.arch_id for x in a] == [x.arch_id for x in b]
    assert len({x.arch_id for x in a}) == len(a) == 7 + 5  # b0 b1 b15 b3 (points) + e1 e2 e3 + 5 drawn
    assert sorted(x.name for x in a if x.source == "preset") == ["b0", "b1", "b15", "b3", "e1", "e2", "e3"]
    c = draw_architectures(space, 5, "space", seed=4)
    assert {x.name for x in c if x.source != "sampled"} == {"b0", "b1", "b15", "b3"}
    assert [x.arch_id for x in c if x.source == "sampled"] != [x.arch_id for x in a if x.source == "sampled"]


def test_validation_is_held_out_from_the_training_images_never_the_test_split():
    from lowspace.data import ImageData, TensorSplit
    n = 120
    train = TensorSplit(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                        torch.arange(n) % 3)
    test = TensorSplit(torch.full((30, 1, 2, 2), 200, dtype=torch.uint8), torch.arange(30) % 3)
    data = ImageData("ids", ("a", "b", "c"), train, test, 1, (0.5,), (0.25,))
    split = run.validation_split(data, per_class=7, seed=1)
    val_ids = set(split.val.images[:, 0, 0, 0].tolist())
    train_ids = set(split.train.images[:, 0, 0, 0].tolist())
    assert len(val_ids) == 21 and not val_ids & train_ids and val_ids | train_ids == set(range(n))
    assert 200 not in val_ids
    assert torch.bincount(split.val.labels).tolist() == [7, 7, 7]
    again = run.validation_split(data, per_class=7, seed=1)
    assert set(again.val.images[:, 0, 0, 0].tolist()) == val_ids


def test_runs_are_keyed_by_the_data_they_see_not_by_how_it_was_named(tmp_path):
    a = make_plan(tiny(tmp_path, data=SYNTHETIC))
    same = make_plan(tiny(tmp_path, data=dict(reversed(list(SYNTHETIC.items())))))
    other_split = make_plan(tiny(tmp_path, val_per_class=5))
    other_images = make_plan(tiny(tmp_path, data={**SYNTHETIC, "noise": 0.5}))
    keys = [j.key for j in a.jobs()]
    assert [j.key for j in same.jobs()] == keys
    assert not set(keys) & {j.key for j in other_split.jobs()}
    assert not set(keys) & {j.key for j in other_images.jobs()}
    assert run.data_identity(run.load_data(SYNTHETIC), 8, 0) == a.data_key  # 48 images per class: 8 held out


# ==================================================================== rows, resume, summary
def fake_rows(plan, top1, gpu_s=lambda job: 10.0 if job.schedule == "full" else 1.0):
    return [dict(key=j.key, arch=j.arch, arch_id=j.arch_id, schedule=j.schedule, seed=j.seed, status="ok",
                 top1=top1(j), gpu_s=gpu_s(j)) for j in plan.jobs()]


def test_summary_of_constructed_rows_gives_ceiling_taus_costs_and_the_snippet(tmp_path):
    plan = make_plan(tiny(tmp_path, n_archs=8, schedules={"good": {"epochs": 1}, "bad": {"base_lr": 0.01},
                                                          "dear": {"batch_size": 16}}))
    order = {a.arch_id: i for i, a in enumerate(plan.archs)}
    plan.costs = {a.arch_id: dict(params=100 - i, macs=(i * 7) % 5) for a, i in zip(plan.archs, range(8))}
    swap = {0: 1, 1: 0}

    def top1(job):
        i = order[job.arch_id]
        if job.schedule == "full":
            return 50 + (swap.get(i, i) if job.seed == 1 else i)  # seed B swaps the first two
        if job.schedule == "good":
            return 30 + i
        if job.schedule == "bad":
            return 30 - i
        return 40 + i

    rows = fake_rows(plan, top1, gpu_s=lambda j: {"full": 10.0, "good": 1.0, "bad": 1.0, "dear": 5.0}[j.schedule])
    rows.append(dict(key="not-in-plan", status="ok", top1=1.0))
    s = summarize(plan, rows)
    assert s.full.agreement.tau == pytest.approx(1 - 2 / 28)
    by = {c.name: c for c in s.candidates}
    assert by["good"].agreement.tau == pytest.approx(sps.kendalltau(range(8), [0.5, 0.5, 2, 3, 4, 5, 6, 7])
                                                     .statistic)
    assert by["bad"].agreement.tau < -0.9
    # like the ceiling, against one seed at a time: seed A in the same order, seed B with the first two swapped
    assert by["good"].tau_one_seed == pytest.approx(((1.0) + (1 - 2 / 28)) / 2)
    assert by["good"].cost_share == pytest.approx(0.1) and by["dear"].cost_share == pytest.approx(0.5)
    assert s.baselines["params"].tau < -0.9  # params fall as accuracy rises
    assert s.recommended == "good"  # "dear" ranks as well but costs 50 %
    from lowspace.search._calibrate_report import write_outputs
    result = write_outputs(plan, s, tmp_path, dict(planned=len(rows)))
    snippet = (tmp_path / "recommended.yaml").read_text()
    import yaml
    proxy = yaml.safe_load(snippet)["proxy"]
    assert proxy["epochs"] == 1 and proxy["resolutions"] == FULL["resolutions"]
    assert proxy["warmup_epochs"] == pytest.approx(0.25)
    assert result.snippet == tmp_path / "recommended.yaml"
    assert "recommended: good" in result.message
    # the pareto variant: screen with the recommended schedule, promote to the full one; a valid search config
    from lowspace.search import SearchConfig
    promoted = yaml.safe_load((tmp_path / "recommended_promotion.yaml").read_text())
    assert promoted["proxy"]["epochs"] == FULL["epochs"]
    assert promoted["promotion"]["rungs"][0]["epochs"] == 1 and promoted["promotion"]["rungs"][-1] == {}
    config = SearchConfig.from_dict(dict(promoted, space="demo", data=SYNTHETIC, mode="pareto"))
    assert config.promotion.rungs[0]["epochs"] == 1


def test_without_a_qualifying_schedule_it_names_the_knob_that_moved_tau_most(tmp_path):
    plan = make_plan(tiny(tmp_path, n_archs=6, schedules={"e1": {"epochs": 1},
                                                          "e1-lr": {"epochs": 1, "base_lr": 0.02},
                                                          "e1-r16": {"epochs": 1, "resolutions": [16]}}))
    order = {a.arch_id: i for i, a in enumerate(plan.archs)}
    plan.costs = {a.arch_id: dict(params=1, macs=1) for a in plan.archs}
    noise = [0, 3, 1, 5, 2, 4]

    def top1(job):
        i = order[job.arch_id]
        return {"full": 50 + i, "e1": 30 + noise[i], "e1-lr": 30 + noise[::-1][i], "e1-r16": 30 + (i if i % 2 else 0)}[
            job.schedule]

    s = summarize(plan, fake_rows(plan, top1))
    assert s.recommended is None
    assert "no candidate reaches 85%" in s.message
    taus = {c.name: c.agreement.tau for c in s.candidates}
    moved = {"base_lr": abs(taus["e1-lr"] - taus["e1"]), "resolutions": abs(taus["e1-r16"] - taus["e1"])}
    best = max(moved, key=moved.get)
    assert s.knobs[0].knob == best and f"knob that moved tau most: {s.knobs[0].label}" in s.message


def test_when_none_fits_the_cost_cap_the_cheapest_that_ranks_well_enough_is_recommended_over_it(tmp_path):
    schedules = {"cheap-bad": {"epochs": 1}, "dear-good": {"batch_size": 16}, "dearer-good": {"base_lr": 0.01}}
    plan = make_plan(tiny(tmp_path, n_archs=6, schedules=schedules))
    order = {a.arch_id: i for i, a in enumerate(plan.archs)}
    plan.costs = {a.arch_id: dict(params=1, macs=1) for a in plan.archs}
    noise = [0, 3, 1, 5, 2, 4]

    def top1(job):
        i = order[job.arch_id]
        return 50 + i if job.schedule in ("full", "dear-good", "dearer-good") else 30 + noise[i]

    costs = {"full": 10.0, "cheap-bad": 1.0, "dear-good": 4.0, "dearer-good": 6.0}
    rows = fake_rows(plan, top1, gpu_s=lambda j: costs[j.schedule])
    s = summarize(plan, rows)
    assert s.recommended == "dear-good" and s.over_cost_cap
    assert s.message.startswith("no candidate reaches 85% of the seed ceiling (tau >= 0.85) within 20%")
    assert "recommended over the cost cap: dear-good" in s.message and "40% of the full schedule's" in s.message
    from lowspace.search._calibrate_report import write_outputs
    result = write_outputs(plan, s, tmp_path, dict(planned=len(rows)))
    assert result.over_cost_cap and result.snippet is not None
    assert "# over the cost cap: no candidate reached the target within 20%" in result.snippet.read_text()
    assert "(recommended, over the cost cap)" in (tmp_path / "summary.md").read_text()
    # within the cap it is an ordinary recommendation; with a candidate still unmeasured, none over the cap yet
    within = summarize(plan, [dict(r, gpu_s=1.5) if r["schedule"] == "dear-good" else r for r in rows])
    assert within.recommended == "dear-good" and not within.over_cost_cap
    pending = summarize(plan, [r for r in rows if r["schedule"] != "cheap-bad"])
    assert pending.recommended is None and not pending.over_cost_cap


def test_no_verdict_on_the_candidates_before_they_have_results(tmp_path):
    schedules = {"e1": {"epochs": 1}, "e1-lr": {"epochs": 1, "base_lr": 0.02}}
    plan = make_plan(tiny(tmp_path, n_archs=6, schedules=schedules))
    order = {a.arch_id: i for i, a in enumerate(plan.archs)}
    plan.costs = {a.arch_id: dict(params=1, macs=1) for a in plan.archs}
    full_only = [r for r in fake_rows(plan, lambda j: 50 + order[j.arch_id]) if r["schedule"] == "full"]
    s = summarize(plan, full_only)
    assert s.full.agreement is not None and s.recommended is None
    assert s.message.startswith("no recommendation yet: no candidate schedule has results")
    with_e1 = full_only + [r for r in fake_rows(plan, lambda j: 50 - order[j.arch_id]) if r["schedule"] == "e1"]
    message = summarize(plan, with_e1).message
    assert "no candidate measured so far reaches" in message and "1 candidate not measured yet" in message


def test_row_store_skips_a_torn_line_and_seals_it_before_appending(tmp_path):
    store = run.RowStore(tmp_path / "rows.jsonl")
    store.append(dict(key="a", status="ok"))
    with open(store.path, "a") as fh:
        fh.write('{"key": "b", "sta')  # killed mid-write
    assert [r["key"] for r in store.read()] == ["a"]
    store.append(dict(key="c", status="ok"))
    assert [r["key"] for r in store.read()] == ["a", "c"]
    assert store.done_keys() == {"a", "c"}


def test_resume_trains_only_the_runs_missing_from_the_rows(tmp_path, monkeypatch):
    settings = tiny(tmp_path)
    plan = make_plan(settings)
    jobs = plan.jobs()
    store = run.RowStore(tmp_path / "rows.jsonl")
    for row in fake_rows(plan, lambda j: 50.0)[:-2]:
        store.append(row)
    store.append(dict(fake_rows(plan, lambda j: 50.0)[-2], status="failed", top1=None))  # failed: tried again
    trained = []

    def fake_train(cfg, data, options, device):
        trained.append((cfg.arch_id, options["epochs"], options["seed"]))
        return dict(top1=42.0, top5=90.0, best_top1=42.0, epochs_run=options["epochs"], train_s=0.1,
                    trained_params=1, diverged=False)

    monkeypatch.setattr(run, "train_once", fake_train)
    result = calibrate(settings)
    assert sorted(trained) == sorted((j.arch_id, j.options["epochs"], j.seed) for j in jobs[-2:])
    assert result.runs["skipped"] == len(jobs) - 2 and result.runs["ran"] == 2
    trained.clear()
    again = calibrate(settings)
    assert trained == [] and again.runs["skipped"] == len(jobs)


@pytest.mark.parametrize("change, where", [
    (dict(source="no_such_space"), "SPACE_OR_CONFIG"),
    (dict(n_archs=3), "n_archs"),
    (dict(schedules={"x": {"epoch": 1}}), "schedule x.epoch"),
    (dict(schedules={"x": {"resolutions": [2]}}), "schedule x.resolutions"),
    (dict(schedules={"x": {"lr": 0.1}}), "schedule x.lr"),
    (dict(schedules={"x": {"seed": 1}}), "schedule x.seed"),
    (dict(schedules={"x": {"split_seed": 1}}), "schedule x.split_seed"),
    (dict(schedules={"x": {"eval_split": "val"}}), "schedule x.eval_split"),
    (dict(full={"base_lr": -1}), "full.base_lr"),
    (dict(full_seeds=(0, 0)), "full_seeds"),
    (dict(max_cost_share=0), "max_cost_share"),
])
def test_bad_input_is_one_config_error_before_any_training(tmp_path, monkeypatch, change, where):
    monkeypatch.setattr(run, "train_once", lambda *a, **k: pytest.fail("trained despite bad input"))
    monkeypatch.setattr(run, "load_data", lambda *a, **k: pytest.fail("read the data despite bad input"))
    with pytest.raises(ConfigError) as err:
        calibrate(tiny(tmp_path, **change))
    assert str(err.value).startswith(where) and "\n" not in str(err.value)


def test_a_search_config_gives_space_full_schedule_and_data(tmp_path):
    import yaml
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(dict(space="demo", data=SYNTHETIC, proxy={**FULL, "val_per_class": 5},
                                          n_trials=3)))
    plan = make_plan(CalibrationSettings(str(config), n_archs=4, presets="space", out=str(tmp_path)))
    assert {a.name for a in plan.archs} >= {"small", "base"}  # the demo space's named points
    assert plan.full.options["epochs"] == FULL["epochs"] and plan.full.options["resolutions"] == FULL["resolutions"]
    assert plan.data.name == "synthetic" and plan.data_spec["val_per_class"] == 5
    assert torch.bincount(plan.data.val.labels).tolist() == [5, 5, 5, 5]
    config.write_text(yaml.safe_dump(dict(space="demo", data=SYNTHETIC, proxy={"epoch": 2})))
    with pytest.raises(ConfigError, match=r"search.yaml, line \d+: proxy.epoch: .*did you mean 'epochs'"):
        make_plan(CalibrationSettings(str(config), n_archs=4, out=str(tmp_path)))


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys):
    from lowspace.cli import main
    assert main(["calibrate", "demo", "--n", "3", "--out", str(tmp_path)]) == 2
    assert main(["calibrate", "demo", "--schedule", "x=epochs", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("lowspace calibrate: error: command line: n_archs: got 3")
    assert err[1].startswith("lowspace calibrate: error: --schedule")


def test_cli_flags_fill_the_settings():
    from lowspace.cli import build_parser
    from lowspace.cli.calibrate import settings_from_args
    args = build_parser().parse_args(
        ["calibrate", "demo", "--n", "5", "--presets", "all", "--schedule", "e3=epochs=3,resolutions=[32]",
         "--schedule", "lr=base_lr=4e-3", "--full", "epochs=6", "--full-seeds", "3,4", "--data", "synthetic",
         "--report-only", "--no-default-schedules", "--set", "resamples=500"])
    s = settings_from_args(args)
    assert (s.source, s.n_archs, s.presets, s.full_seeds, s.resamples) == ("demo", 5, "all", (3, 4), 500)
    assert s.schedules == {"e3": {"epochs": 3, "resolutions": [32]}, "lr": {"base_lr": 0.004}}
    assert s.full == {"epochs": 6} and s.data == {"dataset": "synthetic"}
    assert not s.train and not s.default_schedules


def test_parse_overrides_reads_yaml_scalars():
    assert parse_overrides("epochs=2, base_lr=4e-3,train_per_class=null,resolutions=[32,48],compile=true",
                           "--full") == dict(epochs=2, base_lr=0.004, train_per_class=None, resolutions=[32, 48],
                                             compile=True)
    for bad in ("epochs", "base_lr=.nan", "resolutions=[32"):
        with pytest.raises(ConfigError, match="--full"):
            parse_overrides(bad, "--full")


# ==================================================================== end to end on CPU
@pytest.mark.slow
def test_calibrate_end_to_end_on_cpu_then_resume_and_report_only(tmp_path, capsys):
    settings = tiny(tmp_path)
    result = calibrate(settings)
    rows = run.RowStore(tmp_path / "rows.jsonl").read()
    assert result.runs["ran"] == len(rows) == 4 * 3 and result.runs["failed"] == 0
    for row in rows:
        assert {"arch_id", "config", "schedule", "seed", "top1", "gpu_s", "lowspace_version", "fingerprint"} <= set(row)
        assert row["status"] == "ok" and row["gpu_s"] > 0 and row["validation"]["source"] == "train"
        assert 0 <= row["setup_s"] and 0 <= row["eval_s"] and row["train_s"] <= row["total_s"] <= row["gpu_s"]
        assert set(row["capture_parts_s"]) == {"warmup", "reference", "capture", "compare"}
    assert {(r["schedule"], r["seed"]) for r in rows} == {("full", 0), ("full", 1), ("e1", 2)}
    assert result.ceiling is not None and result.ceiling.n == 4
    assert result.candidates[0].agreement.n == 4 and 0 < result.candidates[0].cost_share < 1.5
    for name in ("summary.json", "summary.md", "archs.csv", "calibration.html"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["message"] == result.message and summary["archs"] == 4

    again = calibrate(settings)
    assert again.runs["ran"] == 0 and again.runs["skipped"] == 12
    assert again.ceiling.tau == pytest.approx(result.ceiling.tau)

    from lowspace.cli import main
    assert main(["calibrate", "demo", "--n", "4", "--presets", "none", "--data", "synthetic", "--out",
                 str(tmp_path / "other"), "--report-only", "--no-png"]) == 0
    assert "0 already in" in capsys.readouterr().err


@pytest.mark.slow
def test_two_spawned_workers_write_every_row_once(tmp_path):
    result = calibrate(tiny(tmp_path, workers=2))
    rows = run.RowStore(tmp_path / "rows.jsonl").read()
    assert result.runs["ran"] == 12 and len({r["key"] for r in rows}) == 12
    assert all(r["status"] == "ok" for r in rows)


def test_job_key_ignores_fields_at_their_default_and_not_changed_ones():
    from lowspace.search._calibrate_run import _recipe_defaults, job_key
    defaults = _recipe_defaults()
    base = {"epochs": 3, "base_lr": 0.004}
    key = job_key("a1", base, 0, "data")
    # a field at its default value (as a recipe field added later would be) keeps the key
    assert job_key("a1", {**base, "batch_size": defaults["batch_size"]}, 0, "data") == key
    # a value that differs from the default, another seed, architecture or data set is another run
    assert job_key("a1", {**base, "batch_size": defaults["batch_size"] * 2}, 0, "data") != key
    assert job_key("a1", {**base, "base_lr": 0.008}, 0, "data") != key
    assert len({key, job_key("a1", base, 1, "data"), job_key("a2", base, 0, "data"),
                job_key("a1", base, 0, "other")}) == 4


def test_jobs_start_with_both_full_seeds_then_the_cheapest_candidates(tmp_path):
    plan = make_plan(tiny(tmp_path, schedules={"e1": {"epochs": 1}, "n2": {"train_per_class": 2}}))
    waves = list(dict.fromkeys((j.schedule, j.seed) for j in plan.jobs()))
    full = waves[:2]
    assert [w[0] for w in full] == ["full", "full"] and {w[1] for w in full} == set(plan.settings.full_seeds)
    assert [w[0] for w in waves[2:]] == ["n2", "e1"]  # 2 epochs of 2 images per class cost less than 1 of all


def test_candidates_evaluate_once_and_runs_are_charged_for_one_evaluation():
    full = full_options({}, dict(epochs=10, warmup_epochs=1.0, resolutions=[64]))
    sched = resolve_schedule("e2", {"epochs": 2}, full)
    assert sched.options["eval_every"] == 2 and sched.options["epochs"] == 2
    kept = resolve_schedule("e2-all", {"epochs": 2, "eval_every": 1}, full)
    assert kept.options["eval_every"] == 1
    from lowspace.search._calibrate_report import run_cost
    every_epoch = dict(gpu_s=100.0, eval_s=20.0, epochs_run=10, schedule_config={"eval_every": 1})
    assert run_cost(every_epoch) == pytest.approx(100.0 - 20.0 * 9 / 10)
    assert run_cost(dict(every_epoch, schedule_config={"eval_every": 10})) == 100.0
    assert math.isnan(run_cost(dict(every_epoch, eval_s=None)))
