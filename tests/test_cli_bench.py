"""``lowspace bench``: one table for configs, presets and timm models; results files; clear errors."""
import csv
import json
import types

import pytest
import torch

from lowspace import ArchConfig
from lowspace.runtime import Runner
from lowspace.cli import main

TINY = dict(name="tiny", resolution=32, num_classes=10, stem=dict(width=8),
            stages=[dict(width=16, depth=1, block="lowformer", attention=dict(stride=1)),
                    dict(width=32, depth=1, block="lowformer", attention=dict(stride=1))],
            head=dict(widths=[32, 32]))
QUICK = ["--device", "cpu", "--target-spread", "1000", "--max-time", "0.3", "--chunk-ms", "5", "--no-progress"]


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    ArchConfig.from_dict(TINY).to_yaml(path)
    return path


def test_bench_config_rows_and_csv(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    rc = main(["bench", str(tiny_yaml), "--batch-size", "1", "2", "--precision", "fp32", "bf16",
               "--results-file", str(out), *QUICK])
    assert rc == 0
    text = capsys.readouterr().out
    assert "lowspace bench" in text and "tiny" in text and f"wrote 4 rows to {out}" in text
    rows = list(csv.DictReader(out.open()))
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", "1"), ("fp32", "2"), ("bf16", "1"),
                                                               ("bf16", "2")]
    for r in rows:
        assert r["status"] == "ok" and r["implementation"] == "lowspace" and r["resolution"] == "32"
        assert r["backend"] == "eager" and int(r["macs"]) < int(r["fvcore_macs"]) and int(r["params"]) > 0
        assert float(r["median_ms"]) > 0 and float(r["images_per_s"]) > 0


