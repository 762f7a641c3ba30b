"""``lowspace bench --jobs N``: N processes time one network on the same device at once; a row per process
and one with their sum."""
import json
import multiprocessing
import os
import statistics
import threading

import pytest
import torch

from lowspace import ArchConfig
from lowspace.cli import main
from lowspace.cost import Protocol, Timing
from lowspace.cost import bench as bench_mod
from lowspace.cost.bench import combined
from lowspace.cost.measure import Measurement
from lowspace.cost.spec import resolve_spec

TINY = dict(name="tiny", resolution=32, num_classes=10, stem=dict(width=8),
            stages=[dict(width=16, depth=1, block="lowformer", attention=dict(stride=1))], head=dict(widths=[32]))
# an unreachable spread target: each process times for about 0.5 s, long enough for the windows to overlap
STEADY = ["--device", "cpu", "--target-spread", "1e-9", "--max-time", "0.5", "--chunk-ms", "10", "--no-fvcore",
          "--no-progress"]


@pytest.mark.slow
def test_two_processes_run_the_model_at_once(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    ArchConfig.from_dict(TINY).to_yaml(config)
    out = tmp_path / "rows.json"
    assert main(["bench", str(config), "--jobs", "2", "--results-file", str(out), *STEADY]) == 0
    text = capsys.readouterr().out
    assert "tiny [1/2]" in text and "tiny [2/2]" in text and "tiny [sum of 2]" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["jobs"], r["process"]) for r in rows] == [("tiny", 2, 0), ("tiny", 2, 1),
                                                                     ("tiny", 2, "all")]
    first, second, total = rows
    assert all(r["status"] == "ok" and not r["cached"] for r in rows)
    pids = {first["pid"], second["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, neither of them this one
    assert first["concurrent_share"] > 0 and second["concurrent_share"] > 0  # their timing windows overlapped
    assert total["images_per_s"] == pytest.approx(first["images_per_s"] + second["images_per_s"])
    assert total["median_ms"] == pytest.approx((first["median_ms"] + second["median_ms"]) / 2)
    assert first["resolution"] == second["resolution"] == 32 and first["macs"] == total["macs"] > 0


def test_jobs_out_of_range_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", "b0", "--jobs", "0", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--jobs" in err and "Traceback" not in err


def test_share_counts_only_the_time_all_processes_ran():
    windows = [dict(active_from=0.0, timed_to=1.0, active_to=2.0),
               dict(active_from=0.1, timed_to=1.5, active_to=1.5)]
    assert bench_mod._concurrent_shares(windows) == [0.9, 1.0]
    # the second process stopped early: the first one's timing after that did not run under the full load
    early = [dict(active_from=0.0, timed_to=1.0, active_to=1.0), dict(active_from=0.0, timed_to=0.5, active_to=0.5)]
    assert bench_mod._concurrent_shares(early) == [0.5, 1.0]
    assert bench_mod._concurrent_shares([windows[0], {}]) == [0.0, 0.0]  # one never started


def _run(median, images_per_s, status="ok"):
    return Measurement(status=status, median_ms=median, images_per_s=images_per_s, batch_size=4, build_s=0.1,
                       wall_s=1.0, iterations=10, info={"concurrent_share": 1.0},
                       error=None if status == "ok" else "boom")


def test_combined_sums_throughput_and_averages_medians():
    total = combined([_run(2.0, 2000.0), _run(4.0, 1000.0)])
    assert total.ok and total.images_per_s == 3000.0 and total.median_ms == statistics.fmean([2.0, 4.0])
    assert total.info["process"] == "all" and total.info["jobs"] == 2 and total.iterations == 20
    failed = combined([_run(2.0, 2000.0), _run(None, None, status="oom")])
    assert failed.status == "oom" and failed.error == "boom" and failed.images_per_s is None


class _BreaksLater(torch.nn.Module):
    """Builds and warms up, then fails."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 5:
            raise RuntimeError("forward broke")
        return x.mean(dim=(2, 3))


def _one_process(spec, gate):
    finished = multiprocessing.Value("i", 0)
    protocol = Protocol(device="cpu", batch_size=1, resolution=16)
    timing = Timing(max_time_s=0.1, chunk_ms=5).for_device("cpu")
    result = bench_mod._time_alongside(spec, protocol, timing, 16, gate, finished, 2)
    return result, finished.value


def test_a_process_that_fails_while_timing_reports_it_and_lets_the_others_finish():
    result, finished = _one_process(resolve_spec(_BreaksLater()), threading.Barrier(1))
    assert result["measurement"]["status"] == "error" and "forward broke" in result["measurement"]["error"]
    assert finished == 1  # counted as done: the others stop keeping the device busy for it
    assert result["active_from"] <= result["timed_to"]


def test_a_failed_build_releases_the_others(monkeypatch):
    def broken_build(spec, protocol, resolution):
        raise RuntimeError("cannot build")

    monkeypatch.setattr(bench_mod, "build_runner", broken_build)
    gate = threading.Barrier(2)
    result, finished = _one_process(resolve_spec(TINY), gate)
    assert result["measurement"]["status"] == "error" and "cannot build" in result["measurement"]["error"]
    assert gate.broken and finished == 1  # the others waiting at the start are woken with an error
