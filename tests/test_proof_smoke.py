"""experiments/proof end to end at toy scale: ``SMOKE=1 bash experiments/proof/run.sh`` on the CPU runs every phase
(speed table, presets and peers trained, three searches with two seeds, front members retrained, the report) and
each phase writes its files with lowspace's provenance; a second run finds everything done."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_writes_every_phase(tmp_path):
    env = dict(os.environ, SMOKE="1", RESULTS=str(tmp_path / "proof"), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               LOWSPACE_CACHE_DIR=str(tmp_path / "cache"))  # not the user's measurement cache
    done = subprocess.run(["bash", "experiments/proof/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "proof"
    speed = json.loads((out / "speed" / "speed.json").read_text())
    assert {r["name"] for r in speed["rows"]} >= {"b0", "test_resnet", "test_efficientnet"}
    assert speed["record"]["provenance"]["source"] and speed["record"]["fingerprint"]
    assert "infer_samples_per_sec" in (out / "speed" / "speed.csv").read_text().splitlines()[0]
    published = json.loads((out / "speed" / "published.json").read_text())["rows"]  # b0: the one with a paper
    assert [(r["name"], r["top1"]) for r in published] == [("b0", 78.4)] and published[0]["images_per_s"] > 0
    trained = json.loads((out / "train" / "final.json").read_text())
    assert {r["name"]: r["seeds"] for r in trained["rows"]} == {"b0": 2, "test_resnet": 2, "test_efficientnet": 2}
    for method in ("pareto", "random", "nsga2"):
        for seed in (0, 1):
            assert (out / "studies" / f"{method}-s{seed}.db").is_file()
            record = json.loads((out / "studies" / f"{method}-s{seed}.record.json").read_text())
            assert record["reference_latency_ms"] > 0
    wide = json.loads((out / "studies" / "pareto-wide-s0.record.json").read_text())  # the wider space's study
    assert wide["config"] == "experiments/proof/pareto.yaml" and wide["set"] == ["space_fixed={}"]
    chosen = json.loads((out / "front" / "chosen.json").read_text())["members"]
    assert chosen and (out / "front" / "final.json").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert [h["method"] for h in report["hypervolume"]] == ["pareto", "random", "nsga2"]
    assert all(h["seeds"] == 2 for h in report["hypervolume"])
    for seconds in ("spent", "occupied"):  # 3 methods x 4 fractions of the least seconds spent, both axes
        equal = report["hypervolume_at_equal_gpu_s"][seconds]
        assert [e["group"] for e in equal] == [m for m in ("pareto", "random", "nsga2") for _ in range(4)]
        assert all(e["studies"] == 2 and e["gpu_s"] > 0 for e in equal)
    # the toy rules let 2 seeds per method make a claim: pareto against each baseline, by Welch's t-test or
    # "untested" when the toy studies' hypervolumes do not spread
    assert [m.split(" at ")[0] for m in report["methods"]] == ["- pareto - random", "- pareto - nsga2"]
    assert all(("Welch's t-test, 2 + 2 seeds" in m or "untested" in m) and "no claim" not in m
               for m in report["methods"])
    assert report["unfinished"] == [] and all(c["device_hours"] > 0 for c in report["cost"])
    assert (out / "report" / "hypervolume_gpu.html").is_file()
    assert report["dominance"] and report["record"]["provenance"]["commit"]
    assert (out / "report" / "pareto_vs_random" / "summary.md").is_file()
    assert (out / "report" / "summary.md").read_text().startswith("# The proof")
    kinds = set(pd.read_csv(out / "report" / "final.csv")["kind"])  # the front plot: all three kinds, error bars
    assert kinds == {"front", "preset", "peer"} and (out / "report" / "final.html").is_file()
    finished = {p: p.stat().st_mtime_ns for p in [*out.glob("*/runs/*/seed*/result.json"),
                                                   *out.glob("speed/rows/*.json")]}
    again = subprocess.run(["bash", "experiments/proof/run.sh"], cwd=ROOT, env=dict(env, PHASES="speed train front"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[proof] speed:" not in again.stdout  # nothing measured again
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nor trained again: the runs are read back
    # 3 models x 2 seeds and each front member x 2 seeds trained; b0 (2 protocols), 2 peers, each member timed
    assert len(finished) == 6 + 2 * len(chosen) + 4 + len(chosen)


def test_speed_table_gives_each_timed_row_its_prebuilt_cold_build(load_experiment, tmp_path):
    from lowspace.cost.bench import ROW_FIELDS, write_results
    proof = load_experiment("proof/proof.py")
    key = dict(model="b0", backend="compile_cuda_graph", deploy=True, reparam=False, precision="fp16",
               channels_last=True, batch_size=256, resolution=224)
    timed = [{**dict.fromkeys(ROW_FIELDS), **key, "status": "ok", "median_ms": 2.0, "build_s": 3.0},
             {**dict.fromkeys(ROW_FIELDS), **key, "batch_size": 1, "status": "ok", "median_ms": 0.5, "build_s": 2.0}]
    write_results(timed, proof.row_file(tmp_path, "b0", "deploy"))
    (tmp_path / "speed" / "prebuild").mkdir(parents=True)
    for stamp, seconds in ((1, 40.0), (2, 30.0)):  # built twice (an interrupted run): the later one counts
        write_results([{**dict.fromkeys(ROW_FIELDS), **key, "status": "built", "cold_build_s": seconds}],
                      tmp_path / "speed" / "prebuild" / f"deploy-{stamp}.json")
    older = proof.row_file(tmp_path, "b1", "deploy")  # timed by an earlier commit: the table keeps its commit
    write_results([{**timed[0], "model": "b1"}], older)
    stored = json.loads(older.read_text())
    older.write_text(json.dumps({**stored, "provenance": {**stored["provenance"], "commit": "0123abc"}}))
    rows = proof.speed_table(tmp_path, "cpu")
    by_batch = {r["infer_batch_size"]: r["cold_build_s"] for r in rows if r["name"] == "b0"}
    assert by_batch == {256: 30.0, 1: None}  # batch 1 not prebuilt
    assert {r["name"]: r["commit"] for r in rows}["b1"] == "0123abc"
    assert {r["commit"] for r in rows if r["name"] == "b0"} == {stored["provenance"]["commit"]}
    assert "cold_build_s" in (tmp_path / "speed" / "speed.csv").read_text().splitlines()[0]


def test_published_accuracy_is_set_against_the_row_claims_use(load_experiment, tmp_path):
    from lowspace.cost.bench import ROW_FIELDS, write_results
    proof = load_experiment("proof/proof.py")

    def row(model, backend, deploy, ms):
        return {**dict.fromkeys(ROW_FIELDS), "model": model, "backend": backend, "deploy": deploy,
                "batch_size": 256, "status": "ok", "median_ms": ms, "images_per_s": 256 * 1000 / ms}
    write_results([row("b0", "cuda_graph", True, 2.0), row("b0", "compile_cuda_graph", True, 4.0)],
                  proof.row_file(tmp_path, "b0", "deploy"))
    write_results([row("timm:levit_conv_192", "cuda_graph", False, 8.0),
                   row("timm:levit_conv_192", "compile_cuda_graph", False, 5.0)],
                  proof.row_file(tmp_path, "levit_conv_192", "graph"))
    proof.speed_table(tmp_path, "cpu")
    peers = [{"name": "levit_conv_192", "distilled": True}, {"name": "untimed", "distilled": False}]
    rules = dict(presets=["b0"], peers=peers,
                 speed=dict(device="cpu", claims=dict(batch_size=256, deploy_backend="compile_cuda_graph")),
                 published={"b0": dict(top1=78.4, px=224, source="paper"),
                            "levit_conv_192": dict(top1=79.86, px=224, source="timm"),
                            "untimed": dict(top1=80.0, px=224, source="paper")})
    table = {r["name"]: r for r in proof.published(rules, tmp_path, png=False)}
    assert set(table) == {"b0", "levit_conv_192"}  # a name without speed rows is left out
    # the preset on its compiled deploy row even though its graph row is faster; the peer on its faster row
    assert table["b0"]["images_per_s"] == pytest.approx(256 * 1000 / 4.0) and table["b0"]["kind"] == "preset"
    assert table["levit_conv_192"]["images_per_s"] == pytest.approx(256 * 1000 / 5.0)
    assert table["levit_conv_192"]["distilled"] and "compile_cuda_graph" in table["levit_conv_192"]["row"]
    assert (tmp_path / "speed" / "published.html").is_file()
    assert "| levit_conv_192 | peer | 79.86 | 224 | yes |" in (tmp_path / "speed" / "published.md").read_text()


def test_a_search_shard_takes_every_nth_study_and_records_it(load_experiment, tmp_path, monkeypatch):
    import lowspace.cli
    proof = load_experiment("proof/proof.py")
    rules = dict(search=dict(methods={"pareto": "p.yaml", "random": "r.yaml", "nsga2": "n.yaml"}, seeds=[0, 1],
                             budget_gpu_s=10, workers=1), speed=dict(device="cpu"))
    started = []
    monkeypatch.setattr(lowspace.cli, "main", lambda args: started.append(args[args.index("--study-name") + 1]) or 0)
    monkeypatch.setattr(proof, "reference_latency", lambda rules, out: 5.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    proof.phase_search(rules, tmp_path, proof.Clock(None, "1/2"), "fashion_mnist", [], png=False)
    assert started == ["pareto-s1", "random-s1", "nsga2-s1"]  # every other study, in the studies' order
    record = json.loads((tmp_path / "studies" / "random-s1.record.json").read_text())
    assert record["method"] == "random"
    assert [(r["shard"], r["visible_devices"]) for r in record["runs"]] == [("1/2", "1")]
    assert record["runs"][0]["ended"] >= record["runs"][0]["started"]


def test_a_search_run_that_is_stopped_stays_on_record_without_an_end(load_experiment, tmp_path, monkeypatch):
    import lowspace.cli
    proof = load_experiment("proof/proof.py")
    rules = dict(search=dict(methods={"pareto": "p.yaml"}, seeds=[0], budget_gpu_s=10, workers=1),
                 speed=dict(device="cpu"))

    def killed(args):
        raise KeyboardInterrupt  # what a stop signal does to the search in flight

    monkeypatch.setattr(lowspace.cli, "main", killed)
    monkeypatch.setattr(proof, "reference_latency", lambda rules, out: 5.0)
    with pytest.raises(KeyboardInterrupt):
        proof.phase_search(rules, tmp_path, proof.Clock(None, "0/1"), "fashion_mnist", [], png=False)
    runs = json.loads((tmp_path / "studies" / "pareto-s0.record.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["started"] and runs[0]["ended"] is None
    assert runs[0]["record"]["provenance"]["commit"]


def test_search_skips_a_spent_study_and_each_run_adds_to_its_record(load_experiment, tmp_path, monkeypatch):
    import optuna

    import lowspace.cli
    proof = load_experiment("proof/proof.py")
    rules = dict(search=dict(methods={"pareto": "p.yaml", "random": "r.yaml"}, seeds=[0], budget_gpu_s=10,
                             workers=1), speed=dict(device="cpu"))
    started = []
    monkeypatch.setattr(lowspace.cli, "main", lambda args: started.append(args[args.index("--study-name") + 1]) or 0)
    monkeypatch.setattr(proof, "reference_latency", lambda rules, out: 5.0)
    proof.phase_search(rules, tmp_path, proof.Clock(None, "0/1"), "fashion_mnist", [], png=False)
    assert started == ["pareto-s0", "random-s0"]  # no study yet: both run
    storage = proof.studies(rules, tmp_path)[0][2]
    study = optuna.create_study(storage=storage, study_name="pareto-s0", directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0], user_attrs={"timings": {"train_s": 9.0}}))
    proof.phase_search(rules, tmp_path, proof.Clock(None, "0/1"), "fashion_mnist", [], png=False)
    assert started[2:] == ["pareto-s0", "random-s0"]  # 9 of 10 GPU-s: not spent yet
    study.add_trial(optuna.trial.create_trial(values=[0.8, 0.5], user_attrs={"timings": {"train_s": 2.0}}))
    proof.phase_search(rules, tmp_path, proof.Clock(None, "0/1"), "fashion_mnist", [], png=False)
    assert started[4:] == ["random-s0"]  # 11 of 10: done, not started again
    record = json.loads((tmp_path / "studies" / "pareto-s0.record.json").read_text())
    assert len(record["runs"]) == 2 and record["budget_gpu_s"] == 10
    path = tmp_path / "studies" / "random-s0.record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "runs_note": "kept"}))  # keys no run writes stay
    proof.phase_search(rules, tmp_path, proof.Clock(None, "0/1"), "fashion_mnist", [], png=False)
    assert json.loads(path.read_text())["runs_note"] == "kept" and len(json.loads(path.read_text())["runs"]) == 4
    assert all(r["record"]["provenance"]["commit"] and "--timeout" not in r["command"] for r in record["runs"])


def test_study_cost_splits_gpu_minutes_by_outcome_and_counts_cache_hits_apart(load_experiment):
    proof = load_experiment("proof/proof.py")
    rows = [("COMPLETE", False, True, 120.0, 60.0, 30.0), ("COMPLETE", False, True, 240.0, 180.0, 30.0),
            ("PRUNED", False, False, 60.0, 30.0, 30.0), ("FAIL", True, False, 0.0, None, None),
            ("FAIL", False, False, 6.0, None, None), ("RUNNING", False, False, 50.0, None, None)]
    frame = pd.DataFrame([dict(state=st, duplicate=dup, counted=c, gpu_s=g, time_train_s=tr, time_latency_s=la,
                               started="2026-01-01T00:00:00", finished=None if st == "RUNNING" else fin)
                          for (st, dup, c, g, tr, la), fin in zip(rows, ["2026-01-01T00:01:00", "2026-01-01T00:06:00",
                                                                        "2026-01-01T00:03:00"] * 2)])
    cost = proof.study_cost("s", "pareto", frame)
    assert cost["gpu_hours"] == pytest.approx(426 / 3600)  # every finished trial's seconds; the running one not yet
    assert cost["device_hours"] == pytest.approx(6 / 60)  # all ran side by side from 0:00, the last ended at 0:06
    assert (cost["evaluated"], cost["full_schedule"], cost["screened_out"]) == (3, 2, 1)
    assert (cost["cache_hits"], cost["failed"]) == (1, 1)
    assert cost["gpu_minutes_per_trial"]["full schedule"] == pytest.approx({"train": 2.0, "latency": 0.5})
    assert cost["gpu_minutes_per_trial"]["screened out"] == pytest.approx({"train": 0.5, "latency": 0.5})
    assert cost["evaluated_per_gpu_hour"] == pytest.approx(3 / (426 / 3600))


def test_goal_table_counts_verdicts_and_names_what_the_closest_misses(load_experiment):
    from types import SimpleNamespace as NS
    proof = load_experiment("proof/proof.py")

    def result(name, ms, acc):
        return NS(entry=NS(name=name, latency_ms=ms), accuracy=NS(mean=acc))
    found = [result("s-t1", 2.0, 92.0), result("s-t2", 3.0, 93.0)]
    references = [result("b0", 2.5, 90.0), result("e2", 7.0, 92.6), result("l1", float("nan"), 93.2)]
    table = [dict(searched="s-t1", against="b0", verdict="dominates", accuracy_difference=2.0),
             dict(searched="s-t1", against="e2", verdict="is dominated by", accuracy_difference=-0.6),
             dict(searched="s-t2", against="b0", verdict="dominates", accuracy_difference=3.0),
             dict(searched="s-t2", against="e2", verdict="dominates", accuracy_difference=0.4)]
    rows = proof.goal_table(table, found, references)
    assert [r["searched"] for r in rows] == ["s-t2", "s-t1"]  # most dominated first
    assert (rows[0]["dominates"], rows[1]["is dominated by"]) == (2, 1)
    assert not any(r["goal"] for r in rows)  # l1 has no latency: "every" cannot be shown
    assert [m["against"] for m in rows[0]["misses"]] == ["l1"]
    text = "\n".join(proof.goal_lines(rows))
    assert "| s-t2 | 93.00 % | 3 | 2 of 3 |" in text
    assert "none. The closest, s-t2, dominates 2 of 3; it does not dominate l1 (not compared (no latency)" in text
    table.append(dict(searched="s-t2", against="l1", verdict="dominates", accuracy_difference=0.1))
    assert proof.goal_lines(proof.goal_table(table, found, references))[-1].endswith("peer: s-t2")


def test_whether_the_wider_space_closes_the_gap_is_read_from_each_space_s_closest(load_experiment):
    proof = load_experiment("proof/proof.py")

    def row(name, dominates, goal=False):
        return dict(searched=name, dominates=dominates, references=20, goal=goal)
    narrow = [row("pareto-s0-t3", 14), row("random-s1-t9", 12)]
    assert proof.space_lines(narrow, "pareto-wide") == []  # no wider study retrained: nothing to say
    lines = proof.space_lines([*narrow, row("pareto-wide-s0-t8", 17)], "pareto-wide")
    assert "- LowFormer space: 2 retrained; the closest, pareto-s0-t3, dominates 14 of 20" in lines
    assert "- wider space (`pareto-wide`): 1 retrained; the closest, pareto-wide-s0-t8, dominates 17 of 20" in lines
    assert lines[-1] == "The wider space narrows the gap without closing it."
    assert proof.space_lines([*narrow, row("pareto-wide-s0-t8", 9)], "pareto-wide")[-1] == \
        "The wider space does not narrow the gap."
    assert proof.space_lines([*narrow, row("pareto-wide-s0-t8", 20, True)], "pareto-wide")[-1] == \
        "The wider space closes the gap."


def test_front_shards_other_than_the_first_wait_for_its_timing(load_experiment, tmp_path):
    proof = load_experiment("proof/proof.py")
    rows = [tmp_path / "a.json", tmp_path / "b.json"]
    rows[0].write_text("{}")
    assert not proof.wait_for_rows(rows, proof.Clock(0.0, "1/2"), poll_s=0.01)  # deadline passed, b not timed
    rows[1].write_text("{}")
    assert proof.wait_for_rows(rows, proof.Clock(None, "1/2"), poll_s=0.01)


def test_timing_phases_refuse_a_cuda_device_the_machine_lacks(load_experiment, monkeypatch):
    import torch
    proof = load_experiment("proof/proof.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rules = dict(speed=dict(device="cuda"))
    for phase in ("speed", "front"):
        with pytest.raises(SystemExit, match=f"phase {phase}: rules.yaml speed.device is 'cuda' and this machine"):
            proof.check_timing_device(phase, rules)
    proof.check_timing_device("report", rules)  # reads files only
    proof.check_timing_device("front", dict(speed=dict(device="cpu")))


def test_front_members_wait_until_every_study_has_its_gpu_seconds(load_experiment, tmp_path):
    import optuna
    proof = load_experiment("proof/proof.py")
    rules = dict(search=dict(methods={"pareto": "p.yaml", "random": "r.yaml"}, seeds=[0], budget_gpu_s=10,
                             workers=1), speed=dict(device="cpu"), front=dict(max_per_study=1))
    (tmp_path / "studies").mkdir()
    for name, train_s in (("pareto-s0", 12.0), ("random-s0", 4.0)):
        study = optuna.create_study(storage=proof.studies(rules, tmp_path)[0][2].replace("pareto-s0", name),
                                    study_name=name, directions=["maximize", "minimize"])
        study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0], user_attrs={"timings": {"train_s": train_s}}))
    assert proof.unfinished_studies(rules, tmp_path) == ["random-s0 (4 of 10 GPU-seconds)"]
    with pytest.raises(SystemExit, match=r"not yet: random-s0 \(4 of 10 GPU-seconds\)"):
        proof.phase_front(rules, tmp_path, proof.Clock(None, "0/1"), "cpu", "synthetic", png=False)
    assert not (tmp_path / "front").exists()  # nothing chosen from a partial front
    rules["search"]["seeds"] = [0, 1]
    assert proof.unfinished_studies(rules, tmp_path) == ["pareto-s1 (not started)", "random-s0 (4 of 10 GPU-seconds)",
                                                         "random-s1 (not started)"]
    rules["search"]["n_trials"] = 2  # the smoke run: a study that exists is done
    assert proof.unfinished_studies(rules, tmp_path) == ["pareto-s1 (not started)", "random-s1 (not started)"]


def test_methods_are_compared_only_with_the_seeds_the_rules_ask(load_experiment):
    proof = load_experiment("proof/proof.py")
    rules = {"search": {"methods": {"pareto": "p.yaml", "random": "r.yaml"}, "claim_seeds": 3}, "significance": 0.95}

    def equal(pareto, random):
        rows = [dict(group="pareto", gpu_s=900.0, per_study={"s0": 0.1}), dict(group="random", gpu_s=900.0,
                                                                              per_study={"s0": 0.1})]
        return rows + [dict(group="pareto", gpu_s=3600.0, per_study=dict(enumerate(pareto))),
                       dict(group="random", gpu_s=3600.0, per_study=dict(enumerate(random)))]
    two = proof.method_lines(rules, equal([0.83, 0.84], [0.79, 0.80]))
    assert two == ["- pareto - random at 3,600 GPU-seconds: hypervolume +0.0400 (means of 2 and 2 seeds); no claim: "
                   "a claim needs 3 search seeds per method"]
    three = proof.method_lines(rules, equal([0.83, 0.84, 0.835], [0.79, 0.80, 0.795]))
    assert three[0].startswith("- pareto - random at 3,600 GPU-seconds: hypervolume +0.0400 (Welch's t-test, 3 + 3")
    assert three[0].endswith(": pareto higher")
    noisy = proof.method_lines(rules, equal([0.83, 0.70, 0.90], [0.79, 0.80, 0.795]))
    assert noisy[0].endswith(": within noise")


def test_the_wider_space_s_overrides_read_back_as_the_rules_give_them(load_experiment):
    import yaml

    from lowspace.config import parse_assignment
    from lowspace.search import SearchConfig
    proof = load_experiment("proof/proof.py")
    rules = yaml.safe_load((ROOT / "experiments" / "proof" / "rules.yaml").read_text())
    config, sets = proof.search_command(rules["search"], rules["search"]["wider"]["name"])
    assert config == rules["search"]["methods"]["pareto"] and sets[0::2] == ["--set", "--set"]
    read = dict(parse_assignment(item, SearchConfig) for item in sets[1::2])
    assert read == {"space": "wide", "space_fixed": {"resolution": 224}}
