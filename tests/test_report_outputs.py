"""Reports of a (fake-engine) study: tables, peers, plots (HTML, PNG or a clear skip), export, CLI."""
import json

import pandas as pd
import pytest

import search_fakes
from lowspace.arch import ArchConfig, get_preset, resolve_config
from lowspace.cli import main
from lowspace.errors import ConfigError
from lowspace.report import export_pareto, export_trial, pareto_trials, trials_frame, write_report
from lowspace.report import plots
from lowspace.report.tables import load_peers
from lowspace.search.settings import SearchConfig
from lowspace.search.storage import load_study
from lowspace.search import run_search


def _study(tmp_path, name="s", mode="pareto", n=6, space="demo", **kw):
    config = SearchConfig.from_dict({"space": space, "mode": mode, "n_trials": n, "study_name": name,
                                     "storage": f"sqlite:///{tmp_path / 'study.db'}", "proxy": {"epochs": 2},
                                     "early_stopping": {"kind": "none"}, **kw})
    run_search(config, engines=search_fakes.fake_engines())
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
    path = export_trial(lowformer_study, b1.number, tmp_path / "one")
    cfg = ArchConfig.from_yaml(path)
    assert cfg.arch_id == get_preset("b1").arch_id and cfg.recipe == "b1"
    assert path.read_text().startswith("# Exported by `lowspace export`")
    with pytest.raises(ConfigError, match="has trials 0.."):
        export_trial(lowformer_study, 999, tmp_path)


def test_export_pareto_replaces_exports_that_left_the_front(lowformer_study, tmp_path):
    first = export_pareto(lowformer_study, tmp_path)[0]
    stale = tmp_path / f"{lowformer_study.study_name}-t9998-0123456789ab.yaml"  # an export from an older front
    first.rename(stale)
    mine = tmp_path / f"{lowformer_study.study_name}-t9999-notes.yaml"
    mine.write_text("# my own notes\n")
    paths = export_pareto(lowformer_study, tmp_path)
    assert not stale.exists() and mine.exists()
    assert sorted(tmp_path.glob("*.yaml")) == sorted([*paths, mine])


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


def test_hypervolume_curves_against_a_random_baseline(tmp_path):
    a = trials_frame(_study(tmp_path, "a", n=5))
    b = trials_frame(_study(tmp_path, "b", mode="random", n=5))
    curves, ref = plots.hypervolume_curves({"a": a, "b": b}, ["accuracy", "latency"])
    assert set(curves) == {"a", "b"} and ref["accuracy"] == 1.0
    for ys in curves.values():
        assert len(ys) >= 1 and all(0.0 <= y <= 1.0 for y in ys)
        assert all(y2 >= y1 - 1e-12 for y1, y2 in zip(ys, ys[1:]))


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
               "--out", str(tmp_path / "out"), "--no-png", "--max-macs", "1e9"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "Pareto front" in err and (tmp_path / "out" / "pareto.html").exists()
    assert list((tmp_path / "out" / "configs").glob("*.yaml"))
    rc = main(["pareto", str(db), "--out", str(tmp_path / "rep"), "--no-png", "--baseline", str(db)])
    assert rc == 0 and (tmp_path / "rep" / "hypervolume.html").exists()
    rc = main(["export", str(db), "--trial", "0", "--trial", "1", "--out", str(tmp_path / "exp")])
    assert rc == 0 and len(list((tmp_path / "exp").glob("*.yaml"))) == 2
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
