"""experiments/train_speed/bench_train.py on the CPU: part e end to end at toy scale, and its goal rule."""
import json

import pytest


@pytest.fixture(scope="module")
def bench(load_experiment):
    return load_experiment("train_speed/bench_train.py")


def test_a_loader_goal_needs_both_the_median_chunk_and_the_wall_rate(bench):
    rate = {"resident": 10_000, "gpu_loader": 9_000, "cpu_loader": 3_000}
    steady = bench._loader_goals(rate, dict(rate))
    assert steady["gpu_over_cpu"] == pytest.approx(3.0) and steady["gpu_over_cpu_goal_met"]
    assert steady["within_15pct_of_resident"]
    # the CPU loader's median chunk is slow but it stalls less over the run: the wall ratio misses the goal
    stalls = bench._loader_goals(rate, {"resident": 10_000, "gpu_loader": 8_000, "cpu_loader": 4_000})
    assert stalls["gpu_over_cpu_wall"] == pytest.approx(2.0) and not stalls["gpu_over_cpu_goal_met"]
    assert stalls["gpu_below_resident_wall"] == pytest.approx(0.2) and not stalls["within_15pct_of_resident"]
    assert bench._loader_goals({"resident": 1.0}, {"resident": 1.0}) == {}


def test_part_e_feeds_every_loader_at_toy_scale(bench, tmp_path):
    bench.main(["--part", "e", "--smoke", "--out", str(tmp_path), "--jpeg-dir", str(tmp_path / "jpegs")])
    result = json.loads((tmp_path / "part_e.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"resident", "gpu_loader", "gpu_loader_processes", "gpu_loader_processes_taps", "cpu_loader"}
    assert all("error" not in r and r["wall_images_per_s"] > 0 for r in rows.values())
    summary = result["summary"]
    gpu, cpu = rows["gpu_loader"]["images_per_s"], rows["cpu_loader"]["images_per_s"]
    assert summary["gpu_over_cpu"] == pytest.approx(gpu / cpu)
    assert summary["gpu_over_cpu_wall"] > 0 and "gpu_below_resident_wall" in summary
    assert (tmp_path / "part_e.md").is_file()
    spread = summary["processes"]  # the same goals for the feed made in two processes, and its ratio to one
    assert spread["gpu_over_cpu"] == pytest.approx(rows["gpu_loader_processes"]["images_per_s"] / cpu)
    assert spread["over_one_process"] == pytest.approx(rows["gpu_loader_processes"]["images_per_s"] / gpu)
    taps = rows["gpu_loader_processes_taps"]  # on the CPU the taps kernel is not there, and the note says so
    assert "unavailable" in taps["note"]
    over = taps["images_per_s"] / rows["gpu_loader_processes"]["images_per_s"]
    assert summary["taps"]["over_matmul"] == pytest.approx(over)
    overlap = summary["gpu_loader_stages"]["g_overlap"]
    assert overlap["batches"] >= 1 and overlap["both_ms_per_batch"] > 0 and overlap["serialized"] is not None
    for stage in ("decode", "transform"):  # a thread's CPU time is positive and fits in the wall time around it
        assert 0 < overlap[f"{stage}_cpu_ms_per_batch"] <= overlap[f"{stage}_ms_per_batch"] * 1.05 + 1
        assert 0 < overlap[f"both_{stage}_cpu_ms_per_batch"] <= overlap["both_ms_per_batch"] * 1.05 + 1


def test_part_e_runs_only_the_feeds_asked_for(bench, tmp_path):
    bench.main(["--part", "e", "--smoke", "--out", str(tmp_path), "--jpeg-dir", str(tmp_path / "jpegs"),
                "--stage-batches", "0", "--feeds", "resident,gpu_loader_processes_taps,cpu_loader"])
    result = json.loads((tmp_path / "part_e.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["resident", "gpu_loader_processes_taps", "cpu_loader"]
    assert "gpu_over_cpu" in result["summary"]["taps"] and "gpu_loader" not in result["summary"]["projection_one_gpu"]
    with pytest.raises(SystemExit):
        bench.main(["--part", "e", "--smoke", "--out", str(tmp_path), "--feeds", "resident,bogus"])
