"""The search's latency stage under its default protocol (deploy build, cuDNN heuristic choice) and with
cuDNN autotuning: reads the two short studies ``heuristic`` and ``autotuned`` (made by the two
``lowspace search`` commands in README.md, or by ``run.sh``) and writes ``summary.md`` beside the study file
(per-trial latency-stage seconds, and how the two protocols rank the architectures both studies sampled).

    python3 experiments/bench_presets/search_latency.py experiments/bench_presets/results/search_latency/studies.db
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scipy.stats import kendalltau  # noqa: E402


def main(argv=None) -> int:
    db = Path((argv or sys.argv[1:])[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies, lines = {}, []
    lines += ["# The search's latency stage: cuDNN heuristic choice vs autotuning (H100)", "",
              "Two studies of `experiments/bench_presets/search_latency.yaml` (seed 0, one worker, no presets, "
              "deploy build at batch 200 fp16 in a CUDA graph, 150 s each), one per cuDNN setting; commands in "
              "`experiments/bench_presets/README.md`. `latency s` is the trial's whole latency stage (build and "
              "timing); the first trial of each worker also pays the process's CUDA and cuDNN start-up.", "",
              "| study | trials (complete / stopped) | latency s: first trial | later trials median | max | "
              "proxy training s, median |", "|---|---|---:|---:|---:|---:|"]
    for name in ("heuristic", "autotuned"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        trials = sorted(study.trials, key=lambda t: t.number)
        studies[name] = {t.user_attrs["arch_id"]: t.user_attrs.get("latency_ms") for t in trials
                         if t.user_attrs.get("latency_ms")}
        lat = [t.user_attrs["timings"]["latency_s"] for t in trials if "latency_s" in t.user_attrs.get("timings", {})]
        train = [t.user_attrs["timings"]["train_s"] for t in trials if "train_s" in t.user_attrs.get("timings", {})]
        states = [t.state.name for t in trials]
        lines.append(f"| {name} | {states.count('COMPLETE')} / {states.count('PRUNED')} | {lat[0]:.2f} | "
                     f"{statistics.median(lat[1:]):.2f} | {max(lat[1:]):.2f} | {statistics.median(train):.1f} |")
    common = sorted(studies["heuristic"].keys() & studies["autotuned"].keys())
    h = [studies["heuristic"][k] for k in common]
    a = [studies["autotuned"][k] for k in common]
    ratios = [x / y for x, y in zip(h, a)]
    lines += ["", f"Architectures both studies sampled: {len(common)}. Kendall tau of their batch-200 latency, "
              f"heuristic vs autotuned: **{kendalltau(h, a).statistic:.3f}**; latency ratio heuristic / autotuned: "
              f"median {statistics.median(ratios):.3f}, range {min(ratios):.3f} - {max(ratios):.3f}."]
    (db.parent / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
