"""Reports of a (fake-engine) study: tables, peers, plots (HTML, PNG or a clear skip), export, CLI."""
import json

import pandas as pd
import pytest

import search_fakes
from lowspace.arch import ArchConfig, get_preset, resolve_config
from lowspace.cli import main
from lowspace.errors import ConfigError
from lowspace.report import export_pareto, export_trial, pareto_trials, trials_frame, write_report
from lowspace.report import fronts, plots, tables
from lowspace.report.claims import claim_lines
from lowspace.report.tables import load_peers, peer_notes
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import load_study
from lowspace.search import run_search


def _engines_with_images(images: int | None):
    """The fake engines, with the number of validation images a real proxy records in its info."""
    engines = search_fakes.fake_engines()
    train = engines.train_proxy

    def train_proxy(*args, **kwargs):
        result = train(*args, **kwargs)
        result.info = {"validation": {"split": "holdout", "images": images}}
        return result

    engines.train_proxy = train_proxy
    return engines


def _study(tmp_path, name="s", mode="pareto", n=6, space="demo", images=None, **kw):
    config = SearchConfig.from_dict({"space": space, "mode": mode, "n_trials": n, "study_name": name,
                                     "storage": f"sqlite:///{tmp_path / 'study.db'}", "proxy": {"epochs": 2},
                                     "early_stopping": {"kind": "none"}, **kw})
    run_search(config, engines=_engines_with_images(images) if images else search_fakes.fake_engines())
    return load_study(tmp_path / "study.db", name)


@pytest.fixture(scope="module")
def lowformer_study(tmp_path_factory):
    """A study of the default space with its four presets enqueued first."""
    tmp = tmp_path_factory.mktemp("lf")
    return _study(tmp, space="lowformer", n=6, constraints={"max_macs": 30e9})


def test_trials_frame_and_front(lowformer_study):
    df = trials_frame(lowformer_study)
    assert len(df) == len(lowformer_study.trials)
    assert {"number", "state", "status", "arch_id", "accuracy", "latency_ms", "params", "macs", "pareto",
            "feasible", "p_width"} <= set(df.columns)
    presets = set(df["preset"].dropna())
    assert {"b0", "b1", "b15", "b3"} <= presets
    front = df[df["pareto"]]
    assert len(front) >= 1
    # nothing on the front is dominated by a complete trial
    done = df[df["state"] == "COMPLETE"]
    for _, r in front.iterrows():
        better = done[(done["accuracy"] >= r["accuracy"]) & (done["latency_ms"] <= r["latency_ms"]) &
                      ((done["accuracy"] > r["accuracy"]) | (done["latency_ms"] < r["latency_ms"]))]
        assert better.empty


def test_export_rebuilds_arch_id_and_is_a_trainable_config(lowformer_study, tmp_path):
    trials = pareto_trials(lowformer_study)
    paths = export_pareto(lowformer_study, tmp_path)
    assert len(paths) == len(trials) >= 1
    for t, path in zip(trials, paths):
        cfg = ArchConfig.from_yaml(path)
        assert cfg.arch_id == t.user_attrs["arch_id"]
        assert resolve_config(str(path)).arch_id == cfg.arch_id  # what `lowspace train FILE` resolves
        assert "trial" in cfg.notes and "latency" in cfg.notes and cfg.name
    b1 = next(t for t in lowformer_study.trials if t.user_attrs.get("preset") == "b1")
    path = export_trial(lowformer_study, b1.number, tmp_path / "one", recipe="b1")
    cfg = ArchConfig.from_yaml(path)
    assert cfg.arch_id == get_preset("b1").arch_id and cfg.recipe == "b1"
    assert path.read_text().startswith("# Exported by `lowspace export`")
    assert not list((tmp_path / "one").glob("*.recipe.yaml"))  # a named recipe needs no file
    with pytest.raises(ConfigError, match="has trials 0.."):
        export_trial(lowformer_study, 999, tmp_path)


