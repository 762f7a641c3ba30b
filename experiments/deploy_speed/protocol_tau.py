"""Does a cheap latency protocol rank architectures like the deploy protocol? (Kendall tau)

Cheap protocol: ``deploy(backend="cuda_graph")`` (BN folded, fp16, channels_last, eager kernels captured
in a CUDA graph; builds in ~1 s). Deploy protocol: ``deploy(backend="compile_cuda_graph")`` with the
default options (inductor ``tuned`` + CUDA graph; 15-60 s cold, 3-10 s from the on-disk cache). Both on the same
random architectures, timed side by side by ``bench.py``; MACs and parameter counts are the free baselines.

    # on a CUDA GPU (architectures from a folder of ArchConfig YAMLs, or generated with a seed):
    python3 experiments/deploy_speed/protocol_tau.py --configs experiments/deploy_speed/tau_configs \
        --batches 200 --out experiments/deploy_speed/tau
    python3 experiments/deploy_speed/protocol_tau.py --generate 20 --seed 0 --out DIR   # the lowformer space
    # on any machine, from a bench results.json that holds both protocols' rows:
    python3 experiments/deploy_speed/protocol_tau.py --results experiments/deploy_speed/tau/results.json --out DIR

    # other variants: --cheap A,B compares each with --deploy (each analysis named tau_b<batch>_<A>_vs_<deploy>)
    python3 experiments/deploy_speed/protocol_tau.py --configs experiments/deploy_speed/tau_configs \
        --cheap ours_graph,ours_graph_gncl --out experiments/deploy_speed/tau

Writes OUT/results.json and OUT/results.md (bench.py's rows) and OUT/tau_b<batch>.json / .md.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from scipy.stats import kendalltau  # noqa: E402

# the cheap protocol (eager kernels in a CUDA graph, deploy defaults) and the deploy protocol (compiled + graph)
CHEAP, DEPLOY = "ours_graph_gncl", "ours_deploy"


# ------------------------------------------------------------------------------------ architectures
def generate(n: int, seed: int, out_dir: Path, space: str = "lowformer") -> list[Path]:
    """Write ``n`` random architectures of the search space ``space`` (``SearchSpace.sample``, valid ones
    only) as YAML files ``rNN.yaml`` into ``out_dir``."""
    from lowspace import ConfigError
    from lowspace.search import load_space
    search_space = load_space(space)
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    while len(paths) < n:
        try:
            config = search_space.build(search_space.sample(rng))
        except ConfigError:
            continue
        path = out_dir / f"r{len(paths):02d}.yaml"
        config.replace(name=f"random_{seed}_{len(paths):02d}").to_yaml(path)
        paths.append(path)
    return paths


def static_costs(config: str, resolution: int = 224) -> dict:
    """Parameters and MACs (conv + linear + attention matmuls, via torch's FLOP counter) of a config."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lowspace import create_model
    model = create_model(config).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), \
            FlopCounterMode(display=False) as fc:
        model(torch.randn(1, model.cfg.in_chans, resolution, resolution))
    return {"params": params, "macs": fc.get_total_flops() // 2}


def analyse(results: dict, batch: int, out: Path, cheap: str = CHEAP, deploy: str = DEPLOY) -> dict:
    """Kendall tau of ``cheap`` vs ``deploy`` rows (bench variants) at ``batch``; writes
    OUT/tau_b<batch>_<cheap>_vs_<deploy>.json and .md."""
    rows = [r for r in results["rows"] if r.get("status") == "ok" and r["batch"] == batch]
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {"config": r.get("config", r["model"])})[r["variant"]] = r["ms"]
    models = sorted(m for m, v in by_model.items() if cheap in v and deploy in v)
    if len(models) < 3:
        raise SystemExit(f"need >= 3 architectures with both {cheap} and {deploy} rows at batch {batch}")
    for m in models:
        by_model[m].update(static_costs(by_model[m]["config"]))
    deploy_ms = [by_model[m][deploy] for m in models]
    report = {
        "batch": batch, "n": len(models), "cheap": cheap, "deploy": deploy,
        "tau_cheap_vs_deploy": float(kendalltau([by_model[m][cheap] for m in models], deploy_ms).statistic),
        "tau_macs_vs_deploy": float(kendalltau([by_model[m]["macs"] for m in models], deploy_ms).statistic),
        "tau_params_vs_deploy": float(kendalltau([by_model[m]["params"] for m in models], deploy_ms).statistic),
        "models": {m: by_model[m] for m in models},
        "env": results.get("env"),
    }
    report["goal_met"] = report["tau_cheap_vs_deploy"] >= 0.9 and len(models) >= 20
    if len(models) < 20:
        print(f"note: only {len(models)} architectures; the goal asks for >= 20")
    report["recommendation"] = (
        f"search with the cheap protocol ({cheap}): it ranks like the deploy protocol (tau >= 0.9)"
        if report["goal_met"] else
        f"search with the deploy protocol ({deploy}): the cheap one ranks differently (tau < 0.9)")
    lines = [f"# Cheap vs deploy latency protocol, batch {batch}, {len(models)} random architectures", "",
             f"- Kendall tau, cheap ({cheap}) vs deploy ({deploy}) ms/batch: **{report['tau_cheap_vs_deploy']:.3f}** "
             f"(goal >= 0.9: {'met' if report['goal_met'] else 'MISSED'})",
             f"- baselines: MACs vs deploy {report['tau_macs_vs_deploy']:.3f}, params vs deploy "
             f"{report['tau_params_vs_deploy']:.3f}",
             f"- recommendation: {report['recommendation']}", "",
             "| arch | MMACs | params (M) | cheap ms | deploy ms | deploy/cheap |", "|---|---:|---:|---:|---:|---:|"]
    for m in sorted(models, key=lambda m: by_model[m][deploy]):
        v = by_model[m]
        lines.append(f"| {m} | {v['macs'] / 1e6:,.0f} | {v['params'] / 1e6:.1f} | {v[cheap]:.3f} | {v[deploy]:.3f} | "
                     f"{v[deploy] / v[cheap]:.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tau_b{batch}_{cheap}_vs_{deploy}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:5]))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--configs", help="folder of ArchConfig YAMLs (>= 20)")
    src.add_argument("--generate", type=int, help="generate this many random architectures")
    src.add_argument("--results", help="analyse an existing bench results.json (no timing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="lowformer", help="search space --generate samples (name or YAML path)")
    ap.add_argument("--batches", default="200")
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--out", default="experiments/deploy_speed/tau")
    ap.add_argument("--cheap", default=CHEAP,
                    help=f"bench variant(s) of the cheap protocol, comma-separated, each compared with --deploy "
                         f"(default {CHEAP})")
    ap.add_argument("--deploy", default=DEPLOY, help=f"bench variant of the deploy protocol (default {DEPLOY})")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.results:
        results = json.loads(Path(args.results).read_text())
    else:
        configs = Path(args.configs) if args.configs else out / "configs"
        if args.generate:
            generate(args.generate, args.seed, configs, args.space)
        import bench
        bench.main(["--models", "", "--extra-models", str(configs), "--extra-variants", f"{args.cheap},{args.deploy}",
                    "--extra-batches", args.batches, "--parallel", str(args.parallel), "--out", str(out)])
        results = json.loads((out / "results.json").read_text())
    for b in args.batches.split(","):
        for cheap in args.cheap.split(","):
            analyse(results, int(b), out, cheap, args.deploy)


if __name__ == "__main__":
    main()
