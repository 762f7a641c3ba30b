"""experiments/train_speed/loader_accuracy.py: the loader comparison's statistics, and the script end to end on
the CPU (CPU loader only; the GPU loader needs CUDA)."""
import json

import pytest


@pytest.fixture(scope="module")
def script(load_experiment):
    return load_experiment("train_speed/loader_accuracy.py")


def rows(cpu, gpu):
    return [dict(loader="cpu", seed=i, top1=a) for i, a in enumerate(cpu)] + \
        [dict(loader="gpu", seed=i, top1=a) for i, a in enumerate(gpu)]


def test_close_loaders_are_within_noise_and_far_apart_ones_differ(script):
    compare = script.compare
    close = compare(rows([80.1, 80.5, 79.9], [80.3, 79.8, 80.4]))
    assert not close["gpu_minus_cpu"]["significant"] and close["gpu_minus_cpu"]["verdict"].startswith("within noise")
    assert close["cpu"]["n"] == 3 and close["cpu"]["ci95"][0] < close["cpu"]["mean"] < close["cpu"]["ci95"][1]
    far = compare(rows([80.1, 80.2, 80.0], [75.0, 75.1, 74.9]))
    assert far["gpu_minus_cpu"]["significant"] and "lower by 5.10" in far["gpu_minus_cpu"]["verdict"]
    assert "gpu_minus_cpu" not in compare(rows([80.0, 81.0], []))  # one loader: no test


@pytest.mark.slow
def test_smoke_run_trains_writes_results_and_resumes(script, tmp_path):
    out, folder = tmp_path / "out", tmp_path / "jpeg"
    assert script.main(["--smoke", "--out", str(out), "--folder", str(folder)]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert [(r["loader"], r["seed"]) for r in payload["rows"]] == [("cpu", 0), ("cpu", 1)]
    assert all(r["top1"] is not None and r["images"] == 96 and r["train_s"] > 0 for r in payload["rows"])
    assert payload["summary"]["cpu"]["n"] == 2 and payload["provenance"]["commit"]
    assert all(r["commit"] == payload["provenance"]["commit"] for r in payload["rows"])  # each run's own commit
    assert len(list((folder / "train").iterdir())) == 10  # one folder per Fashion-MNIST class
    before = (out / "runs" / "cpu_s0" / "result.json").stat().st_mtime_ns
    assert script.main(["--smoke", "--out", str(out), "--folder", str(folder)]) == 0  # resumes: nothing retrained
    assert (out / "runs" / "cpu_s0" / "result.json").stat().st_mtime_ns == before
