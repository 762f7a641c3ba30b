"""Deploy-path benchmark: lowspace.deploy vs timm's LowFormer, side by side in one process on one GPU.

Two phases. (1) Warm: every compiled variant is built once in child processes, several at a time
(cold build time recorded; inductor's on-disk caches filled; max-autotune jobs under a time cap).
(2) Time: one process, one job after another, nothing else running: build again (from the warm cache),
check the output against the fp32 eval-mode model, time (CUDA events: median of 5 chunks after 15
warm-up calls; 20 calls a chunk at batch > 1, 100 at batch 1; spread = (max - min) / median), optionally
profile the kernels of a few forwards (count and time per kernel class), and build a second time in the
same process (lowspace's memory cache).

    python3 experiments/deploy_speed/bench.py --models b1 --batches 1,200 \
        --variants timm_graph,timm_compile,ours_graph,ours_tuned --profile b1:ours_tuned:200 --out OUT

Writes OUT/results.json (every row, the environment fingerprint) and OUT/results.md (ratio table).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name -> (implementation, backend, precision, deploy options)
VARIANTS = {
    # timm references (autocast, channels_last, cuDNN autotuning): the goal's two reference protocols (README.md)
    "timm_graph": ("timm", "cuda_graph", "fp16", {}),
    "timm_compile": ("timm", "compile", "bf16", {}),
    "timm_maxautotune": ("timm", "compile", "bf16", {"compile_mode": "max-autotune"}),
    # the strongest reference: timm's model compiled and captured in a CUDA graph, fp16 like ours
    "timm_compile_graph": ("timm", "compile_cuda_graph", "fp16", {}),
    # lowspace.deploy (triton and the eager variants' groupnorm pinned, so a variant means the same as in the
    # runs before their "auto" defaults)
    "ours_deploy": ("ours", "compile_cuda_graph", "fp16", {}),  # deploy()'s defaults: the deploy protocol
    "ours_graph": ("ours", "cuda_graph", "fp16", {"triton": False, "groupnorm": "native"}),
    "ours_graph_linear": ("ours", "cuda_graph", "fp16", {"triton": False, "groupnorm": "native", "conv1x1": "linear"}),
    "ours_graph_subpixel": ("ours", "cuda_graph", "fp16",
                            {"triton": False, "groupnorm": "native", "upsample": "subpixel"}),
    "ours_graph_triton": ("ours", "cuda_graph", "fp16", {"triton": True, "groupnorm": "native"}),
    "ours_compile": ("ours", "compile_cuda_graph", "fp16", {"triton": False, "compile_mode": "default"}),
    "ours_tuned": ("ours", "compile_cuda_graph", "fp16", {"triton": False, "compile_mode": "tuned"}),
    "ours_tuned_linear": ("ours", "compile_cuda_graph", "fp16",
                          {"triton": False, "compile_mode": "tuned", "conv1x1": "linear"}),
    "ours_tuned_triton": ("ours", "compile_cuda_graph", "fp16", {"compile_mode": "tuned", "triton": True}),
    "ours_tuned_subpixel": ("ours", "compile_cuda_graph", "fp16",
                            {"triton": False, "compile_mode": "tuned", "upsample": "subpixel"}),
    "ours_tuned_decomp": ("ours", "compile_cuda_graph", "fp16",
                          {"triton": False, "compile_mode": "tuned", "groupnorm": "decomposed"}),
    "ours_tuned_cdt": ("ours", "compile_cuda_graph", "fp16",
                       {"triton": False, "compile_mode": "tuned", "inductor": {"coordinate_descent_tuning": True}}),
    "ours_deploy_gncl": ("ours", "compile_cuda_graph", "fp16", {"groupnorm": "channels_last"}),
    # the (fused-)MBConv project conv with the previous conv's bias + activation and the residual: one kernel
    "ours_deploy_project": ("ours", "compile_cuda_graph", "fp16", {"triton_project": True}),
    # ... its tiles measured per GEMM shape while building (Triton's autotuner over the rule's tile and neighbours)
    "ours_deploy_project_tuned": ("ours", "compile_cuda_graph", "fp16", {"triton_project": "autotune"}),
    "ours_graph_gncl": ("ours", "cuda_graph", "fp16", {"groupnorm": "channels_last"}),
    "ours_autotune": ("ours", "compile_cuda_graph", "fp16", {"triton": False, "compile_mode": "tuned-autotune"}),
    # 1x1 convs as matmuls that inductor's autotuned GEMM templates may fuse with their epilogues
    "ours_autotune_linear": ("ours", "compile_cuda_graph", "fp16",
                             {"triton": False, "compile_mode": "tuned-autotune", "conv1x1": "linear"}),
    # ... and the k x k convs also as inductor's Triton conv templates where autotuning finds them faster, so
    # the activation and residual after a fused-MBConv's expand conv can run in the conv's epilogue
    "ours_autotune_conv": ("ours", "compile_cuda_graph", "fp16",
                           {"triton": False, "compile_mode": "tuned-autotune", "conv1x1": "linear",
                            "inductor": {"max_autotune_conv_backends": "TRITON,ATEN"}}),
    # inductor switches on the deploy defaults: one-kernel (cooperative) reductions for the GroupNorm
    # statistics instead of split reductions; independent small kernels launched as one (batch 1)
    "ours_deploy_coop": ("ours", "compile_cuda_graph", "fp16", {"inductor": {"triton.cooperative_reductions": True}}),
    "ours_deploy_combo": ("ours", "compile_cuda_graph", "fp16", {"inductor": {"combo_kernels": True}}),
    # each attention's depthwise projection and QKV conv as lowspace's Triton dw + QKV kernel
    "ours_deploy_attn": ("ours", "compile_cuda_graph", "fp16", {"triton_attention": True}),
    # every plain fused MBConv, and every MBConv on a map of at most 64 positions, as one Triton kernel
    "ours_deploy_chain": ("ours", "compile_cuda_graph", "fp16", {"triton_chain": True}),
    # Programmatic dependent launch (Hopper): inductor's Triton kernels let the next kernel start its launch
    # while they finish; on both sides, since a timm user can set the same inductor flag
    "ours_deploy_pdl": ("ours", "compile_cuda_graph", "fp16", {"inductor": {"triton.enable_pdl": True}}),
    "timm_compile_graph_pdl": ("timm", "compile_cuda_graph", "fp16", {"inductor": {"triton.enable_pdl": True}}),
    # every dense k x k conv as its shifted views stacked over channels and one matmul (convkxk="im2col")
    "ours_deploy_im2col": ("ours", "compile_cuda_graph", "fp16", {"convkxk": "im2col"}),
    # the stem's conv + bias + hardswish as lowspace's Triton stem kernel
    "ours_deploy_stem": ("ours", "compile_cuda_graph", "fp16", {"triton_stem": True}),
    # the switches that measured faster, together
    "ours_deploy_gncl_coop": ("ours", "compile_cuda_graph", "fp16",
                              {"groupnorm": "channels_last", "inductor": {"triton.cooperative_reductions": True}}),
    "ours_deploy_gncl_stem": ("ours", "compile_cuda_graph", "fp16",
                              {"groupnorm": "channels_last", "triton_stem": True}),
    "ours_fp32_graph": ("ours", "cuda_graph", "fp32", {"triton": False}),
}
# run in a child process under --cap seconds
CAPPED = {"timm_maxautotune", "ours_autotune", "ours_autotune_linear", "ours_autotune_conv"}
TOL = {"fp32": 2e-2, "fp16": 3e-2, "bf16": 8e-2}  # max |out - fp32 ref| / max |ref| (TF32 / half rounding)


# ----------------------------------------------------------------------------------------- models
def randomize_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics / norm affines, so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.randn(n, generator=g) * 0.1 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1 + 1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def make_model(impl: str, name: str):
    torch.manual_seed(0)
    if impl == "timm":
        import timm
        return randomize_norms(timm.create_model(f"lowformer_{name}")).eval()
    from lowspace import create_model
    return randomize_norms(create_model(name, init="torch")).eval()  # a preset name or a YAML path


def short(name: str) -> str:
    """Row label of a model: the preset name, or a YAML file's stem."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


