"""Final evaluation of front members and presets: several seeds, the test split, uncertainty in what is
reported (lowspace.report.evaluate and `lowspace export --retrain`)."""
import json

import pandas as pd
import pytest

import lowspace.train
import search_fakes
from lowspace.arch import ArchConfig
from lowspace.cli import main
from lowspace.data import get_dataset
from lowspace.errors import ConfigError
from lowspace.report import evaluate
from lowspace.report.evaluate import Entry, evaluate_final, final_comparisons, final_frame, study_entries
from lowspace.search import run_search
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import load_study
from lowspace.train import load_recipe

TINY = ArchConfig.from_dict(dict(
    name="tiny", resolution=32, stem=dict(width=8),
    stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
            dict(width=24, depth=1, block="lowformer", attention=dict(stride=1))],
    head=dict(widths=[32])))
QUICK = dict(base="proxy", epochs=1, warmup_epochs=0.5, resolutions=[16], batch_size=32, bn_reestimate_images=64,
             materialize=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("final")
    config = SearchConfig.from_dict({"space": "lowformer", "n_trials": 6, "study_name": "f",
                                     "storage": f"sqlite:///{tmp / 'study.db'}", "proxy": {"epochs": 2},
                                     "early_stopping": {"kind": "none"}, "constraints": {"max_macs": 30e9},
                                     "data": {"dataset": "synthetic"}})
    run_search(config, engines=search_fakes.fake_engines())
    study = load_study(tmp / "study.db", "f")
    study.db = tmp / "study.db"
    return study


def fake_train(calls):
    """A trainer whose accuracy depends on the architecture's size and a little on the seed."""
    def train(cfg, data, recipe, device, run_dir):
        calls.append((cfg.arch_id, recipe))
        base = 80 + 10 * (1 - 1 / (1 + search_fakes.fake_params(cfg) / 20000))
        return dict(top1=base + 0.05 * recipe.seed, top5=99.0, images=10_000, resolution=recipe.eval_resolution,
                    train_s=1.0)
    return train


def test_every_entry_trains_with_each_seed_on_the_test_split(study):
    calls = []
    entries = study_entries(study)
    kinds = {e.kind for e in entries}
    assert kinds == {"front", "preset"} and all(e.latency_ms for e in entries)
    assert {e.name for e in entries if e.kind == "preset"} >= {"b0", "b1", "b15", "b3"}
    results = evaluate_final(entries, "synthetic", dict(base="proxy", epochs=2, val_per_class=50), repeats=3, seed=5,
                             train=fake_train(calls))
    assert len(calls) == 3 * len(entries)
    for _arch_id, recipe in calls:
        assert recipe.eval_split == "test" and recipe.val_per_class is None and recipe.auto_restart is None
        assert recipe.eval_every == recipe.epochs == 2 and recipe.seed in (5, 6, 7)
        assert recipe.resolutions == (64,) and recipe.eval_resolution == 64
    frame = final_frame(results)
    assert (frame["seeds"] == 3).all() and (frame["images"] == 10_000).all()
    row = frame.iloc[0]
    assert row["std"] == pytest.approx(0.05) and row["ci_low"] < row["mean"] < row["ci_high"]
    assert row["binomial_se"] == pytest.approx(100 * ((row["mean"] / 100) * (1 - row["mean"] / 100) / 10_000) ** 0.5)
    lines = final_comparisons(results)
    assert lines and all("Welch's t-test, 3 + 3 seeds" in line for line in lines)


def test_final_recipe_lowers_resolutions_to_the_architecture():
    recipe = evaluate.final_recipe(load_recipe("proxy"), TINY.replace(resolution=48), seed=3)
    assert recipe.resolutions == (48,) and recipe.eval_resolution == 48 and recipe.seed == 3
    assert evaluate.final_recipe(load_recipe("b1"), TINY.replace(resolution=224), 0).resolutions == (128, 160, 192, 224)
    with pytest.raises(ConfigError, match="--repeats"):
        evaluate_final([], "synthetic", "proxy", repeats=0)


def test_export_retrain_cli(study, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(evaluate, "train_run", fake_train(calls))
    db = str(study.db)
    rc = main(["export", db, "--study-name", "f", "--pareto", "--out", str(tmp_path / "exp"), "--retrain",
               "--repeats", "2", "--data", "synthetic", "--no-png", "--cdn", "--significance", "0.9"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "exp"
    table = pd.read_csv(out / "final.csv")
    assert (table["seeds"] == 2).all() and set(table["kind"]) == {"front", "preset"}
    assert len(pd.read_csv(out / "final_runs.csv")) == 2 * len(table)
    text = (out / "final.md").read_text()
    assert "± " in text and "90 % confidence interval" in text
    assert "Front members against the presets (90 % level)" in text
    assert "cdn.plot.ly" in (out / "final.html").read_text()
    configs = [p for p in out.glob("*.yaml") if not p.name.endswith(".recipe.yaml")]
    notes = [ArchConfig.from_yaml(p).notes for p in configs]
    assert configs and all("Final evaluation (recipe f-proxy, test split): top-1 " in n for n in notes)
    assert {r.epochs for _, r in calls} == {2}  # the study's proxy schedule
    assert main(["export", db, "--study-name", "f", "--pareto", "--out", str(tmp_path / "x"), "--repeats", "2"]) == 2
    assert "add --retrain" in capsys.readouterr().err


def test_real_training_on_cpu_resumes_from_its_run_folder(tmp_path, monkeypatch):
    data = get_dataset("synthetic", num_classes=4, train_size=128, val_size=40, image_size=16)
    entries = [Entry("tiny", TINY, latency_ms=1.0)]
    results = evaluate_final(entries, data, QUICK, repeats=2, device="cpu", out_dir=tmp_path)
    runs = results[0].runs
    assert [r["seed"] for r in runs] == [0, 1] and all(r["images"] == 40 for r in runs)  # the whole test split
    assert all(r["resolution"] == 16 for r in runs)
    stored = json.loads((tmp_path / "runs" / "tiny" / "seed1" / "result.json").read_text())
    assert stored["info"]["validation"]["split"] == "test"
    monkeypatch.setattr(lowspace.train, "fit", lambda *a, **k: pytest.fail("a finished run is read back"))
    again = evaluate_final(entries, data, QUICK, repeats=2, device="cpu", out_dir=tmp_path)
    assert [r["top1"] for r in again[0].runs] == [r["top1"] for r in runs]
    in_memory = evaluate_final(entries, data, QUICK, repeats=1, device="cpu")
    assert in_memory[0].runs[0]["top1"] == runs[0]["top1"]  # same seed, same run, written or not


def test_final_plot_error_bars_are_the_interval_over_seeds():
    from lowspace.report import plots
    runs = [dict(top1=v, images=1000) for v in (90, 92, 94)]
    results = [evaluate.FinalResult(Entry("t1", TINY, latency_ms=1.0), runs),
               evaluate.FinalResult(Entry("b1", TINY, "preset", latency_ms=2.0), [dict(top1=88.0, images=1000)])]
    frame = final_frame(results)
    fig = plots.final_figure(frame)
    front, preset = fig.data
    low, high = results[0].accuracy.interval()
    assert front.error_y.array[0] == pytest.approx(high - 92) and front.error_y.arrayminus[0] == pytest.approx(92 - low)
    assert preset.error_y.array[0] == pytest.approx(results[1].accuracy.binomial_se)  # one seed: the binomial SE


def test_final_plot_draws_trained_peers_beside_presets_and_front_members():
    from lowspace.report import plots
    runs = [dict(top1=v, images=1000) for v in (90, 91)]
    results = [evaluate.FinalResult(Entry("t1", TINY, latency_ms=1.0), runs),
               evaluate.FinalResult(Entry("b1", TINY, "preset", latency_ms=2.0), runs),
               evaluate.FinalResult(Entry("shvit_s3", TINY, "peer", latency_ms=3.0), runs)]
    fig = plots.final_figure(final_frame(results), latency_label="deploy latency, batch 256 (ms)")
    assert [t.name for t in fig.data] == ["front members", "presets", "trained peers"]
    assert list(fig.data[2].text) == ["shvit_s3"] and fig.data[2].x[0] == 3.0
    assert fig.layout.xaxis.title.text == "deploy latency, batch 256 (ms)"


def test_final_report_compares_front_members_with_presets_only_when_it_has_both(tmp_path):
    runs = [dict(top1=v, images=1000) for v in (90, 91)]
    front = evaluate.FinalResult(Entry("t1", TINY, latency_ms=1.0), runs)
    preset = evaluate.FinalResult(Entry("b1", TINY, "preset", latency_ms=2.0), runs)
    heading = "## Front members against the presets"
    for results, expected in (([front, preset], True), ([preset], False), ([front], False)):
        out = tmp_path / str(len(results)) / results[0].entry.name
        evaluate.write_final_report(results, out, "t", png=False, plotlyjs="cdn")
        assert (heading in (out / "final.md").read_text()) is expected
