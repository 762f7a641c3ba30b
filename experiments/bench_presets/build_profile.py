"""Where the build time of a never-seen architecture goes (the harness speed check's 5 s target), on the GPU.

For each random architecture of ``harness_speed.random_arch`` and each batch size, the steps of
``lowspace.runtime.prepare(..., backend="cuda_graph")`` are timed one by one: building the network, the first
eager forward (cuDNN autotuning of its new convolution shapes), the next two forwards, the graph capture and
the checked first replay. The first forward is also broken down per leaf module (synchronized hooks), so the
cost of each convolution's first call can be set against its shape and whether the process had seen that
shape before. Then ``measure()`` times the same architecture (its shapes now tuned), which shows the timing
and bookkeeping cost apart from the build.

cuDNN keeps its autotuning results per process, so each ``--variant`` is meant to run in its own process:

    python3 experiments/bench_presets/build_profile.py --variant default \
        --out experiments/bench_presets/results/build_profile
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

VARIANTS = {"default": True, "limit1": 1, "off": False}


def _conv_key(module, x, bs):
    import torch.nn as nn
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return (type(module).__name__, module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                module.groups, x.shape[-2], x.shape[-1], bs, str(x.dtype))
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features, module.out_features, tuple(x.shape[:-1]), str(x.dtype))
    return None


def profile_arch(cfg, bs, precision, seen, device):
    import torch
    from lowspace.runtime import autocast_context
    from lowspace.cost.spec import resolve_spec

    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    steps = {}
    t = time.perf_counter()
    model = resolve_spec(cfg).build(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(bs, 3, cfg.resolution, cfg.resolution, device=device).contiguous(
        memory_format=torch.channels_last)
    sync()
    steps["construct"] = time.perf_counter() - t
    amp = autocast_context(device, precision)

    # first forward with per-leaf-module timing
    per_module, marks = [], {}

    def pre(mod, inp):
        sync()
        marks[mod] = time.perf_counter()

    def post(mod, inp, out):
        sync()
        key = _conv_key(mod, inp[0], bs)
        per_module.append({"type": type(mod).__name__, "s": time.perf_counter() - marks.pop(mod),
                           "key": list(key) if key else None, "new": key is not None and key not in seen})
        if key is not None:
            seen.add(key)

    handles = []
    for m in model.modules():
        if not list(m.children()):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    t = time.perf_counter()
    with torch.cuda.stream(stream), torch.inference_mode(), amp:
        model(x)
    sync()
    steps["first_forward"] = time.perf_counter() - t
    for h in handles:
        h.remove()
    t = time.perf_counter()
    with torch.cuda.stream(stream), torch.inference_mode(), amp:
        for _ in range(2):
            out = model(x)
    sync()
    steps["forwards_2_3"] = time.perf_counter() - t
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    t = time.perf_counter()
    with torch.cuda.graph(graph), torch.inference_mode(), amp:
        static = model(x)
    sync()
    steps["capture"] = time.perf_counter() - t
    t = time.perf_counter()
    graph.replay()
    sync()
    (static.float() - out.float()).abs().max().item()
    steps["replay_check"] = time.perf_counter() - t

    by_type = defaultdict(lambda: [0, 0.0])
    for rec in per_module:
        kind = rec["type"] + (":new" if rec["new"] else (":seen" if rec["key"] else ""))
        by_type[kind][0] += 1
        by_type[kind][1] += rec["s"]
    slowest = sorted(per_module, key=lambda r: -r["s"])[:8]
    return {"steps": {k: round(v, 4) for k, v in steps.items()},
            "first_forward_by_type": {k: {"n": n, "s": round(s, 4)} for k, (n, s) in sorted(by_type.items())},
            "slowest_modules": [{**r, "s": round(r["s"], 4)} for r in slowest]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    ap.add_argument("--seeds", nargs="+", type=int, default=[20261124, 20261126, 20261130])
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 200])
    ap.add_argument("--tag", default="", help="suffix of the output file (e.g. for a run under other env vars)")
    args = ap.parse_args(argv)

    import torch
    from harness_speed import random_arch
    from lowspace.cost.measure import measure, warm_up

    device = torch.device("cuda")
    bench = VARIANTS[args.variant]
    torch.backends.cudnn.benchmark = bool(bench)
    if not isinstance(bench, bool):
        torch.backends.cudnn.benchmark_limit = bench
    t = time.perf_counter()
    warm_up(device, (args.precision,), tuple(args.batch_sizes))
    torch.backends.cudnn.benchmark = bool(bench)  # measure() restores the settings it found
    result = {"variant": args.variant, "tag": args.tag, "cudnn_benchmark": bench, "precision": args.precision,
              "warm_up_s": round(time.perf_counter() - t, 3), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "archs": []}
    seen: set = set()
    for seed in args.seeds:
        cfg = random_arch(seed)
        entry = {"arch": cfg.name, "batches": {}}
        for bs in args.batch_sizes:
            prof = profile_arch(cfg, bs, args.precision, seen, device)
            t = time.perf_counter()
            m = measure(cfg, device=device, batch_size=bs, precision=args.precision, channels_last=True,
                        backend="cuda_graph", cache=False, cudnn_benchmark=bench)
            prof["measure_again"] = {"wall_s": round(time.perf_counter() - t, 4), "build_s": round(m.build_s, 4),
                                     "median_ms": m.median_ms, "spread": m.spread, "chunks": len(m.chunks_ms),
                                     "iterations": m.iterations}
            entry["batches"][str(bs)] = prof
            steps = prof["steps"]
            print(f"{args.variant} {cfg.name} b{bs}: " + " ".join(f"{k} {v:.3f}" for k, v in steps.items())
                  + f" | again: wall {prof['measure_again']['wall_s']:.3f} build {m.build_s:.3f} "
                  f"median {m.median_ms:.4f} ms spread {m.spread:.2%}", flush=True)
            for kind, v in prof["first_forward_by_type"].items():
                if v["s"] > 0.05:
                    print(f"    {kind}: {v['n']} calls {v['s']:.3f} s", flush=True)
        result["archs"].append(entry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"build_profile_{args.variant}{args.tag}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