# ----------------------------------------------------------------------------------------- timing
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_runner(runner, batch: int, warmup: int = 15, chunks: int = 5) -> dict:
    iters = 100 if batch == 1 else 20
    for _ in range(warmup):
        runner()
    sync()
    from lowspace.cost import chunk_ms
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times = [chunk_ms(runner, iters, device) for _ in range(chunks)]
    med = statistics.median(times)
    return {"ms": med, "img_s": batch * 1000.0 / med, "spread": (max(times) - min(times)) / med,
            "chunks_ms": times}


KERNEL_CLASSES = [  # first match wins
    ("triton_dwconv", r"_dw_kernel"),
    ("triton_template_mm", r"triton_tem"),
    ("triton_reduction", r"triton_(red|per)"),
    ("triton_pointwise", r"triton_poi"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("layout", r"nchwToNhwc|nhwcToNchw|transpose|permute"),
    ("conv_depthwise", r"depthwise|dwconv|conv_depthwise|c1_k1|grouped_direct"),
    ("conv_dgrad", r"dgrad"),
    ("conv", r"conv|fprop|implicit|cudnn"),
    ("gemm", r"gemm|cutlass|cublas|xmma|sm90_|nvjet"),
    ("norm", r"group_norm|layer_norm|GroupNorm|LayerNorm|Moments|welford"),
    ("copy_cast", r"Memcpy|Memset|copy|cast|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce_kernel"),
]


def classify(name: str) -> str:
    for cls, pat in KERNEL_CLASSES:
        if re.search(pat, name, re.IGNORECASE):
            return cls
    return "other"


def profile_runner(runner, iters: int = 5) -> dict:
    """Kernels per forward: count and GPU kernel time per class, and the top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    runner()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            runner()
        sync()
    per_class: dict[str, list] = {}
    per_name: dict[str, list] = {}
    for evt in prof.events():
        if evt.device_type != DeviceType.CUDA:
            continue
        us = evt.time_range.elapsed_us()
        cls = classify(evt.name)
        c = per_class.setdefault(cls, [0, 0.0])
        c[0] += 1
        c[1] += us
        n = per_name.setdefault(evt.name[:120], [0, 0.0, cls])
        n[0] += 1
        n[1] += us
    total_us = sum(v[1] for v in per_class.values()) / iters
    classes = {k: {"kernels": v[0] / iters, "us": v[1] / iters} for k, v in
               sorted(per_class.items(), key=lambda kv: -kv[1][1])}
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:25]
    return {"kernels_per_forward": sum(v[0] for v in per_class.values()) / iters, "device_us": total_us,
            "classes": classes,
            "top": [{"name": k, "calls": v[0] / iters, "us": v[1] / iters, "class": v[2]} for k, v in top]}


# ----------------------------------------------------------------------------------------- one job
def timm_inductor(options: dict):
    """The inductor settings of a timm variant (``options["inductor"]``) while its model is compiled."""
    if not options.get("inductor"):
        return nullcontext()
    from torch._inductor import config
    return config.patch(options["inductor"])


def run_job(model_name: str, variant: str, batch: int, resolution: int, do_profile: bool, device: str) -> dict:
    impl, backend, precision, options = VARIANTS[variant]
    row = {"model": short(model_name), "config": model_name, "implementation": impl, "variant": variant,
           "backend": backend,
           "precision": precision, "batch": batch, "resolution": resolution, "channels_last": True,
           "options": options, "status": "ok"}
    try:
        _job(row, model_name, batch, resolution, do_profile, device)
    except Exception as err:  # noqa: BLE001 - a failed variant is a row, not a crash
        row.update(status="error", error=f"{type(err).__name__}: {err}"[:2000],
                   traceback=traceback.format_exc()[-3000:])
        if "out of memory" in str(err).lower():
            row["status"] = "oom"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def _job(row: dict, model_name: str, batch: int, resolution: int, do_profile: bool, device: str) -> None:
    impl, backend, precision, options = VARIANTS[row["variant"]]
    if device == "cpu":
        backend = {"cuda_graph": "eager", "compile_cuda_graph": "compile"}.get(backend, backend)
        precision = "fp32"
        row.update(backend=backend, precision=precision)
    model = make_model(impl, model_name).to(device)
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device)
    with torch.inference_mode():
        ref = model(x).float()
    from torch._dynamo.utils import counters
    before = dict(counters["inductor"])
    t0 = time.perf_counter()
    if impl == "timm":
        from lowspace.runtime import prepare
        with timm_inductor(options):
            runner = prepare(model, x, backend, precision, channels_last=True,
                             compile_mode=options.get("compile_mode"))
        build_s = time.perf_counter() - t0
        info = dict(runner.info)
    else:
        from lowspace.runtime import clear_cache, deploy
        clear_cache()
        d = deploy(model, precision=precision, batch_size=batch, resolution=resolution, backend=backend,
                   device=device, **options)
        runner = d.runner()
        build_s = d.build_s
        info = {k: v for k, v in d.info.items() if k != "options"}
        # Second build of the same arch and protocol in this process (memory cache).
        t1 = time.perf_counter()
        deploy(model, precision=precision, batch_size=batch, resolution=resolution, backend=backend,
               device=device, **options)
        row["rebuild_s_memory"] = time.perf_counter() - t1
    row["inductor_counters"] = {k: v - before.get(k, 0) for k, v in counters["inductor"].items()
                                if "cache" in k and v - before.get(k, 0)}
    runner.input.copy_(x)
    with torch.inference_mode():
        out = runner().float()
    row["check_rel_err"] = ((out - ref).abs().max() / ref.abs().max()).item()
    row["check_ok"] = bool(torch.isfinite(out).all()) and row["check_rel_err"] <= TOL[precision]
    row["build_s"] = build_s
    row["info"] = info
    row.update(time_runner(runner, batch))
    if do_profile and device != "cpu":
        row["profile"] = profile_runner(runner)
        if row["profile"]["kernels_per_forward"] < 3 and impl == "ours":  # graph kernels not visible
            row["profile"] = profile_runner(d._core.uncaptured)
            row["profile"]["note"] = "profiled before graph capture"
    if impl == "ours":
        from lowspace.runtime import clear_cache
        clear_cache()


def warm_build(model_name: str, variant: str, batch: int, resolution: int, device: str) -> dict:
    """Build once (child process of the warm phase): fills inductor's on-disk caches; returns the cold build time."""
    impl, backend, precision, options = VARIANTS[variant]
    torch.backends.cudnn.benchmark = True
    model = make_model(impl, model_name).to(device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    t0 = time.perf_counter()
    if impl == "timm":
        from lowspace.runtime import prepare
        with timm_inductor(options):
            prepare(model, x, backend, precision, channels_last=True, compile_mode=options.get("compile_mode"))
    else:
        from lowspace.runtime import deploy
        # Same torch.compile call as compile_cuda_graph (same cache entries), without our graph capture.
        deploy(model, precision=precision, batch_size=batch, resolution=resolution, backend="compile", device=device,
               **options)
    sync()
    return {"build_s": time.perf_counter() - t0}


def warm_phase(jobs: list[tuple], resolution: int, device: str, parallel: int, cap: float, cap_autotune: float,
               tmpdir: Path) -> dict:
    """Run the cold builds of ``jobs`` ((model, variant, batch)) in child processes, ``parallel`` at a time."""
    results: dict[tuple, dict] = {}
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(max(1, (os.cpu_count() or 2) // max(1, parallel))))
    pending = list(jobs)
    running: list[tuple] = []
    t_start = time.perf_counter()
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            tag = "%s_%s_%d" % (short(job[0]), job[1], job[2])
            out = tmpdir / f"warm_{tag}.json"
            cmd = [sys.executable, __file__, "--warm-job", json.dumps([*job, resolution, device]),
                   "--job-out", str(out)]
            log = open(tmpdir / f"warm_{tag}.log", "w")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((job, proc, time.perf_counter(), out, log))
        time.sleep(0.5)
        for item in list(running):
            job, proc, t0, out, log = item
            limit = cap_autotune if job[1] in CAPPED else cap
            if proc.poll() is None and time.perf_counter() - t0 < limit:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                results[job] = {"status": "timeout", "error": f"build did not finish within {limit:.0f} s "
                                f"({parallel} builds at a time; killed)", "build_s": None}
            elif out.exists():
                results[job] = {"status": "ok", **json.loads(out.read_text())}
            else:
                results[job] = {"status": "error", "error": f"warm build exited with {proc.returncode}; see log"}
            log.close()
            running.remove(item)
            r = results[job]
            print(f"[warm {time.perf_counter() - t_start:5.0f}s] {short(job[0]):4s} b{job[2]:<4d} {job[1]:22s} "
                  f"{r['status']} {r.get('build_s') or 0:.1f}s {r.get('error', '')[:200]}", flush=True)
    return results


# ----------------------------------------------------------------------------------------- report
def fingerprint() -> dict:
    from lowspace.provenance import provenance
    fp = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(), "host": platform.node(), **provenance()}
    try:
        import timm
        fp["timm"] = timm.__version__
    except ImportError:
        pass
    try:
        import triton
        fp["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name()
        try:
            fp["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            pass
    return fp


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def markdown(rows: list[dict], env: dict) -> str:
    """Every row, then the goal ratios per model, then the kernel profiles."""
    lines = [f"# Deploy speed: {env.get('gpu', 'cpu')}, driver {env.get('driver', '-')}, torch {env.get('torch')}, "
             f"triton {env.get('triton', '-')}, timm {env.get('timm')}", "",
             "Measured side by side in one process, one job at a time. img/s at the batch shown, ms per batch "
             "(median of 5 chunks), spread = (max-min)/median. Build: cold = first build in a fresh process "
             "(N builds running at once in the warm phase, so an upper bound), cached = the same build again "
             "in a new process with inductor's on-disk cache warm, memory = a second deploy() of the same "
             "arch and protocol in the same process.", "",
             "| model | variant | backend | precision | batch | img/s | ms | spread | build cold s | cached s "
             "| memory s | max rel err |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | {r.get('backend')} | {r.get('precision')} | {r['batch']} "
                         f"| {r['status']} | | | | | | {str(r.get('error', ''))[:90]} |")
            continue
        cold = r.get("build_s_cold", r.get("build_s"))
        lines.append(f"| {r['model']} | {r['variant']} | {r['backend']} | {r['precision']} | {r['batch']} | "
                     f"{r['img_s']:,.0f} | {r['ms']:.3f} | {100 * r['spread']:.1f}% | {_fmt(cold, '.1f')} | "
                     f"{_fmt(r.get('build_s'), '.1f')} | {_fmt(r.get('rebuild_s_memory'), '.2f')} | "
                     f"{_fmt(r.get('check_rel_err'), '.1e')} |")
    lines += ["", "## Ours against both timm references (same run)", "",
              "Reference 1: timm eager captured in a CUDA graph. Reference 2 (the strongest a timm user has): timm "
              "compiled and captured (with inductor's programmatic dependent launch where that run is faster, "
              "marked PDL). Ratios: img/s ours / timm at batch > 1, latency ours / timm at batch 1. "
              "Goal (against reference 2): >= 1.3x at batch > 1, <= 0.6x at batch 1.", "",
              "| model | batch | timm eager + graph | timm compiled + graph | ours best | vs ref 1 | vs ref 2 | goal "
              "| ours build cold / cached s |",
              "|---|---:|---|---|---|---:|---:|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["model"] == model}, reverse=True):
            lines += _goal_line(rows, model, batch)
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        lines += ["", "## Kernel profiles (torch.profiler, per forward)", ""]
        for r in profiled:
            p = r["profile"]
            lines += [f"**{r['model']} {r['variant']} batch {r['batch']}**: {p['kernels_per_forward']:.0f} kernels, "
                      f"{p['device_us']:.0f} us of kernel time{' (' + p['note'] + ')' if p.get('note') else ''}", "",
                      "| class | kernels | us |", "|---|---:|---:|"]
            lines += [f"| {cls} | {v['kernels']:.0f} | {v['us']:.0f} |" for cls, v in p["classes"].items()]
            lines.append("")
    return "\n".join(lines) + "\n"


def _goal_line(rows: list[dict], model: str, batch: int) -> list[str]:
    """One line of the reference table: ours best against timm eager + graph and timm compiled + graph."""
    ok = [r for r in rows if r["model"] == model and r["batch"] == batch and r.get("status") == "ok"
          and r.get("check_ok", True)]
    by_variant = {r["variant"]: r for r in ok}
    ours = [r for r in ok if r["implementation"] == "ours"]
    if not ours:
        return []
    best = (max(ours, key=lambda r: r["img_s"]) if batch > 1 else min(ours, key=lambda r: r["ms"]))

    def cell(r):
        if r is None:
            return "-"
        return f"{r['img_s']:,.0f} img/s" if batch > 1 else f"{r['ms']:.3f} ms"

    def ratio(r):
        if r is None:
            return None
        return best["img_s"] / r["img_s"] if batch > 1 else best["ms"] / r["ms"]

    ref1 = by_variant.get("timm_graph")
    # reference 2: timm compiled and captured, with or without PDL, whichever is faster in this row
    compiled = [r for r in (by_variant.get("timm_compile_graph"), by_variant.get("timm_compile_graph_pdl")) if r]
    ref2 = (max(compiled, key=lambda r: r["img_s"]) if batch > 1 else min(compiled, key=lambda r: r["ms"])) \
        if compiled else None
    r1, r2 = ratio(ref1), ratio(ref2)
    goal = "-"
    if r2 is not None:
        met = r2 >= 1.3 if batch > 1 else r2 <= 0.6
        goal = f"{'>= 1.3x' if batch > 1 else '<= 0.6x'}: {'met' if met else 'missed'}"
    cold = best.get("build_s_cold", best.get("build_s"))
    pdl = " (PDL)" if ref2 is not None and ref2["variant"].endswith("_pdl") else ""
    return [f"| {model} | {batch} | {cell(ref1)} | {cell(ref2)}{pdl} | {best['variant']} {cell(best)} | "
            f"{_fmt(r1, '.2f')}x | {_fmt(r2, '.2f')}x | {goal} | "
            f"{_fmt(cold, '.1f')} / {_fmt(best.get('build_s'), '.1f')} |"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b1")
    ap.add_argument("--batches", default="200,1")
    ap.add_argument("--variants", default="timm_graph,timm_compile,ours_graph,ours_tuned")
    ap.add_argument("--only", default="", help="variants per model: 'b1:v1+v2@200;b3:v3' (v@B: batch B only; "
                    "models not named: --variants)")
    ap.add_argument("--profile", default="", help="model:variant:batch triples to profile (comma list)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--parallel", type=int, default=6, help="cold builds at a time in the warm phase (0: none)")
    ap.add_argument("--cap", type=float, default=300, help="seconds for one cold build")
    ap.add_argument("--cap-autotune", type=float, default=300, help="seconds for one cold max-autotune build")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="experiments/deploy_speed/out")
    ap.add_argument("--cache-dir", default="/tmp/lowspace_bench_cache")
    ap.add_argument("--micro", action="store_true", help="also time the Triton depthwise kernel vs cuDNN")
    ap.add_argument("--extra-models", default="", help="more models (YAML paths or a folder of them), timed with "
                    "--extra-variants at --extra-batches (protocol_tau.py uses this)")
    ap.add_argument("--extra-variants", default="ours_graph,ours_tuned")
    ap.add_argument("--extra-batches", default="200")
    ap.add_argument("--warm-job", help=argparse.SUPPRESS)
    ap.add_argument("--job-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # One inductor cache for every process (timm's compiles too), so phase 2 builds from it.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(args.cache_dir) / "inductor"))
    os.environ.setdefault("LOWSPACE_CACHE_DIR", args.cache_dir)
    if args.warm_job:
        Path(args.job_out).write_text(json.dumps(warm_build(*json.loads(args.warm_job))))
        return
    torch.backends.cudnn.benchmark = True  # for every row: the reference protocols autotune cuDNN (README.md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.cache_dir) / "jobs"
    work.mkdir(parents=True, exist_ok=True)
    env = fingerprint()
    print(json.dumps(env), flush=True)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    only = {}
    for part in filter(None, args.only.split(";")):
        m, vs = part.split(":")
        only[m] = vs.split("+")
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",")]
    jobs = []
    for m in models:
        for b in batches:
            for item in only.get(m, variants):  # "variant" or "variant@batch"
                v, _, at = item.partition("@")
                if v not in VARIANTS:
                    raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
                if not at or int(at) == b:
                    jobs.append((m, v, b))
    extra = []
    for item in filter(None, args.extra_models.split(",")):
        extra += sorted(map(str, Path(item).glob("*.yaml"))) if Path(item).is_dir() else [item]
    for v in args.extra_variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}")
    jobs += [(m, v, int(b)) for m in extra for b in args.extra_batches.split(",")
             for v in args.extra_variants.split(",")]
    profile = set(filter(None, args.profile.split(",")))
    t_start = time.perf_counter()
    if args.micro and args.device == "cuda":
        (out / "micro_dwconv.json").write_text(json.dumps(micro_dwconv(), indent=1))
    compiled = [j for j in jobs if "compile" in VARIANTS[j[1]][1]]
    compiled.sort(key=lambda j: j[1] not in CAPPED)  # the long (capped) builds start first
    warm = warm_phase(compiled, args.resolution, args.device, args.parallel, args.cap, args.cap_autotune, work) \
        if args.parallel > 0 and args.device == "cuda" else {}
    print(f"warm phase done at {time.perf_counter() - t_start:.0f}s", flush=True)
    wait_file = os.environ.get("BENCH_WAIT_FILE")  # something else still using the GPU (e.g. GPU tests)
    t_wait = time.perf_counter()
    while wait_file and os.path.exists(wait_file) and time.perf_counter() - t_wait < 180:
        time.sleep(1)
    rows = []
    for job in jobs:
        model_name, v, batch = job
        t0 = time.perf_counter()
        w = warm.get(job)
        if w is not None and w["status"] == "timeout":
            impl, backend, precision, options = VARIANTS[v]
            row = {"model": short(model_name), "implementation": impl, "variant": v, "backend": backend,
                   "precision": precision, "batch": batch, "resolution": args.resolution, "options": options,
                   "status": w["status"], "error": w.get("error")}
        else:
            row = run_job(model_name, v, batch, args.resolution, f"{model_name}:{v}:{batch}" in profile, args.device)
            if w is not None and w["status"] == "ok":
                row["build_s_cold"] = w["build_s"]
                row["build_s_cold_parallel"] = args.parallel
        row["env"] = env
        rows.append(row)
        build_s = row.get("build_s_cold") or row.get("build_s", 0)
        msg = (f"{row['img_s']:>9,.0f} img/s {row['ms']:8.3f} ms  build {build_s:6.1f}s"
               f" (cached {row.get('build_s', 0):5.1f}s) err {row.get('check_rel_err', 0):.1e}"
               if row.get("status") == "ok" else f"{row.get('status')}: {row.get('error', '')[:300]}")
        print(f"[{time.perf_counter() - t_start:6.0f}s] {short(model_name):4s} b{batch:<4d} {v:22s} {msg} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        (out / "results.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
        (out / "results.md").write_text(markdown(rows, env))
    print(markdown(rows, env))


def micro_dwconv() -> list[dict]:
    """Triton depthwise conv + bias + hardswish vs cuDNN conv + hardswish, fp16 channels_last."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    from lowspace.runtime._triton import _launch
    rows = []
    for n, c, h, k, s in [(200, 1024, 7, 3, 1), (200, 128, 14, 5, 2), (200, 256, 7, 3, 1), (200, 1024, 14, 3, 1),
                          (1, 1024, 7, 3, 1), (1, 128, 14, 5, 2), (200, 2048, 7, 3, 1)]:
        x = torch.randn(n, c, h, h, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, k, k, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        b = torch.randn(c, device="cuda", dtype=torch.float16)
        ref = F.hardswish(F.conv2d(x, w, b, s, k // 2, 1, c))
        y = _launch(x, w, b, s, k // 2, "hardswish")
        err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        t_cudnn = do_bench(lambda x=x, w=w, b=b, s=s, k=k, c=c: F.hardswish(F.conv2d(x, w, b, s, k // 2, 1, c)),
                           return_mode="median")
        t_tri = do_bench(lambda x=x, w=w, b=b, s=s, k=k: _launch(x, w, b, s, k // 2, "hardswish"),
                         return_mode="median")
        rows.append({"shape": [n, c, h, k, s], "cudnn_ms": t_cudnn, "triton_ms": t_tri, "err": err})
        print(f"dwconv {n}x{c}x{h}² k{k} s{s}: cudnn+act {t_cudnn * 1e3:.1f} us, triton {t_tri * 1e3:.1f} us, "
              f"err {err:.1e}", flush=True)
    return rows


if __name__ == "__main__":
    main()
