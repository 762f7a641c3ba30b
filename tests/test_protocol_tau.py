"""experiments/deploy_speed/protocol_tau.py on the CPU: random architectures from the search space, and the
Kendall tau analysis of a bench results.json (named per cheap / deploy variant)."""
import json

import pytest
import yaml


@pytest.fixture(scope="module")
def tau(load_experiment):
    return load_experiment("deploy_speed/protocol_tau.py")


def test_generated_architectures_come_from_the_search_space_and_repeat_with_the_seed(tau, tmp_path):
    from lowspace import ArchConfig
    first = tau.generate(3, 7, tmp_path / "a")
    again = tau.generate(3, 7, tmp_path / "b")
    assert [p.name for p in first] == ["r00.yaml", "r01.yaml", "r02.yaml"]
    assert [p.read_text() for p in first] == [p.read_text() for p in again]
    configs = [ArchConfig.from_dict(yaml.safe_load(p.read_text())) for p in first]
    assert configs[0].name == "random_7_00" and len({p.read_text() for p in first}) == 3


def test_analysis_ranks_each_cheap_variant_against_the_deploy_one(tau, tmp_path):
    deploy = {"b0": 1.0, "b1": 2.0, "b15": 3.0}
    same = {"b0": 2.0, "b1": 4.0, "b15": 6.5}       # same order as deploy: tau 1
    swapped = {"b0": 4.0, "b1": 2.5, "b15": 6.0}    # b0 and b1 swapped: tau 1/3
    rows = [dict(model=m, config=m, variant=v, batch=200, status="ok", ms=ms[m])
            for v, ms in (("ours_deploy", deploy), ("ours_graph", same), ("ours_graph_gncl", swapped)) for m in deploy]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(dict(rows=rows, env={"gpu": "test"})))
    tau.main(["--results", str(results), "--out", str(tmp_path), "--cheap", "ours_graph,ours_graph_gncl"])
    native = json.loads((tmp_path / "tau_b200_ours_graph_vs_ours_deploy.json").read_text())
    other = json.loads((tmp_path / "tau_b200_ours_graph_gncl_vs_ours_deploy.json").read_text())
    assert native["cheap"] == "ours_graph" and native["tau_cheap_vs_deploy"] == pytest.approx(1.0)
    assert other["cheap"] == "ours_graph_gncl" and other["tau_cheap_vs_deploy"] == pytest.approx(1 / 3)
    assert native["n"] == 3 and not native["goal_met"]  # the goal needs 20 architectures
    assert native["tau_macs_vs_deploy"] == pytest.approx(1.0)  # B0 < B1 < B1.5 in MACs as in time
    assert "**0.333**" in (tmp_path / "tau_b200_ours_graph_gncl_vs_ours_deploy.md").read_text()
