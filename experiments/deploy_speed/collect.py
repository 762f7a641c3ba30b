"""Merge bench runs (runs/NAME.json, each a bench.py results.json) into results.json and results.md: every
row, and the goal ratios, each computed from rows of one run (ours and timm side by side in one process).

    python3 experiments/deploy_speed/collect.py    # the four committed runs, in the order of RUNS
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import markdown  # noqa: E402

PRESET_ORDER = ["b0", "b1", "b15", "b3"]
RUNS = ["b1_b3", "b0_b15", "b3_batch1", "presets_deploy"]  # runs/<name>.json, see README.md


def main(paths: list[str]) -> None:
    rows, envs = [], {}
    for p in paths:
        run = Path(p).stem
        data = json.loads(Path(p).read_text())
        envs[run] = data["env"]
        for r in data["rows"]:
            r = {k: v for k, v in r.items() if k not in ("env", "traceback")}
            r["run"] = run
            rows.append(r)
    out = {"note": "rows of several runs on the same GPU model; ratios only within a run", "envs": envs,
           "rows": rows}
    (HERE / "results.json").write_text(json.dumps(out, indent=1, default=str))

    goals = ["| model | batch | run | timm reference | ours best | ratio | goal "
             "| ours build cold / cached / memory s |",
             "|---|---:|---|---|---|---:|---|---|"]
    for model in PRESET_ORDER:
        for batch in (200, 1):
            for run in envs:
                ok = [r for r in rows if (r["model"], r["batch"], r["run"]) == (model, batch, run)
                      and r.get("status") == "ok" and r.get("check_ok", True)]
                ref_variants = ("timm_graph", "timm_compile") if batch > 1 else ("timm_graph",)
                timm = [r for r in ok if r["variant"] in ref_variants]
                ours = [r for r in ok if r["implementation"] == "ours"]
                if not timm or not ours:
                    continue
                if batch > 1:
                    t, o = max(timm, key=lambda r: r["img_s"]), max(ours, key=lambda r: r["img_s"])
                    ratio, goal = o["img_s"] / t["img_s"], 1.5
                    met = ratio >= goal
                    tt, oo = f"{t['variant']} {t['img_s']:,.0f} img/s", f"{o['variant']} {o['img_s']:,.0f} img/s"
                else:
                    t, o = min(timm, key=lambda r: r["ms"]), min(ours, key=lambda r: r["ms"])
                    ratio, goal = o["ms"] / t["ms"], 0.45
                    met = ratio <= goal
                    tt, oo = f"{t['variant']} {t['ms']:.3f} ms", f"{o['variant']} {o['ms']:.3f} ms"
                sign = ">=" if batch > 1 else "<="
                goals.append(f"| {model} | {batch} | {run} | {tt} | {oo} | {ratio:.2f}x | {sign} {goal}x: "
                             f"{'met' if met else '**missed**'} | {o.get('build_s_cold', 0):.0f} / "
                             f"{o.get('build_s', 0):.1f} / {o.get('rebuild_s_memory', 0):.2f} |")
    env = next(iter(envs.values()))
    text = [f"# Deploy speed results ({env.get('gpu')}, driver {env.get('driver')}, torch {env.get('torch')}, "
            f"triton {env.get('triton')}, timm {env.get('timm')}, cuDNN {env.get('cudnn')})", "",
            "Produced by `collect.py` from the runs listed; each ratio compares rows of one run. Commands: README.md.",
            "", "## Goals", ""] + goals + [""]
    for p in paths:
        run = Path(p).stem
        body = markdown([r for r in rows if r["run"] == run], envs[run])
        text += [f"## Run {run}", ""] + body.splitlines()[2:] + [""]
    (HERE / "results.md").write_text("\n".join(text) + "\n")
    print("\n".join(goals))


if __name__ == "__main__":
    main(sys.argv[1:] or [str(HERE / "runs" / f"{name}.json") for name in RUNS])