def test_bench_preset_with_timm_twin_json_and_cache(tmp_path):
    out = tmp_path / "rows.json"
    args = ["bench", "b0", "--timm", "--img-size", "64", "--no-fvcore", "--results-file", str(out), *QUICK]
    assert main(args) == 0
    data = json.loads(out.read_text())
    ours, theirs = data["rows"]
    assert (ours["model"], ours["implementation"]) == ("b0", "lowspace")
    assert (theirs["model"], theirs["implementation"]) == ("lowformer_b0", "timm")
    assert ours["params"] == theirs["params"] == 14_100_472 and ours["macs"] == theirs["macs"]
    assert ours["fvcore_macs"] is None
    assert ours["identity"].startswith("arch:") and theirs["identity"] == "timm:lowformer_b0"
    fp = data["fingerprints"][ours["fingerprint_key"]]
    assert fp["device_type"] == "cpu" and data["meta"]["args"]["timm"] is True
    assert not ours["cached"]
    assert main(args) == 0  # second run: from the cache
    assert all(r["cached"] for r in json.loads(out.read_text())["rows"])
    assert main([a for a in args if a != "--timm"] + ["--no-cache"]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert not row["cached"]


def _fake_deploy(calls):
    def deploy(model, precision="fp16", batch_size=1, resolution=224, backend="cuda_graph", channels_last=True,
               **options):
        calls.append(dict(batch_size=batch_size, resolution=resolution))
        x = torch.randn(batch_size, 3, resolution, resolution)
        return types.SimpleNamespace(build_s=0.0, info={"fake": True},
                                     runner=lambda: Runner(lambda: model(x), x, backend, precision))

    return deploy


def test_bench_timm_peer_and_deploy(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("lowspace.cost.measure._deploy", _fake_deploy(calls))
    out = tmp_path / "rows.json"
    assert main(["bench", "efficientvit_b0", "--img-size", "32", "--deploy", "--no-fvcore", "--results-file",
                 str(out), *QUICK]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["implementation"] == "timm" and row["deploy"] is True and row["status"] == "ok"
    assert calls and calls[0]["resolution"] == 32


@pytest.mark.slow  # a spawned process
def test_bench_isolated(tiny_yaml, tmp_path):
    out = tmp_path / "rows.json"
    assert main(["bench", str(tiny_yaml), "--isolate", "--timeout", "120", "--results-file", str(out), *QUICK]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and row["median_ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["b0", "--backend", "eagr"], "did you mean 'eager'"),
    (["b0", "--precision", "fp8"], "allowed: fp32, fp16, bf16"),
    (["efficientvit_bx"], "did you mean 'efficientvit_b"),
    (["timm:not_a_model"], "not a timm model name"),
    (["b0", "--backend", "cuda_graph"], "CUDA"),
    (["b0", "--batch-size", "0"], "batch_size"),
    (["b0", "--results-file", "out.txt"], ".csv or .json"),
    (["b0", "--cudnn-benchmark", "fast"], "--cudnn-benchmark: got 'fast'"),
    (["b0", "--prebuild", "-1"], "--prebuild: got -1; a number of processes from 0 (off) to 256"),
    (["b0", "--prebuild-only"], "--prebuild: got 0; at least 1 process with --prebuild-only"),
])
def test_bad_arguments_give_clear_errors(argv, message, capsys):
    assert main(["bench", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowspace bench: error:") and message in err
    assert "Traceback" not in err


def test_unreadable_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    assert main(["bench", str(bad), "--device", "cpu"]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.yaml"), "--device", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err


def _row(**values):
    from lowspace.cost.bench import ROW_FIELDS
    row = dict.fromkeys(ROW_FIELDS)
    row.update(model="tiny", implementation="lowspace", backend="eager", precision="fp32", channels_last=False,
               deploy=False, resolution=32, batch_size=1, requested_batch_size=1, status="ok", warnings="",
               build_s=0.1, images_per_s=500.0, **values)
    return row


def test_bench_table_says_what_spread_and_p10_p90_are(monkeypatch, capsys, tiny_yaml):
    """One timed row whose spread contradicts its p10-p90 band (one outlying chunk) and one that agrees."""
    rows = [_row(median_ms=2.0, p10_ms=1.98, p90_ms=2.02, spread=0.5),   # band 2 %, spread 50 %: an outlier
            _row(median_ms=2.0, p10_ms=1.9, p90_ms=2.1, spread=0.12)]    # band 10 %, spread 12 %
    monkeypatch.setattr("lowspace.cost.bench.bench",
                        lambda jobs, *a, **k: iter([(r, types.SimpleNamespace(fingerprint=None)) for r in rows]))
    assert main(["bench", str(tiny_yaml), "--device", "cpu", "--no-progress"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "spread: (slowest - fastest chunk) / median" in out and "p10-p90: the 10th to 90th percentile" in out
    assert "50.0% *" in out and "12.0% *" not in out and "*: a few outlying chunks" in out


@pytest.mark.parametrize("argv, message", [
    (["--isolate", "--timeout", "-1"], "--timeout: got -1.0"),
    (["--isolate", "--timeout", "nan"], "--timeout: got nan"),
    (["--results-file", "no/such/folder/rows.csv"], "no folder no/such/folder"),
])
def test_bad_files_and_limits_stop_before_measuring(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "b0", "--device", "cpu", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "" and list(tmp_path.iterdir()) == []


def test_prebuild_only_without_compiled_rows_builds_nothing(tiny_yaml, capsys):
    assert main(["bench", str(tiny_yaml), "--prebuild", "2", "--prebuild-only", *QUICK]) == 0
    assert "no compiled rows" in capsys.readouterr().out


@pytest.mark.slow
def test_prebuild_builds_compiled_rows_in_other_processes_before_timing(tiny_yaml):
    from lowspace.cost import Protocol, Timing
    from lowspace.cost.bench import bench, plan, resolve_models
    jobs = plan(resolve_models([str(tiny_yaml)]), Protocol(device="cpu", resolution=32), backends=["eager", "compile"])
    rows = [row for row, _ in bench(jobs, Timing(max_time_s=0.2, target_spread=1000), fvcore=False, cache=False,
                                    prebuilds=2)]
    assert [r["backend"] for r in rows] == ["eager", "compile"] and all(r["status"] == "ok" for r in rows)
    assert rows[0]["cold_build_s"] is None and rows[1]["cold_build_s"] > 0  # only the compiled row is prebuilt


@pytest.mark.slow
def test_prebuild_only_writes_the_cold_builds_as_rows_that_match_the_timed_ones(tiny_yaml, tmp_path, capsys):
    from lowspace.cost.bench import read_results
    out = tmp_path / "cold.json"
    assert main(["bench", str(tiny_yaml), "--backend", "eager", "compile", "--prebuild", "1", "--prebuild-only",
                 "--results-file", str(out), *QUICK]) == 0
    assert "prebuild: tiny compile fp32 b1:" in capsys.readouterr().out
    [row] = read_results(out)  # the eager row is not built ahead
    assert row["status"] == "built" and row["cold_build_s"] > 0 and row["median_ms"] is None
    timed = tmp_path / "timed.json"
    assert main(["bench", str(tiny_yaml), "--backend", "compile", "--results-file", str(timed), *QUICK]) == 0
    key = ("model", "backend", "deploy", "reparam", "precision", "channels_last", "batch_size", "resolution")
    assert [row[k] for k in key] == [read_results(timed)[0][k] for k in key]