@pytest.mark.parametrize("space, side", [("lowformer", 64), ("demo", 32)])
def test_export_trains_as_searched(tmp_path, space, side):
    """The export names a recipe file holding the search's proxy (its 2 epochs, the proxy resolution lowered to
    the architecture's), and its header holds a `lowspace train` command that parses, --data included."""
    import shlex

    from lowspace.cli import build_parser
    from lowspace.train import load_recipe
    study = _study(tmp_path, space=space, n=3, data={"dataset": "fashion_mnist", "train_per_class": 100})
    t = next(t for t in study.trials if t.state.name == "COMPLETE")
    path = export_trial(study, t.number, tmp_path / "out")
    cfg = ArchConfig.from_yaml(path)
    recipe_path = path.parent / cfg.recipe
    assert recipe_path.name == path.name.replace(".yaml", ".recipe.yaml") and recipe_path.is_file()
    recipe = load_recipe(recipe_path)
    assert recipe.epochs == 2 and recipe.resolutions == (side,) and recipe.eval_resolution == side
    assert recipe.base_lr == load_recipe("proxy").base_lr and recipe.loss == "ce"  # the proxy, not b1
    command = next(line for line in path.read_text().splitlines() if line.startswith("# Train it: "))
    args = build_parser().parse_args(shlex.split(command.removeprefix("# Train it: "))[1:])
    assert (args.config, args.recipe, args.data, args.train_per_class) == (str(path), str(recipe_path),
                                                                           "fashion_mnist", 100)
    assert f"epochs at {side} px" in path.read_text()


def test_export_pareto_replaces_exports_that_left_the_front(lowformer_study, tmp_path):
    first = export_pareto(lowformer_study, tmp_path)[0]
    stale = tmp_path / f"{lowformer_study.study_name}-t9998-0123456789ab.yaml"  # an export from an older front
    first.rename(stale)
    stale_recipe = stale.with_suffix(".recipe.yaml")
    first.with_suffix(".recipe.yaml").rename(stale_recipe)
    mine = tmp_path / f"{lowformer_study.study_name}-t9999-notes.yaml"
    mine.write_text("# my own notes\n")
    paths = export_pareto(lowformer_study, tmp_path)
    assert not stale.exists() and not stale_recipe.exists() and mine.exists()
    recipes = [p.with_suffix(".recipe.yaml") for p in paths]
    assert sorted(tmp_path.glob("*.yaml")) == sorted([*paths, *recipes, mine])


