"""Harness speed check: measure a never-seen random architecture at batch 1 and batch 200 with CUDA graphs,
build included, and report the wall time of the pair and both spreads (targets: <= 5 s, <= 2%).

Each architecture is new to the process and to the cache (random widths / depths, ``cache=False``). A process's
one-off CUDA costs are paid before the clock starts and reported separately, as a search worker pays them once:
the CUDA context (``cuda_init_s``) and ``lowspace.cost.measure.warm_up`` (``warm_up_s``: cuDNN loading the
kernels it autotunes over, cuBLAS / cuDNN handles, per precision). ``--no-warm-up`` leaves them in the first
architecture's time.

    python3 experiments/bench_presets/harness_speed.py --out DIR --n 12 --no-cudnn-benchmark

Writes DIR/harness_speed.json (``run.sh`` files each run as ``results/harness/<name>.json``).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for lowspace


def random_arch(seed: int):
    """A random LowFormer-family config in the neighbourhood of the presets (validated on creation)."""
    from lowspace import ArchConfig
    rng = random.Random(seed)
    w1 = rng.choice([24, 32, 40, 48])
    widths = [w1, 2 * w1, rng.choice([3, 4]) * w1, rng.choice([6, 8]) * w1]
    expand = rng.choice([4, 6])
    conv_stage = lambda w, d: {"width": w, "depth": d, "block": "fused_mbconv", "expand_ratio": 4,  # noqa: E731
                               "downsample": {"block": "fused_mbconv", "stride": 2, "expand_ratio": expand}}
    attn_stage = lambda w, d, stride, k: {  # noqa: E731
        "width": w, "depth": d, "block": "lowformer", "expand_ratio": rng.choice([4, 6]),
        "downsample": {"block": "fused_mbconv", "stride": 2, "expand_ratio": expand},
        "attention": {"placement": rng.choice(["all", "last:1", "every:2"]), "stride": stride, "kernel_size": k},
        "mlp_ratio": rng.choice([2, 4])}
    data = {
        "name": f"random_{seed}", "resolution": 224,
        "stem": {"width": rng.choice([16, 20, 24]), "depth": rng.choice([0, 1])},
        "stages": [conv_stage(widths[0], rng.choice([0, 1])), conv_stage(widths[1], rng.choice([0, 1, 2])),
                   attn_stage(widths[2], rng.randint(2, 6), 2, 5), attn_stage(widths[3], rng.randint(2, 6), 1, 3)],
        "head": {"widths": [rng.choice([1280, 1536, 2048]), rng.choice([1280, 1600])]},
    }
    return ArchConfig.from_dict(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6, help="random architectures to measure (default 6)")
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "fp32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda_graph")
    ap.add_argument("--batch-sizes", nargs=2, type=int, default=[1, 200])
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--max-wall-s", type=float, default=5.0)
    ap.add_argument("--max-spread", type=float, default=0.02)
    ap.add_argument("--no-warm-up", action="store_true", help="do not call warm_up() before the first architecture")
    ap.add_argument("--cudnn-benchmark-limit", type=int, default=None,
                    help="cuDNN autotuning over at most N algorithms per conv (torch's default: 10); recorded")
    ap.add_argument("--deploy", action="store_true",
                    help="time lowspace.deploy's build (the search's default protocol on CUDA) instead of the model")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="skip cuDNN autotuning (shorter builds; a different protocol, recorded in the output)")
    args = ap.parse_args(argv)

    import torch
    from lowspace.cost.count import count_macs, count_params
    from lowspace.cost.fingerprint import fingerprint
    from lowspace.cost.measure import measure, warm_up
    imports_s = time.perf_counter() - START
    t = time.perf_counter()
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)
        torch.cuda.synchronize()
    cuda_init_s = time.perf_counter() - t
    bench = False if args.no_cudnn_benchmark else (args.cudnn_benchmark_limit or True)
    warm_up_s = 0.0 if args.no_warm_up else warm_up(args.device, tuple(args.precisions), tuple(args.batch_sizes),
                                                     args.backend, True, args.img_size, args.deploy, bench)
    trials = []
    for i in range(args.n):
        cfg = random_arch(args.seed + i)
        for precision in args.precisions:
            t = time.perf_counter()
            ms = [measure(cfg, device=args.device, batch_size=b, resolution=args.img_size, precision=precision,
                          channels_last=True, backend=args.backend, deploy=args.deploy, cache=False,
                          cudnn_benchmark=bench) for b in args.batch_sizes]
            wall = time.perf_counter() - t
            ok = all(m.status == "ok" for m in ms)
            trial = {
                "arch": cfg.name, "arch_id": cfg.arch_id, "first_in_process": not trials, "precision": precision,
                "wall_s": wall, "status": [m.status for m in ms],
                "pass_wall": wall <= args.max_wall_s,
                "pass_spread": ok and all(m.spread <= args.max_spread for m in ms),
            }
            for b, m in zip(args.batch_sizes, ms):
                trial[f"b{b}"] = {"median_ms": m.median_ms, "spread": m.spread, "images_per_s": m.images_per_s,
                                  "build_s": m.build_s, "wall_s": m.wall_s, "iterations": m.iterations,
                                  "chunks": len(m.chunks_ms), "warnings": m.warnings, "error": m.error,
                                  "construct_s": m.info.get("construct_s"), "prepare_s": m.info.get("prepare_s")}
            trials.append(trial)
            b0, b1 = (trial[f"b{b}"] for b in args.batch_sizes)
            print(f"{cfg.name} {precision}: wall {wall:.2f}s  b{args.batch_sizes[0]} {b0['median_ms'] or 0:.3f} ms "
                  f"spread {b0['spread'] or 0:.2%} build {b0['build_s'] or 0:.2f}s | b{args.batch_sizes[1]} "
                  f"{b1['images_per_s'] or 0:,.0f} img/s spread {b1['spread'] or 0:.2%} build {b1['build_s'] or 0:.2f}s"
                  f"  {'PASS' if trial['pass_wall'] and trial['pass_spread'] else 'FAIL'}", flush=True)
        # sizes of the architecture, for the record (counted after timing, on the meta device)
        for tr in trials:
            if tr["arch"] == cfg.name:
                tr["params"], tr["macs"] = count_params(cfg), count_macs(cfg, args.img_size)
                tr["config"] = cfg.to_dict()

    fp = fingerprint(args.device)
    later = [t for t in trials if not t["first_in_process"]]
    summary = {
        "criteria": {"max_wall_s": args.max_wall_s, "max_spread": args.max_spread,
                     "batch_sizes": args.batch_sizes, "backend": args.backend, "channels_last": True,
                     "img_size": args.img_size, "cudnn_benchmark": bench, "deploy": args.deploy},
        "imports_s": imports_s, "cuda_init_s": cuda_init_s, "warm_up_s": warm_up_s,
        "passed": sum(t["pass_wall"] and t["pass_spread"] for t in trials), "trials_n": len(trials),
        "max_wall_s": max(t["wall_s"] for t in trials),
        "max_wall_s_after_first": max((t["wall_s"] for t in later), default=None),
        "fingerprint": fp, "trials": trials,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from lowspace.io import atomic_write_json
    atomic_write_json(out / "harness_speed.json", summary)
    print(f"passed {summary['passed']}/{len(trials)}; max wall {summary['max_wall_s']:.2f}s "
          f"(after the first: {summary['max_wall_s_after_first'] or 0:.2f}s); CUDA init {cuda_init_s:.2f}s, "
          f"warm-up {warm_up_s:.2f}s, "
          f"imports {imports_s:.2f}s -> {out / 'harness_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