def test_load_peers_accepts_bench_and_timm_columns(tmp_path):
    csv = tmp_path / "bench.csv"
    pd.DataFrame([{"model": "efficientvit_b1", "batch_size": 1, "median_ms": 2.5, "params": 9.1e6, "macs": 5.2e8},
                  {"model": "efficientvit_b1", "batch_size": 256, "median_ms": 80.0, "params": 9.1e6, "macs": 5.2e8},
                  {"model": "broken", "batch_size": 1, "median_ms": None, "status": "oom"}]).to_csv(csv, index=False)
    peers = load_peers(csv, protocol={"batch_size": 1, "device": "cuda"})
    assert peers["name"].tolist() == ["efficientvit_b1"] and peers["latency_ms"].tolist() == [2.5]
    with pytest.raises(ConfigError, match="another protocol"):
        load_peers(csv, protocol={"batch_size": 64})
    bench_json = tmp_path / "bench.json"  # the layout `lowspace bench --results-file x.json` writes
    bench_json.write_text(json.dumps({"meta": {}, "fingerprints": {}, "rows": [
        {"model": "b1", "device": "cuda", "backend": "cuda_graph", "precision": "fp16", "batch_size": 1,
         "resolution": 224, "status": "ok", "median_ms": 0.9},
        {"model": "b1", "device": "cuda", "backend": "eager", "precision": "fp16", "batch_size": 1,
         "resolution": 224, "status": "ok", "median_ms": 3.0}]}))
    p = load_peers(bench_json, protocol={"device": "cuda", "backend": "eager", "precision": "fp16", "batch_size": 1})
    assert p["latency_ms"].tolist() == [3.0] and p["resolution"].tolist() == [224]
    timm_json = tmp_path / "timm.json"
    timm_json.write_text(json.dumps([{"model": "fastvit_sa12", "infer_samples_per_sec": 500.0,
                                      "infer_batch_size": 1, "param_count": 10.9, "infer_gmacs": 1.9}]))
    p = load_peers(timm_json)
    assert p["latency_ms"].iloc[0] == pytest.approx(2.0) and p["params"].iloc[0] == pytest.approx(10.9e6)
    assert p["macs"].iloc[0] == pytest.approx(1.9e9)
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"results": [{"name": "x", "latency_ms": 1.0}]}))
    assert load_peers(wrapped)["name"].tolist() == ["x"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no usable rows"):
        load_peers(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_peers(tmp_path / "missing.csv")


def test_pareto_figure_has_front_presets_and_peer_lines(lowformer_study):
    df = trials_frame(lowformer_study)
    peers = pd.DataFrame([{"name": "efficientvit_b1", "latency_ms": 1.0}])
    fig = plots.pareto_figure(df, peers=peers, protocol={"device": "cpu", "batch_size": 1})
    names = [t.name for t in fig.data]
    assert {"trials", "Pareto front", "presets", "peers (latency only)"} <= set(names)
    preset_trace = fig.data[names.index("presets")]
    assert {"B0", "B1", "B15", "B3"} <= set(preset_trace.text)
    assert any("efficientvit_b1" in (a.text or "") for a in fig.layout.annotations)
    assert "no proxy accuracy" in fig.layout.title.text
    assert all("arch" not in h or "accuracy" in h for h in fig.data[0].hovertext)


def test_peers_on_a_log_axis_sit_at_their_latency(lowformer_study):
    """On a log axis an annotation takes log10 coordinates, a shape the value: a peer at 300 ms has its line at
    300 and its label at log10(300) (not at 10^300 ms), inside the axis range, with 1-2-5 tick labels."""
    import math
    df = trials_frame(lowformer_study)
    peers = pd.DataFrame([{"name": "slow_peer", "latency_ms": 300.0, "resolution": 224},
                          {"name": "fast_peer", "latency_ms": 0.05}])
    layout = plots.pareto_figure(df, peers=peers).to_dict()["layout"]
    axis = layout["xaxis"]
    assert axis["type"] == "log"
    xs = sorted(shape["x0"] for shape in layout["shapes"])
    assert xs == pytest.approx([0.05, 300.0])
    label = next(a for a in layout["annotations"] if a["text"].startswith("slow_peer"))
    assert label["x"] == pytest.approx(math.log10(300.0)) and "@224px" in label["text"]
    low, high = axis["range"]
    assert low <= math.log10(0.05) and high >= math.log10(300.0)
    assert set(axis["tickvals"]) <= {m * 10.0 ** e for m in (1, 2, 5) for e in range(-3, 4)}
    assert {"0.1", "1", "10", "100"} <= set(axis["ticktext"]) and "2" in axis["ticktext"] and "50" in axis["ticktext"]
    assert plots.log_ticks(1.5, 60) == [2, 5, 10, 20, 50]


def test_front_marking_percent_accuracy_and_left_out_caption(lowformer_study):
    df = trials_frame(lowformer_study)
    done = df[df["state"] == "COMPLETE"]
    extra = pd.concat([done.iloc[[0]].assign(number=900, duplicate_of=int(done["number"].iloc[0]), pareto=False),
                       done.iloc[[0]].assign(number=901, state="PRUNED", status="rejected", pareto=False),
                       done.iloc[[0]].assign(number=902, state="PRUNED", status="stopped", pareto=False)])
    df = pd.concat([df, extra], ignore_index=True)
    fig = plots.pareto_figure(df)
    names = [t.name for t in fig.data]
    front = fig.data[names.index("Pareto front")]
    assert names.index("Pareto front") > names.index("presets")  # drawn over the stars
    on_front = df[df["pareto"] & df["preset"].notna()]
    assert not on_front.empty
    sizes = dict(zip(front.x, front.marker.size))
    assert all(sizes[x] > 13 for x in on_front["latency_ms"])  # a ring around the star, not hidden under it
    scale = 100 if df["accuracy"].max() <= 1.5 else 1  # the fakes report fractions: the plot shows %
    assert list(fig.data[0].y) == pytest.approx(list(plots.candidates(df)["accuracy"] * scale))
    assert "(%)" in fig.layout.yaxis.title.text
    title = fig.layout.title.text
    assert "not shown: 1 duplicates, 1 rejected, 1 stopped" in title
    assert f"{len(plots.candidates(df))} architectures" in title


def test_peer_protocol_warnings(tmp_path):
    csv = tmp_path / "bench.csv"
    pd.DataFrame([{"model": "a", "batch_size": 1, "median_ms": 2.0, "resolution": 224, "in_chans": 3},
                  {"model": "b", "batch_size": 1, "median_ms": 3.0, "resolution": 32, "in_chans": 1},
                  {"model": "c", "batch_size": 64, "median_ms": 9.0, "resolution": 32}]).to_csv(csv, index=False)
    study_protocol = {"batch_size": 1, "resolution": 32, "in_chans": 1}
    peers = load_peers(csv, protocol=study_protocol)
    notes = peer_notes(peers, study_protocol)
    assert peers["name"].tolist() == ["a", "b"]
    assert any("1 peer row(s) left out" in n and "batch_size=1" in n for n in notes)
    assert any("another resolution than the study's 32 px: a (224)" in n for n in notes)
    assert any("input channels" in n and "a (3)" in n for n in notes)
    assert not any("b (" in n for n in notes)


def test_hypervolume_reference_is_fixed_when_the_study_is_created(tmp_path):
    limit = 5.0
    a = _study(tmp_path, "a", n=5, constraints={"max_latency_ms": limit})
    b = _study(tmp_path, "b", mode="random", n=5, constraints={"max_latency_ms": limit})
    assert a.user_attrs["hv_reference"]["latency_ms"] == limit
    alone = write_report(a, tmp_path / "alone", png=False)
    both = write_report(a, tmp_path / "both", png=False, baseline=b)
    assert both.reference.costs == {"latency_ms": limit} and both.reference.fixed and not both.reference.notes
    # another study in the report does not move the first one's hypervolume (it did with a data-derived point)
    assert both.hypervolume["a"] == alone.hypervolume["a"] > 0
    points = both.reference.normalize(trials_frame(a), ["accuracy", "latency"])
    assert (points <= 1).all() and (points >= 0).all()
    assert "latency 5 ms" in (tmp_path / "both" / "summary.md").read_text()
    # a study that recorded no point (made by an older lowspace) says so and falls back to the trials
    a.set_user_attr("hv_reference", None)
    old = write_report(a, tmp_path / "old", png=False, baseline=b)
    slowest = max(trials_frame(s).query("state == 'COMPLETE'")["latency_ms"].max() for s in (a, b))
    assert not old.reference.fixed and old.reference.costs["latency_ms"] == pytest.approx(1.1 * slowest)
    assert any("not fixed before the search" in n and "created before" in n for n in old.notes)
    assert "not fixed before the search" in (tmp_path / "old" / "summary.md").read_text()
    curve = fronts.hypervolume_curve(trials_frame(a), ["accuracy", "latency"], old.reference)
    assert all(y2 >= y1 for y1, y2 in zip(curve, curve[1:])) and 0 < curve[-1] <= 1


def test_front_statistics_over_search_seeds(tmp_path, capsys):
    for seed in (0, 1, 2):
        _study(tmp_path, f"s{seed}", n=4, seed=seed, constraints={"max_latency_ms": 5.0})
    db = tmp_path / "study.db"
    rc = main(["pareto", str(db), "--study-name", "s0", "--study-name", "s1", "--study-name", "s2",
               "--out", str(tmp_path / "rep"), "--no-png", "--cdn"])
    assert rc == 0
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "over 3 seeds" in summary and "95 % CI" in summary
    assert "hypervolume search:" in capsys.readouterr().err
    html = (tmp_path / "rep" / "pareto.html").read_text()
    assert "cdn.plot.ly" in html and len(html) < 500_000
    studies = [load_study(db, f"s{k}") for k in range(3)]
    rep = write_report(studies[0], tmp_path / "api", png=False, seeds=studies[1:])
    stats = rep.statistics["search"]
    assert len(stats.per_study) == 3
    hv = [s["hypervolume"] for s in stats.per_study.values()]
    mean, low, high = stats.summary("hypervolume")
    assert mean == pytest.approx(sum(hv) / 3) and (low < mean < high or min(hv) == max(hv))


def test_claims_against_presets_respect_the_evaluation_set_size(tmp_path):
    """One seed: 'dominates' needs a significant difference on the validation images the proxy recorded."""
    for images, name in ((20, "few"), (1_000_000, "many")):
        study = _study(tmp_path, name, space="lowformer", n=6, images=images)
        lines = claim_lines(trials_frame(study), 0.95)
        assert lines
        if images == 20:
            assert all("within noise" in line for line in lines)
        else:
            assert any(" dominates " in line or "trade-off" in line for line in lines)
        rep = write_report(study, tmp_path / name, png=False, export=True)
        summary = (tmp_path / name / "summary.md").read_text()
        assert "## Front members against the presets (95 % level)" in summary and "binomial test on" in summary
        notes = [ArchConfig.from_yaml(p).notes for p in rep.files if p.suffix == ".yaml" and ".recipe" not in p.name]
        assert any("Against the study's presets at the 95 % level" in n for n in notes)
        assert all("binomial SE" in n for n in notes)


def test_report_files_have_normal_permissions(lowformer_study, tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        rep = write_report(lowformer_study, tmp_path, png=False, export=True)
    finally:
        os.umask(old)
    for path in rep.files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_write_report_without_browser_writes_html_and_says_png_skipped(lowformer_study, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "find_browser", lambda: None)
    rep = write_report(lowformer_study, tmp_path, export=True)
    names = {p.name for p in rep.files}
    assert {"trials.csv", "pareto.csv", "pareto.html", "hypervolume.html", "summary.md"} <= names
    assert "pareto.png" not in names and not (tmp_path / "pareto.png").exists()
    assert any("PNG skipped" in n for n in rep.notes)
    assert "PNG skipped" in (tmp_path / "summary.md").read_text()
    assert list((tmp_path / "configs").glob("*.yaml"))
    assert len(pd.read_csv(tmp_path / "trials.csv")) == len(lowformer_study.trials)


@pytest.mark.slow
def test_png_export_with_chromium(lowformer_study, tmp_path):
    if plots.find_browser() is None:
        pytest.skip("no Chrome/Chromium for kaleido")
    fig = plots.pareto_figure(trials_frame(lowformer_study))
    html, png, note = plots.write_figure(fig, tmp_path / "p.html", tmp_path / "p.png")
    assert note == "" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_search_pareto_export(tmp_path, capsys):
    db = tmp_path / "cli.db"
    rc = main(["search", "--space", "demo", "--n-trials", "3", "--storage", str(db), "--study-name", "c",
               "--epochs", "2", "--early-stopping", "none", "--set", "engines=search_fakes:fake_engines",
               "--out", str(tmp_path / "out"), "--no-png", "--max-macs", "1e9", "--cdn"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "Pareto front" in err and "cdn.plot.ly" in (tmp_path / "out" / "pareto.html").read_text()
    assert list((tmp_path / "out" / "configs").glob("*.yaml"))
    rc = main(["pareto", str(db), "--out", str(tmp_path / "rep"), "--no-png", "--baseline", str(db)])
    assert rc == 0 and (tmp_path / "rep" / "hypervolume.html").exists()
    rc = main(["export", str(db), "--trial", "0", "--trial", "1", "--out", str(tmp_path / "exp")])
    assert rc == 0 and len(list((tmp_path / "exp").glob("*.yaml"))) == 4  # two configs, two recipes
    assert "recipe.yaml" in capsys.readouterr().err
    rc = main(["export", f"sqlite:///{db}", "--study-name", "nope", "--pareto", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no study named 'nope'" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("base: b1\nparams:\n  d: {choices: [1, 2], paht: stages.2.depth}\n")
    assert main(["search", "--space", str(bad), "--n-trials", "1", "--storage", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert "space.yaml, line 3" in err and "did you mean 'path'" in err and "Traceback" not in err
    assert main(["search", "--space", "demo", "--storage", "study.txt"]) == 2
    assert "expected one of" in capsys.readouterr().err
    assert main(["search", "--space", "demo", "--cudnn-benchmark", "maybe", "--storage", str(tmp_path / "x.db")]) == 2
    assert "--cudnn-benchmark: got 'maybe'" in capsys.readouterr().err
    assert main(["pareto", str(tmp_path / "missing.db")]) == 2
    assert "no such study file" in capsys.readouterr().err
    assert main(["search", "--space", "lowformer", "--describe"]) == 0
    captured = capsys.readouterr()
    assert "depth3" in captured.err and "b15 (ce118cb2cc7a)" in " ".join(captured.err.split())
    assert "all of 1000 random draws are valid architectures" in " ".join(captured.err.split())
    assert main(["search", "--space", "wide", "--describe"]) == 0
    assert "random draws are invalid architectures" in " ".join(capsys.readouterr().err.split())


def test_calibrate_takes_cdn_for_its_plot(tmp_path, monkeypatch):
    """Every command that writes an HTML report takes --cdn; calibrate passes it to its plot."""
    from types import SimpleNamespace

    import plotly.graph_objects as go

    from lowspace.cli import build_parser
    from lowspace.cli.calibrate import settings_from_args
    from lowspace.search import _calibrate_report
    args = build_parser().parse_args(["calibrate", "demo", "--cdn", "--out", str(tmp_path)])
    settings = settings_from_args(args)
    assert settings.cdn
    monkeypatch.setattr(_calibrate_report, "tau_cost_figure", lambda plan, summary: go.Figure())
    html, png, _ = _calibrate_report.write_plot(SimpleNamespace(settings=settings), None, tmp_path / "c.html", None)
    assert "cdn.plot.ly" in html.read_text() and png is None
    for command in (["search"], ["pareto", "x.db"], ["export", "x.db", "--pareto", "--out", "o", "--retrain"]):
        assert build_parser().parse_args([*command, "--cdn"]).cdn is True


def test_duplicates_are_counted_as_the_search_counts_them(tmp_path):
    """A space of two architectures asked for a third: the extra draws are duplicates (FAIL, status duplicate);
    the plot, its caption and the hypervolume count each architecture once."""
    from lowspace.search import counted_trials, outcome_counts
    space = tmp_path / "two.yaml"
    space.write_text("name: two\nbase: b0\nparams:\n  w: {choices: [16, 24], path: stages.0.width}\n")
    study = _study(tmp_path, "two", mode="random", n=3, space=str(space), max_attempts=8, presets=False)
    df = trials_frame(study)
    dups = outcome_counts(study)["duplicate"]
    assert dups >= 1
    assert set(plots.candidates(df)["number"]) == {t.number for t in counted_trials(study)}
    assert tables.left_out(df)["duplicates"] == dups
    assert f"{dups} duplicates" in plots.pareto_figure(df).layout.title.text
    rep = write_report(study, tmp_path / "rep", png=False, reference={"latency_ms": 10.0})
    curve = fronts.hypervolume_curve(df, ["accuracy", "latency"], rep.reference)
    assert len(curve) == 2  # one point per distinct complete architecture


def _finished_trials(rows):
    columns = ["number", "state", "accuracy", "latency_ms", "arch_id", "duplicate", "feasible", "finished", "gpu_s"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows])


def test_hypervolume_over_gpu_seconds_counts_every_finished_trial_in_the_order_they_finished():
    ref = fronts.Reference(accuracy=0.0, costs={"latency_ms": 10.0})
    df = _finished_trials([
        (0, "COMPLETE", 90.0, 5.0, "a", False, True, "2026-01-01T00:00:02", 100.0),
        (1, "PRUNED", None, None, "b", False, True, "2026-01-01T00:00:01", 30.0),  # screened out first
        (2, "FAIL", None, None, "a", True, True, "2026-01-01T00:00:03", 0.0),     # a duplicate spends nothing
        (3, "COMPLETE", 92.0, 4.0, "c", False, True, "2026-01-01T00:00:04", 100.0),
        (4, "RUNNING", None, None, "d", False, True, None, 50.0)])                 # not finished: left out
    curve = fronts.hypervolume_over_gpu_s(df, ["accuracy", "latency"], ref)
    assert curve["gpu_s"].tolist() == [30.0, 130.0, 130.0, 230.0]
    assert curve["hypervolume"].tolist() == pytest.approx([0.0, 0.9 * 0.5, 0.9 * 0.5, 0.92 * 0.6])
    assert fronts.hypervolume_at(curve, [0, 29, 130, 229, 1e6]).tolist() == pytest.approx([0, 0, 0.45, 0.45, 0.552])
    slower = curve.assign(gpu_s=curve["gpu_s"] * 1.5)  # the same trials at 1.5 times the cost
    table = fronts.equal_gpu_s_table({"fast": {"f": curve}, "slow": {"s1": slower, "s2": slower}},
                                     fractions=(0.6, 1.0))
    assert table["gpu_s"].tolist() == pytest.approx([138, 230, 138, 230])  # only up to 230, where "fast" ends
    assert table["hypervolume"].tolist() == pytest.approx([0.45, 0.552, 0.0, 0.45])
    assert table["studies"].tolist() == [1, 1, 2, 2] and table["ci_low"].isna().tolist() == [True, True, False, False]


def test_report_draws_and_tables_hypervolume_over_gpu_seconds(tmp_path):
    a = _study(tmp_path, "a", n=4, constraints={"max_latency_ms": 5.0})
    b = _study(tmp_path, "b", mode="random", n=4, constraints={"max_latency_ms": 5.0})
    rep = write_report(a, tmp_path / "rep", png=False, baseline=b)
    df = trials_frame(a)
    assert (df["gpu_s"] > 0).all() and df["finished"].notna().all()
    assert set(rep.equal_gpu_s["group"]) == {"search", "random baseline"}
    ends = [fronts.hypervolume_over_gpu_s(trials_frame(s), ["accuracy", "latency"], rep.reference)["gpu_s"].iloc[-1]
            for s in (a, b)]
    assert rep.equal_gpu_s["gpu_s"].max() == pytest.approx(min(ends))
    html = (tmp_path / "rep" / "hypervolume_gpu.html").read_text()
    assert "GPU-seconds spent" in html
    assert "## Hypervolume at equal GPU-seconds" in (tmp_path / "rep" / "summary.md").read_text()


def test_a_baseline_is_named_after_its_method(tmp_path):
    a = _study(tmp_path, "a", n=3)
    nsga = _study(tmp_path, "n", n=3, sampler="nsga2")
    rep = write_report(a, tmp_path / "rep", png=False, baseline=nsga)
    assert set(rep.statistics) == {"search", "nsga2 baseline"}
    assert "n (nsga2 baseline)" in rep.hypervolume


def test_hypervolume_over_occupied_seconds_counts_wall_time_while_any_trial_ran():
    ref = fronts.Reference(accuracy=0.0, costs={"latency_ms": 10.0})
    columns = ["number", "state", "accuracy", "latency_ms", "arch_id", "duplicate", "feasible", "started",
               "finished", "gpu_s", "abandoned"]
    df = pd.DataFrame([dict(zip(columns, r)) for r in [
        (0, "COMPLETE", 90.0, 5.0, "a", False, True, "2026-01-01T00:00:00", "2026-01-01T00:00:10", 10.0, False),
        (1, "COMPLETE", 92.0, 4.0, "b", False, True, "2026-01-01T00:00:05", "2026-01-01T00:00:20.500000", 15.5,
         False),
        (2, "COMPLETE", 80.0, 9.0, "c", False, True, "2026-01-01T00:01:00", "2026-01-01T00:01:04", 4.0, False),
        # its worker was killed 3 s in; the study failed it when it resumed, nine minutes later
        (3, "FAIL", None, None, "e", False, True, "2026-01-01T00:01:10", "2026-01-01T00:10:00", 3.0, True),
        (4, "RUNNING", None, None, "d", False, True, "2026-01-01T00:00:01", None, 3.0, False)]])  # never finished
    curve = fronts.hypervolume_over_gpu_s(df, ["accuracy", "latency"], ref, seconds="occupied")
    # at 0:10 trials 0 and 1 had covered 0:00-0:10; at 0:20.5, 0:00-0:20.5; the gap to 1:00 is not counted, nor
    # the time between the abandoned trial's last recorded second and the moment it was failed
    assert curve["gpu_s"].tolist() == pytest.approx([10.0, 20.5, 24.5, 27.5])
    spent = fronts.hypervolume_over_gpu_s(df, ["accuracy", "latency"], ref)
    assert spent["gpu_s"].tolist() == pytest.approx([10.0, 25.5, 29.5, 32.5])  # each trial's own seconds, summed
    assert curve["hypervolume"].tolist() == spent["hypervolume"].tolist()
    with pytest.raises(ValueError, match="seconds: 'wall' is not one of spent, occupied"):
        fronts.hypervolume_over_gpu_s(df, ["accuracy", "latency"], ref, seconds="wall")


def test_summary_counts_a_trial_stopped_after_its_status_was_set_as_failed(tmp_path):
    import optuna
    study = optuna.create_study(directions=["maximize", "minimize"])
    attrs = dict(arch_id="a1", accuracy=90.0, latency_ms=1.0, status="complete")
    study.add_trial(optuna.trial.create_trial(values=[90.0, 1.0], user_attrs=attrs))
    # killed between setting its status and being told: a stale-trial check later fails it
    fail = optuna.trial.TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs={**attrs, "arch_id": "a2"}))
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs=dict(arch_id="a1", status="duplicate",
                                                                          duplicate_of=0)))
    write_report(study, tmp_path, png=False)
    assert "Trials: 1 complete, 1 duplicate, 1 failed" in (tmp_path / "summary.md").read_text()
