"""Training speed on one GPU: lowspace's training step vs timm's LowFormer trained eagerly, side by side in
one process, plus Fashion-MNIST proxy runs and class-folder loaders. Five parts, one per invocation (each well
under 5 minutes):

  a  proxy-size step: B1, 64 px, batch 512, 1000 classes. Baseline: timm lowformer_b1, eager, bf16 autocast,
     channels_last, fused AdamW, one static synthetic batch on the GPU.
     Ours: the same network (lowspace B1) fed by the GPU-resident loader (uint8 images, augmentation on the
     GPU) and trained by lowspace.train.step.TrainStep (eager / whole step in a CUDA graph), plus
     lowspace.train.train_proxy's own throughput. Goal: >= 4x timm eager.
  b  full-size step: B1, 224 px, batch 256: the same rows plus torch.compile variants. Goal: >= 1.3x.
  c  one Fashion-MNIST epoch (60k images) at 64 px with B0 through train_proxy. Goal: <= 2 s.
  d  B0 trained on Fashion-MNIST with the full proxy schedule (FULL_SCHEDULE below): the accuracy curve.
  e  class-folder training of B1 at 224 px, batch 256 (the B1 recipe's loss, mixup / cutmix, RandAugment), one
     step (torch.compile + CUDA graph by default) fed several ways: the CPU loader (PIL + timm transforms in
     --cpu-workers DataLoader workers), the GPU loader (decode_jpeg + augmentation on the GPU) in one process
     and in --loader-processes processes (resampling by matrix products, and by the taps kernel) and
     GPU-resident uint8 tensors (the upper bound), on --images synthetic JPEGs (400-560 px, about 74 KB,
     100 classes, written by all cores and reused). Goals: GPU loader >= 2.5x the CPU loader, within 15 % of
     resident; projects the ImageNet-1k epoch and the 320-epoch recipe on one GPU from the measured rates.

Timing: CUDA events around 5 chunks of --per-chunk steps after --warmup steps (graph capture and
compilation happen in the warm-up); img/s = batch / median step time; spread = (max - min) / median of the
chunk times. Ours includes what the proxy really does each step (the loader's gather + augmentation, the lr
update, gradient clipping by value); timm's baseline does none of it.

    PYTHONPATH=. python3 experiments/train_speed/bench_train.py --part a --out OUT/a
    (see README.md for all five commands)

Parts a and c run on the current training API (the proxy recipe, torch's LambdaLR) and on the one before
the training engine was unified (ProxySchedule, set_lr), so two commits can be measured side by side.

Writes OUT/part_<x>.json (rows, ratios, environment) and OUT/part_<x>.md; part d also writes
OUT/curve.csv / curve.json (render_curve.py draws it; no GPU needed).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Part d's schedule ("the full proxy schedule"): 30 epochs at 64 px, batch 256, AdamW lr 2e-3 (1 warmup
# epoch, cosine to 0), weight decay 0.05, label smoothing 0.1, flip + 12.5% translation, BN re-estimated on
# 2048 training images before every evaluation of the full 10k test set. The search's default (the proxy
# recipe) is the same at 10 epochs; part d runs both.
FULL_SCHEDULE = dict(epochs=30, resolution=64, batch_size=256, lr=2e-3, warmup_epochs=1.0)
DEFAULT_SCHEDULE = dict(epochs=10, resolution=64, batch_size=256)
DEVICE = "cuda"  # --smoke on a machine without a GPU runs everything small on the CPU (a check of this script)
PRECISION = "bf16"  # fp32 in a CPU smoke run


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def environment() -> dict:
    from lowspace.provenance import provenance
    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version(), host=platform.node(), **provenance())
    try:
        import timm
        env["timm"] = timm.__version__
    except ImportError:
        env["timm"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
        # with_mps.sh runs the command as a client of a CUDA MPS server: kernels of the loader processes and the
        # training process then share the GPU at once instead of taking turns
        env["cuda_mps"] = bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
    return env


def measure(step, batch: int, warmup: int, chunks: int, per_chunk: int) -> dict:
    """Run ``step`` warmup times, then time ``chunks`` x ``per_chunk`` calls with CUDA events."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    from lowspace.cost import chunk_ms
    wall0 = time.perf_counter()
    times = [chunk_ms(step, per_chunk, DEVICE) for _ in range(chunks)]
    wall = (time.perf_counter() - wall0) / (chunks * per_chunk)
    med = statistics.median(times)
    return dict(ms_per_step=med, images_per_s=batch / med * 1000, spread=(max(times) - min(times)) / med,
                wall_ms_per_step=wall * 1000, warmup_s=warm_s, chunks_ms=times)


# ------------------------------------------------------------------------------------------ either API
def proxy_schedule(epochs: int, resolution: int, batch_size: int, lr: float | None = None, **fields):
    """A proxy schedule for train_proxy: recipe fields now, a ProxySchedule before the engine was unified."""
    try:
        from lowspace.train import ProxySchedule
    except ImportError:
        spec = dict(epochs=epochs, resolutions=[resolution], batch_size=batch_size, **fields)
        return spec if lr is None else dict(spec, base_lr=lr)
    spec = dict(epochs=epochs, resolution=resolution, batch_size=batch_size, **fields)
    return ProxySchedule(**(spec if lr is None else dict(spec, lr=lr)))


def schedule_fields(schedule) -> dict:
    return schedule.to_dict() if hasattr(schedule, "to_dict") else dict(schedule)


def lr_update(optimizer):
    """The training engine's per-step learning-rate update: torch's LambdaLR now, set_lr before."""
    try:
        from lowspace.train.optim import StepClock, create_scheduler
    except ImportError:
        from lowspace.train.optim import set_lr
        return lambda: set_lr(optimizer, 1e-3)
    return create_scheduler(optimizer, StepClock(10**9, 1, 0.0), 1e-3).step


# ------------------------------------------------------------------------------------------ step makers
def timm_step(name: str, batch: int, res: int, graph: bool = False):
    """timm's model trained eagerly on one static batch (the baseline), or through our graph step."""
    import timm
    from lowspace.train.optim import create_optimizer
    from lowspace.train.step import TrainStep
    model = timm.create_model(name, num_classes=1000).to(DEVICE).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=DEVICE)
    if not graph:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return step, {}
    opt = create_optimizer(model, 1e-3, 0.05, capturable=True)
    train_step = TrainStep(model, opt, lambda logits, t, _: F.cross_entropy(logits.float(), t),
                           precision=PRECISION, cuda_graph=True)

    def graph_step():
        train_step([(x, y)])
    return graph_step, train_step.info


def ours_step(preset: str, batch: int, res: int, mode: str, fast_gn: bool = False, n_images: int = 0):
    """lowspace's model, GPU-resident loader and TrainStep. mode: eager | graph | compile | compile_graph."""
    from lowspace.arch import create_model
    from lowspace.data import Augment, BatchPlan, TensorLoader, TensorSplit
    from lowspace.arch.blocks import use_groupnorm_mode
    from lowspace.train.optim import create_optimizer
    from lowspace.train.step import TrainStep
    graph = mode in ("graph", "compile_graph")
    model = create_model(preset, num_classes=1000).to(DEVICE).to(memory_format=torch.channels_last).train()
    if fast_gn:
        use_groupnorm_mode(model, "channels_last")
    n_images = n_images or batch * (64 if res <= 64 else 16)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, res, res), dtype=torch.uint8, device=DEVICE, generator=g)
    split = TensorSplit(images, torch.randint(0, 1000, (n_images,), device=DEVICE, generator=g))
    loader = TensorLoader(split, BatchPlan(n_images, batch, seed=0), DEVICE, res, (0.5,) * 3, (0.25,) * 3,
                          augment=Augment(hflip=0.5, translate=0.125), out_chans=3, channels_last=True)
    opt = create_optimizer(model, 1e-3, 0.05, capturable=graph)
    net = torch.compile(model) if mode.startswith("compile") else model
    train_step = TrainStep(model, opt, lambda logits, t, _: F.cross_entropy(logits.float(), t, label_smoothing=0.1),
                           net=net, precision=PRECISION, clip_value=2.0, cuda_graph=graph)
    update_lr = lr_update(opt)

    it = endless(loader)

    def step():
        x, y = next(it)
        train_step([(x, y)])
        update_lr()
    return step, train_step.info


def proxy_api_row(preset: str, batch: int, res: int, n_images: int, epochs: int = 3) -> dict:
    """train_proxy's own throughput (GPU data, graph step, eval graph) on synthetic 3-channel data."""
    from lowspace.data import ImageData, TensorSplit
    from lowspace.train import train_proxy
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, res, res), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 1000, (n_images,), generator=g)
    val = TensorSplit(images[:2048].clone(), labels[:2048].clone())
    data = ImageData("synthetic-1000", tuple(f"c{i}" for i in range(1000)), TensorSplit(images, labels), val,
                     in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3, native_resolution=res)
    result = train_proxy(preset, data, proxy_schedule(epochs, res, batch), DEVICE)
    steady = [r["images_per_s"] for r in result.history[1:]] or [result.images_per_s]
    return dict(images_per_s=statistics.median(steady), epoch_s=[r["epoch_s"] for r in result.history],
                cuda_graph=result.info["cuda_graph"], graph_checks=result.info["graph_checks"],
                capture_s=result.info["capture_s"], eval_s=result.info["eval_s"])


def cleanup():
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_variants(variants: list[tuple[str, callable]], batch: int, args, profile: set[str], out: Path,
                 part: str) -> list[dict]:
    rows = []
    for name, make in variants:
        row: dict = dict(variant=name, batch=batch)
        print(f"[{part}] {name} ...", flush=True)
        try:
            cleanup()
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step, info = make()
            row["build_s"] = time.perf_counter() - t0
            row.update(measure(step, batch, args.warmup, args.chunks, args.per_chunk))
            if DEVICE == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["info"] = {k: v for k, v in info.items() if k in ("cuda_graph", "graph_checks", "capture_s")}
            if name in profile:
                row["profile"] = str(profile_steps(step, out / f"profile_{part}_{name}.txt"))
            del step
        except Exception as err:  # noqa: BLE001 - one failing variant must not lose the others
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()[-3000:]
        print(f"[{part}] {name}: {row.get('images_per_s', 0):,.0f} img/s {row.get('error', '')}", flush=True)
        rows.append(row)
    cleanup()
    return rows


def profile_steps(step, path: Path, steps: int = 5) -> Path:
    from torch.profiler import ProfilerActivity, profile
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    sort = "cuda_time_total" if DEVICE == "cuda" else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=60))
    return path


def add_ratios(rows: list[dict], baseline: str = "timm_eager") -> None:
    base = next((r.get("images_per_s") for r in rows if r["variant"] == baseline), None)
    for r in rows:
        if base and r.get("images_per_s"):
            r["vs_timm_eager"] = r["images_per_s"] / base


def write(out: Path, part: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"part_{part}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# Part {part}: {payload['title']}", "", f"Goal: {payload['goal']}", ""]
    if payload.get("rows"):
        ratio_key, ratio_label = payload.get("ratio_column", ("vs_timm_eager", "vs timm eager"))
        lines += [f"| variant | img/s | ms/step | spread | {ratio_label} | peak GiB | note |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in payload["rows"]:
            note = r.get("error") or r.get("note") or (r.get("info") or {}).get("cuda_graph", "")
            lines.append(f"| {r['variant']} | {r.get('images_per_s', 0):,.0f} | {r.get('ms_per_step', 0):.2f} | "
                         f"{100 * r.get('spread', 0):.1f}% | {r.get(ratio_key, 0):.2f}x | "
                         f"{r.get('peak_mem_gib', 0):.1f} | {str(note)[:80]} |")
    for key in ("results", "summary"):
        if payload.get(key):
            lines += ["", "```", json.dumps(payload[key], indent=2, default=str), "```"]
    lines += ["", "Environment: " + json.dumps(payload["env"])]
    (out / f"part_{part}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------ parts
def part_step(args, part: str, res: int, batch: int) -> dict:
    preset = args.preset
    variants = [
        ("timm_eager", lambda: timm_step(f"lowformer_{preset}", batch, res)),
        ("ours_eager", lambda: ours_step(preset, batch, res, "eager")),
        ("timm_graph", lambda: timm_step(f"lowformer_{preset}", batch, res, graph=True)),
        ("ours_graph", lambda: ours_step(preset, batch, res, "graph")),
        ("ours_graph_fastgn", lambda: ours_step(preset, batch, res, "graph", fast_gn=True)),
    ]
    if (part == "b" or args.compile) and not args.smoke:
        variants += [
            ("ours_compile", lambda: ours_step(preset, batch, res, "compile")),
            ("ours_compile_graph", lambda: ours_step(preset, batch, res, "compile_graph")),
        ]
    rows = run_variants(variants, batch, args, set(args.profile), args.out, part)
    if part == "a" and not args.skip_proxy_api:
        print(f"[{part}] proxy_api ...", flush=True)
        try:
            cleanup()
            row = dict(variant="proxy_api", batch=batch, **proxy_api_row(preset, batch, res, n_images=batch * 32,
                                                                         epochs=2 if args.smoke else 3))
        except Exception as err:  # noqa: BLE001
            row = dict(variant="proxy_api", batch=batch, error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-3000:])
        rows.append(row)
    add_ratios(rows)
    best = max((r for r in rows if r["variant"] != "timm_eager" and r.get("images_per_s")),
               key=lambda r: r["images_per_s"], default=None)
    goal = ">= 4x timm eager" if part == "a" else ">= 1.3x timm eager"
    return dict(part=part, title=f"training step, {preset.upper()}, {res} px, batch {batch}", goal=goal,
                rows=rows,
                summary=dict(best=best and best["variant"], best_vs_timm_eager=best and best.get("vs_timm_eager")),
                protocol=dict(warmup=args.warmup, chunks=args.chunks, per_chunk=args.per_chunk, precision="bf16",
                              channels_last=True, optimizer="AdamW (timm: fused; ours: fused + capturable in graphs)"),
                env=environment())


def fashion_mnist(args):
    from lowspace.data import get_dataset
    roots = [args.fmnist_root, os.environ.get("LOWSPACE_FASHION_MNIST"), "/usr/share/datasets/fashion-mnist",
             str(ROOT / ".fmnist")]
    for root in [r for r in roots if r]:
        if Path(root, "train-images-idx3-ubyte.gz").is_file() or Path(root, "train-images-idx3-ubyte").is_file():
            return get_dataset("fashion_mnist", root=root)
    raise SystemExit("Fashion-MNIST IDX files not found; pass --fmnist-root DIR (looked in " + ", ".join(
        r for r in roots if r) + ")")


def part_c(args) -> dict:
    from lowspace.train import train_proxy
    data = fashion_mnist(args)
    if args.smoke:
        data = data.subset(train_per_class=20, val_per_class=10)
    rows = []
    for batch in (256, 512):
        for fast_gn in (False, True):
            schedule = proxy_schedule(3, 32 if args.smoke else 64, batch, fast_groupnorm=fast_gn)
            print(f"[c] B0 batch {batch} fast_gn={fast_gn} ...", flush=True)
            try:
                cleanup()
                r = train_proxy("b0", data, schedule, DEVICE)
                epochs = r.history
                rows.append(dict(batch=batch, fast_groupnorm=fast_gn, epoch_train_s=[e["epoch_s"] for e in epochs],
                                 steady_epoch_train_s=min(e["epoch_s"] for e in epochs[1:]),
                                 epoch_wall_s=[epochs[0]["elapsed_s"]] + [b["elapsed_s"] - a["elapsed_s"]
                                                                          for a, b in zip(epochs, epochs[1:])],
                                 images_per_epoch=r.info["train_images"] // len(epochs), top1=r.top1,
                                 capture_s=r.info["capture_s"], eval_s=r.info["eval_s"], setup_s=r.info["setup_s"],
                                 cuda_graph=r.info["cuda_graph"], graph_checks=r.info["graph_checks"]))
            except Exception as err:  # noqa: BLE001
                rows.append(dict(batch=batch, fast_groupnorm=fast_gn, error=f"{type(err).__name__}: {err}",
                                 traceback=traceback.format_exc()[-3000:]))
            print(json.dumps(rows[-1], default=str)[:400], flush=True)
    ok = [r for r in rows if "steady_epoch_train_s" in r]
    summary = dict(best_epoch_train_s=min((r["steady_epoch_train_s"] for r in ok), default=None))
    return dict(part="c", title="one Fashion-MNIST epoch (60k images), B0, 64 px, train_proxy", goal="<= 2 s",
                rows=[], results=rows, summary=summary, env=environment(),
                note="epoch_train_s: training steps only (graph capture excluded, reported as capture_s); "
                     "epoch_wall_s adds BN re-estimation and evaluation of the 10k test images")


def part_d(args) -> dict:
    import csv
    from lowspace.train import train_proxy
    data = fashion_mnist(args)
    if args.smoke:
        data = data.subset(train_per_class=20, val_per_class=10)
    out: dict = dict(part="d", title="B0 on Fashion-MNIST with the full proxy schedule", goal="accuracy curve",
                     rows=[], env=environment(), schedules={})
    curves = []
    for label, spec in (("full", FULL_SCHEDULE), ("default", DEFAULT_SCHEDULE)):
        if args.smoke:
            spec = dict(spec, epochs=2, resolution=32, batch_size=64)
        schedule = proxy_schedule(**spec)
        print(f"[d] {label}: {schedule_fields(schedule)}", flush=True)

        def on_epoch(epoch, m, label=label):
            print(f"[d] {label} epoch {epoch}: top1 {m['top1']:.2f} loss {m['train_loss']:.4f} "
                  f"{m['images_per_s']:,.0f} img/s", flush=True)
            return False
        cleanup()
        r = train_proxy("b0", data, schedule, DEVICE, on_epoch=on_epoch)
        out["schedules"][label] = dict(schedule=schedule_fields(schedule), top1=r.top1, top5=r.top5,
                                       best_top1=r.best_top1,
                                       train_s=r.train_s, total_s=r.info["total_s"], images_per_s=r.images_per_s,
                                       info={k: v for k, v in r.info.items() if k != "graph_checks"})
        curves += [dict(schedule=label, **row) for row in r.history]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(curves, indent=2) + "\n")
    with open(args.out / "curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(curves[0]))
        writer.writeheader()
        writer.writerows(curves)
    out["summary"] = {k: dict(top1=v["top1"], best_top1=v["best_top1"], total_s=v["total_s"])
                      for k, v in out["schedules"].items()}
    return out


# ------------------------------------------------------------------------------------------ part e
IMAGENET_TRAIN = 1_281_167
RECIPE_EPOCHS = 320
JPEG_STYLE = dict(coarse=48, noise=7.0, quality=88)  # about 74 KB at 400-560 px


def _write_jpegs(job: tuple) -> list[int]:
    """Write images ``start..stop`` of the synthetic folder (run in a worker process); their sizes."""
    import numpy as np
    from PIL import Image
    start, stop, root, classes, lo, hi = job
    sizes = []
    for i in range(start, stop):
        rng = np.random.default_rng([7, i])
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        coarse = rng.integers(0, 256, (JPEG_STYLE["coarse"],) * 2 + (3,), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        image += rng.normal(0.0, JPEG_STYLE["noise"], image.shape).astype(np.int16)
        split = "val" if (i // classes) % 50 == 1 else "train"  # 2 % in val/: a complete class-folder root
        path = Path(root, split, f"c{i % classes:03d}", f"{i:06d}.jpg")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=JPEG_STYLE["quality"])
        sizes.append(path.stat().st_size)
    return sizes


def jpeg_folder(root: Path, n: int, classes: int, sides: tuple[int, int], workers: int) -> dict:
    """A class-folder root of ``n`` synthetic JPEGs (reused when ``root/jpegs.json`` says it has the same
    spec), written by ``workers`` processes; what was written and how long it took."""
    import multiprocessing
    import shutil
    spec = dict(images=n, classes=classes, sides=list(sides), style=JPEG_STYLE, version=1)
    marker = root / "jpegs.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("spec") == spec:
            return dict(info, reused=True)
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = max(1, n // (workers * 4))
    jobs = [(a, min(n, a + step), str(root), classes, *sides) for a in range(0, n, step)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # before any CUDA use in this process
        sizes = [size for chunk in pool.map(_write_jpegs, jobs) for size in chunk]
    info = dict(spec=spec, mean_kb=statistics.mean(sizes) / 1000, total_mb=sum(sizes) / 1e6,
                seconds=time.perf_counter() - t0, workers=workers)
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return dict(info, reused=False)


def _loader_feeds(data, recipe, batch: int, res: int, args) -> list[tuple[str, callable]]:
    """(name, make) of the data feeds: make() -> (loader, note)."""
    from lowspace.data import (Augment, BatchPlan, DeviceFolderLoader, DeviceTrainTransform, FolderLoader,
                               TensorLoader, TensorSplit, train_transforms)
    tf_args = (data.mean, data.std, recipe.randaugment, recipe.reprob, recipe.interpolation, recipe.scale,
               recipe.ratio, recipe.hflip)
    plan = BatchPlan(len(data.train), batch, seed=0)

    def resident():
        n = min(len(data.train), batch * 16)
        g = torch.Generator(device=DEVICE).manual_seed(0)
        images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, device=DEVICE, generator=g)
        split = TensorSplit(images, torch.randint(0, data.num_classes, (n,), device=DEVICE, generator=g))
        aug = Augment(hflip=recipe.hflip, scale=tuple(recipe.scale), ratio=tuple(recipe.ratio))
        return TensorLoader(split, BatchPlan(n, batch, seed=0), DEVICE, res, data.mean, data.std, augment=aug,
                            out_chans=3, channels_last=True), "uint8 images already on the GPU, crop + flip there"

    def gpu(processes: int = 1, kernel: str = "matmul"):
        where = f", in {processes} processes sharing them" if processes > 1 else ""
        from lowspace.data._resample_kernel import available
        how = "" if kernel == "matmul" else ", resampling by the taps kernel" if available(DEVICE) else \
            ", taps kernel requested but unavailable here (no Triton on this device): matrix form"
        transform = DeviceTrainTransform(*tf_args, resample_kernel=kernel)
        return (DeviceFolderLoader(data.train, plan, DEVICE, res, transform, workers=args.read_threads,
                                   channels_last=True, processes=processes),
                f"decode_jpeg on {DEVICE}, augmentation on {DEVICE}{how}, {args.read_threads} read threads{where}")

    def cpu():
        return (FolderLoader(data.train, plan, DEVICE, res, train_transforms(*tf_args), workers=args.cpu_workers,
                             channels_last=True), f"PIL + timm transforms in {args.cpu_workers} DataLoader workers")
    makers = dict(resident=resident, gpu_loader=gpu, cpu_loader=cpu)
    if args.loader_processes > 1:
        makers.update(gpu_loader_processes=lambda: gpu(args.loader_processes),
                      gpu_loader_processes_taps=lambda: gpu(args.loader_processes, "taps"))
    return [(name, makers[name]) for name in FEEDS if name in makers and (not args.feeds or name in args.feeds)]


FEEDS = ("resident", "gpu_loader", "gpu_loader_processes", "gpu_loader_processes_taps", "cpu_loader")  # in run order


def _timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def _read_all(pool, samples, indices, parts):
    from lowspace.data.gpu_decode import read_in_parts
    return [s for f in read_in_parts(pool, samples, indices, parts) for s in f.result()]


def _overlap(loader, batches, pool) -> dict:
    """Decoding and the train transform of ``batches`` in two threads at once, as the loader's producer
    overlaps them, against each alone (the files read beforehand, untimed): ``serialized`` is 0 when both
    together take as long as the slower one alone and 1 when they take the sum of both (the GIL or a
    synchronization lets only one of them run at a time). ``*_cpu_ms_per_batch`` is each thread's own CPU
    time: near its wall time the stage keeps a core busy, far below it the stage waits (on the device, the
    JPEG engine, a lock); a thread whose wall time grows together while its CPU time does not was kept
    waiting by the other."""
    def fresh():
        return [_read_all(pool, loader.samples, b.indices, loader.workers) for b in batches]

    def decode_all(reads):  # _timed and the pair below synchronize the device after
        t0 = time.thread_time()
        for r in reads:
            loader.decode(r)
        return time.thread_time() - t0

    def transform_all(decoded):
        t0 = time.thread_time()
        for b, d in zip(batches, decoded):
            loader.finish(b, d)
        return time.thread_time() - t0
    inputs = [loader.decode(r) for r in fresh()]  # the transform's input, decoded once
    sync()  # ... and finished before anything is timed
    reads = fresh()
    cpu_decode, t_decode = _timed(lambda: decode_all(reads))
    cpu_transform, t_transform = _timed(lambda: transform_all(inputs))
    reads = fresh()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as both:
        jobs = [both.submit(decode_all, reads), both.submit(transform_all, inputs)]
        cpu_decode_both, cpu_transform_both = (job.result() for job in jobs)
    sync()
    t_both = time.perf_counter() - t0
    fast, slow = sorted((t_decode, t_transform))
    n = max(1, len(batches))

    def ms(seconds):
        return 1000 * seconds / n
    return dict(batches=len(batches), decode_ms_per_batch=ms(t_decode), transform_ms_per_batch=ms(t_transform),
                both_ms_per_batch=ms(t_both), serialized=(t_both - slow) / fast if fast > 0 else None,
                decode_cpu_ms_per_batch=ms(cpu_decode), transform_cpu_ms_per_batch=ms(cpu_transform),
                both_decode_cpu_ms_per_batch=ms(cpu_decode_both),
                both_transform_cpu_ms_per_batch=ms(cpu_transform_both))


def _transform_profile(loader, batches, pool, rows: int = 20) -> dict:
    """The operators that take the train transform's host time: torch.profiler over ``batches`` (read and
    decoded first, outside the profile), the top ``rows`` by host (self CPU) time, per batch, and the host
    time of all operators (the rest of the transform's host time is Python); ``gpu_work_ms_per_batch``: the
    GPU time of decoding and of the transform per batch, which training shares the GPU with."""
    from torch.profiler import ProfilerActivity, profile
    reads = [_read_all(pool, loader.samples, b.indices, loader.workers) for b in batches]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as decode_prof:
        ready = [(b, loader.decode(read)) for b, read in zip(batches, reads)]
        sync()
    with profile(activities=activities) as prof:
        for b, decoded in ready:
            loader.finish(b, decoded)
        sync()
    n = max(len(ready), 1)
    gpu_ms = {name: _kernel_ms(p) / n for name, p in (("decode", decode_prof), ("transform", prof))}
    breakdown = _transform_breakdown(loader, ready)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    top = [dict(op=e.key, calls_per_batch=e.count / n, self_cpu_ms_per_batch=e.self_cpu_time_total / 1000 / n,
                device_ms_per_batch=getattr(e, "self_device_time_total", 0) / 1000 / n) for e in events[:rows]]
    on_device = sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:rows]
    top_device = [dict(op=e.key, calls_per_batch=e.count / n,
                       device_ms_per_batch=getattr(e, "self_device_time_total", 0) / 1000 / n) for e in on_device]
    return dict(operators_self_cpu_ms_per_batch=sum(e.self_cpu_time_total for e in events) / 1000 / n,
                operator_calls_per_batch=sum(e.count for e in events) / n, top=top, top_device=top_device,
                gpu_work_ms_per_batch=gpu_ms, **breakdown)


def _kernel_ms(prof) -> float:
    """GPU time of a profile's device events (kernels and copies), in ms; 0 without a GPU."""
    from torch.autograd import DeviceType
    return sum(e.self_device_time_total for e in prof.key_averages()
               if getattr(e, "device_type", None) == DeviceType.CUDA) / 1000


_TIMED_STEPS = ("_axis_params", "to_device", "tap_weights", "dense_weights", "_pass", "resample", "uniforms",
                "crop_boxes")
_TIMED_METHODS = (("_Flat", "__init__"), ("_Flat", "crops"), ("PassWeights", "passes"),
                  ("DeviceRandAugment", "__call__"), ("_Normalize", "__call__"))


def _transform_breakdown(loader, ready, rows: int = 15) -> dict:
    """Where the transform's time goes, two ways, over ``ready`` (``(batch, decoded samples)`` pairs):

    * ``steps_ms_per_batch``: the transform's steps (functions of ``lowspace.data.gpu_augment``, RandAugment
      and the normalization), each timed with the GPU synchronized before and after: its host plus
      GPU time, nested steps inside their callers' time;
    * ``host_python_top``: cProfile of the unsynchronized transform, the functions with the most own host
      time (a torch call that waits for the device shows its wait here)."""
    import cProfile
    import pstats
    from functools import partial
    from lowspace.data import gpu_augment as ga
    totals: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()  # the step's own time only: nothing queued before it
            out, seconds = _timed(partial(fn, *a, **k))
            totals[name] = totals.get(name, 0.0) + seconds
            return out
        return wrapper

    sync()
    patched = [(ga, name, getattr(ga, name)) for name in _TIMED_STEPS if hasattr(ga, name)]
    patched += [(getattr(ga, cls), name, getattr(getattr(ga, cls), name)) for cls, name in _TIMED_METHODS
                if hasattr(ga, cls)]
    try:
        for owner, name, fn in patched:
            label = name if owner is ga else f"{owner.__name__}.{name}"
            setattr(owner, name, timed(label, fn))
        for b, decoded in ready:
            timed("finish (all)", loader.finish)(b, decoded)
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)
    n = max(len(ready), 1)
    prof = cProfile.Profile()
    prof.enable()
    for b, decoded in ready:
        loader.finish(b, decoded)
    prof.disable()
    sync()
    stats = pstats.Stats(prof).stats
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:rows]
    return dict(steps_ms_per_batch={k: 1000 * v / n for k, v in totals.items()},
                host_python_top=[dict(function=f"{Path(f).name}:{line}({fn})", calls_per_batch=v[1] / n,
                                      own_ms_per_batch=1000 * v[2] / n, total_ms_per_batch=1000 * v[3] / n)
                                 for (f, line, fn), v in top])


def loader_stages(data, recipe, batch: int, res: int, args) -> dict:
    """The GPU loader's stages alone, without training, on ``--stage-batches`` micro-batches (after 2 for
    warm-up): img/s of (a) reading the files (the loader's threads), (b) reading + one batched decode_jpeg
    on the device, (c) (b) + the train transform, (d) the loader's own iterator (reads, decoding and the
    transform overlapped in its threads); per stage the time of decode and transform alone, and the host
    time of the transform (until its kernels are launched: close to its total means it is bound by Python
    and launches, not by the GPU); (e) decode_jpeg on the CPU in the same number of threads (libjpeg-turbo),
    for comparison; (f) the transform's profile; (g) decoding and the transform in two threads at once
    (:func:`_overlap`)."""
    from lowspace.data import BatchPlan, DeviceFolderLoader, DeviceTrainTransform
    from lowspace.data.gpu_decode import read_sample
    from functools import partial
    tf = DeviceTrainTransform(data.mean, data.std, recipe.randaugment, recipe.reprob, recipe.interpolation,
                              recipe.scale, recipe.ratio, recipe.hflip)
    loader = DeviceFolderLoader(data.train, BatchPlan(len(data.train), batch, seed=0), DEVICE, res, tf,
                                workers=args.read_threads, channels_last=True)
    batches = list(loader.batches(0))
    count = min(args.stage_batches + 2, len(batches))
    phases: dict[str, list[float]] = {k: [] for k in ("read", "decode", "transform", "transform_host")}
    computed_each: list[int] = []  # pass weights computed (not found stored) per timed batch
    with ThreadPoolExecutor(loader.workers) as pool:
        for k, b in enumerate(batches[:count]):
            read, t_read = _timed(partial(_read_all, pool, loader.samples, b.indices, loader.workers))
            decoded, t_decode = _timed(partial(loader.decode, read))
            computed = tf.weights.computed
            t0 = time.perf_counter()
            loader.finish(b, decoded)
            t_host = time.perf_counter() - t0
            sync()
            t_transform = time.perf_counter() - t0
            if k >= 2:
                for key, v in zip(phases, (t_read, t_decode, t_transform, t_host)):
                    phases[key].append(v)
                computed_each.append(tf.weights.computed - computed)
        profile = _transform_profile(loader, batches[2:min(count, 5)], pool)
        overlap = _overlap(loader, batches[2:min(count, 12)], pool)
        from torchvision.io import ImageReadMode, decode_jpeg
        encoded = [read_sample(loader.samples, i).encoded for i in batches[0].indices]
        encoded = [e for e in encoded if e is not None]
        list(pool.map(lambda e: decode_jpeg(e, mode=ImageReadMode.RGB), encoded[:16]))
        _, t_cpu = _timed(lambda: list(pool.map(lambda e: decode_jpeg(e, mode=ImageReadMode.RGB), encoded)))
    it = loader.epoch(0)
    try:
        for _ in range(2):
            next(it)
        sync()
        t0 = time.perf_counter()
        done = 0
        for _ in range(count - 2):
            x, _ = next(it)
            done += len(x)
        sync()
        t_iter = time.perf_counter() - t0
    finally:
        it.close()
    n = sum(len(b.indices) for b in batches[2:count])
    total = {k: sum(v) for k, v in phases.items()}

    def rate(seconds: float, images: int = n) -> float:
        return images / seconds if seconds > 0 else float("inf")
    cleanup()
    return dict(
        batches=count - 2, batch=batch, read_threads=loader.workers,
        a_read_img_s=rate(total["read"]),
        b_read_decode_img_s=rate(total["read"] + total["decode"]),
        c_read_decode_transform_img_s=rate(total["read"] + total["decode"] + total["transform"]),
        d_loader_iterator_img_s=rate(t_iter, done),
        decode_alone_img_s=rate(total["decode"]), transform_alone_img_s=rate(total["transform"]),
        ms_per_batch={k: 1000 * v / (count - 2) for k, v in total.items()},
        transform_ms_each=[round(1000 * v, 2) for v in phases["transform"]],
        pass_weights=dict(looked_up=tf.weights.looked_up, computed=tf.weights.computed,
                          computed_each=computed_each),
        e_cpu_decode_threads_img_s=rate(t_cpu, len(encoded)),
        transform_profile=profile,
        g_overlap=overlap,
        note="a/b/c run the stages one after another on the loader's code (no overlap); d overlaps them as "
             "training does; the bound is the slowest of read, decode_alone and transform_alone when d is "
             "close to it, else the hand-off between the loader's threads (the GIL)")


def _b1_step(preset: str, num_classes: int, recipe, mode: str):
    """lowspace's training step as ``lowspace train`` runs it: bf16, channels-last, the recipe's loss (BCE,
    label smoothing) and mixup / cutmix, clip-by-value, fused AdamW, the lr update; graph / compiled."""
    from lowspace.arch import create_model
    from lowspace.train.losses import BatchMixer, TrainLoss
    from lowspace.train.optim import create_optimizer
    from lowspace.train.step import TrainStep
    graph = mode in ("graph", "compile_graph") and DEVICE == "cuda"
    model = create_model(preset, num_classes=num_classes).to(DEVICE).to(memory_format=torch.channels_last).train()
    opt = create_optimizer(model, 1e-3, recipe.weight_decay, capturable=graph)
    net = torch.compile(model) if mode.startswith("compile") and DEVICE == "cuda" else model
    loss = TrainLoss(recipe.loss, recipe.label_smoothing)
    train_step = TrainStep(model, opt, loss, net=net, precision=PRECISION, clip_value=recipe.clip_grad_value,
                           cuda_graph=graph)
    mixer = BatchMixer(num_classes, recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_prob, recipe.mix_switch_prob,
                       recipe.label_smoothing)
    return train_step, mixer, lr_update(opt)


def endless(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _fed_step(loader, train_step, mixer, update_lr):
    state = dict(step=0)

    it = endless(loader)

    def step():
        x, y = next(it)
        x, y = mixer(x, y, state["step"])
        train_step([(x, y)])
        update_lr()
        state["step"] += 1
    return step, it


def _projection(rate: float) -> dict:
    epoch_s = IMAGENET_TRAIN / rate
    return dict(imagenet_epoch_min=epoch_s / 60, recipe_320_epochs_h=RECIPE_EPOCHS * epoch_s / 3600)


def part_e(args) -> dict:
    """Class-folder training of B1: the CPU loader, the GPU loader and GPU-resident tensors feeding one step."""
    import tempfile
    from lowspace.data import scan_folders
    from lowspace.train import load_recipe
    res, batch = args.resolution or 224, args.batch or 256
    n = args.images or (48 if args.smoke else 10_000)
    classes = min(args.classes, 4) if args.smoke else args.classes
    if n < 2 * classes:
        raise SystemExit(f"--images {n}: at least 2 per class ({2 * classes})")
    sides = (40, 56) if args.smoke else (400, 560)
    root = Path(args.jpeg_dir or Path(tempfile.gettempdir()) / f"lowspace-jpegs-{n}")
    print(f"[e] JPEG folder {root} ...", flush=True)
    generated = jpeg_folder(root, n, classes, sides, os.cpu_count() or 1)
    print(f"[e] {json.dumps(generated)}", flush=True)
    data = scan_folders(root)
    recipe = load_recipe("b1")
    mode = "eager" if args.smoke else args.e_step
    stages: dict = {}
    if args.stage_batches > 0:
        print("[e] GPU loader stages without training ...", flush=True)
        try:
            stages = loader_stages(data, recipe, batch, res, args)
        except Exception as err:  # noqa: BLE001 - the training rows still run
            stages = dict(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
        print(f"[e] stages {json.dumps(stages, default=str)}", flush=True)
    if args.stages_only:
        out = args.out / "part_e_stages.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(stages=stages, jpegs=generated, env=dict(environment(), cpus=os.cpu_count()),
                                       command=" ".join([Path(sys.executable).name] + sys.argv)), indent=2))
        raise SystemExit(0)
    train_step, mixer, update_lr = _b1_step(args.preset, data.num_classes, recipe, mode)
    rows = []
    for name, make in _loader_feeds(data, recipe, batch, res, args):
        row: dict = dict(variant=name, batch=batch)
        print(f"[e] {name} ...", flush=True)
        loader = it = None
        try:
            cleanup()
            loader, row["note"] = make()
            step, it = _fed_step(loader, train_step, mixer, update_lr)
            row.update(measure(step, batch, args.warmup, args.chunks, args.per_chunk))
            if DEVICE == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["projection"] = _projection(row["images_per_s"])
        except Exception as err:  # noqa: BLE001 - one failing feed must not lose the others
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()[-3000:]
        finally:
            if it is not None:
                it.close()  # stops the loader's threads / DataLoader workers before the next feed
            if hasattr(loader, "close"):
                loader.close()  # and the GPU loader's processes
            loader = it = step = None
        print(f"[e] {name}: {row.get('images_per_s', 0):,.0f} img/s {row.get('error', '')}", flush=True)
        rows.append(row)
    cleanup()
    for r in rows:  # a loader that stalls between chunks shows it in the wall rate, not in the median chunk
        if r.get("wall_ms_per_step"):
            r["wall_images_per_s"] = 1000 * batch / r["wall_ms_per_step"]
    rate = {r["variant"]: r.get("images_per_s") for r in rows}
    wall = {r["variant"]: r.get("wall_images_per_s") for r in rows}
    for r in rows:
        if rate.get("resident") and r.get("images_per_s"):
            r["vs_resident"] = r["images_per_s"] / rate["resident"]
    summary: dict = dict(step=mode, info={k: v for k, v in train_step.info.items() if k != "graph_checks"},
                         gpu_loader_stages=stages)
    summary.update(_loader_goals(rate, wall))
    if "gpu_loader_processes" in rate:
        summary["processes"] = _loader_goals(rate, wall, "gpu_loader_processes")
        summary["processes"]["over_one_process"] = _ratio(rate, "gpu_loader_processes", "gpu_loader")
        summary["processes"]["over_one_process_wall"] = _ratio(wall, "gpu_loader_processes", "gpu_loader")
    if "gpu_loader_processes_taps" in rate:
        summary["taps"] = _loader_goals(rate, wall, "gpu_loader_processes_taps")
        summary["taps"]["over_matmul"] = _ratio(rate, "gpu_loader_processes_taps", "gpu_loader_processes")
        summary["taps"]["over_matmul_wall"] = _ratio(wall, "gpu_loader_processes_taps", "gpu_loader_processes")
    summary["projection_one_gpu"] = {k: r["projection"] for k, r in ((r["variant"], r) for r in rows)
                                     if "projection" in r}
    return dict(part="e", title=f"class-folder training, {args.preset.upper()}, {res} px, batch {batch}",
                goal="gpu_loader >= 2.5x cpu_loader; gpu_loader within 15 % of resident", rows=rows,
                ratio_column=("vs_resident", "vs resident"), summary=summary,
                results=dict(jpegs=generated, data=data.describe(), recipe_augmentation=dict(
                    randaugment=recipe.randaugment, reprob=recipe.reprob, mixup_alpha=recipe.mixup_alpha,
                    cutmix_alpha=recipe.cutmix_alpha, interpolation=recipe.interpolation, scale=recipe.scale),
                    projection_note=f"{IMAGENET_TRAIN:,} images per epoch, {RECIPE_EPOCHS} epochs, all at {res} px "
                                    f"(the recipe draws 128-224 px, so it trains faster than this) and without "
                                    f"evaluation"),
                protocol=dict(warmup=args.warmup, chunks=args.chunks, per_chunk=args.per_chunk, precision=PRECISION,
                              channels_last=True, step=mode),
                env=dict(environment(), cpus=os.cpu_count()))


def _ratio(rates: dict, a: str, b: str) -> float | None:
    return rates[a] / rates[b] if rates.get(a) and rates.get(b) else None


def _loader_goals(rate: dict, wall: dict, gpu: str = "gpu_loader") -> dict:
    """Part e's goals for the GPU feed ``gpu``, each met only when it holds on both rates: the median chunk's
    and the wall rate over all timed steps (README.md)."""
    out: dict = {}
    if _ratio(rate, gpu, "cpu_loader") and _ratio(wall, gpu, "cpu_loader"):
        out["gpu_over_cpu"] = _ratio(rate, gpu, "cpu_loader")
        out["gpu_over_cpu_wall"] = _ratio(wall, gpu, "cpu_loader")
        out["gpu_over_cpu_goal_met"] = min(out["gpu_over_cpu"], out["gpu_over_cpu_wall"]) >= 2.5
    if _ratio(rate, gpu, "resident") and _ratio(wall, gpu, "resident"):
        out["gpu_below_resident"] = 1 - _ratio(rate, gpu, "resident")
        out["gpu_below_resident_wall"] = 1 - _ratio(wall, gpu, "resident")
        out["within_15pct_of_resident"] = max(out["gpu_below_resident"], out["gpu_below_resident_wall"]) <= 0.15
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", required=True, choices=("a", "b", "c", "d", "e"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="b1", help="parts a/b: the network (timm lowformer_<preset> vs ours)")
    p.add_argument("--batch", type=int, default=None, help="parts a/b/e (default 512 / 256 / 256)")
    p.add_argument("--resolution", type=int, default=None, help="parts a/b/e (default 64 / 224 / 224)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (default 15; part e 10)")
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--per-chunk", type=int, default=None, help="timed steps per chunk (default 20; part e 8)")
    p.add_argument("--images", type=int, default=None, help="part e: synthetic JPEGs to write (default 10000)")
    p.add_argument("--classes", type=int, default=100, help="part e: classes of the synthetic JPEGs")
    p.add_argument("--jpeg-dir", default=None,
                   help="part e: folder of the synthetic JPEGs, reused when it holds the same set (default: "
                        "$TMPDIR/lowspace-jpegs-<images>)")
    p.add_argument("--cpu-workers", type=int, default=15, help="part e: DataLoader workers of the CPU loader")
    p.add_argument("--read-threads", type=int, default=8, help="part e: file-reading threads of the GPU loader")
    p.add_argument("--loader-processes", type=int, default=4,
                   help="part e: processes of the gpu_loader_processes feed (1: leave that feed out)")
    p.add_argument("--feeds", default="",
                   help=f"part e: comma-separated feeds to run (default all: {','.join(FEEDS)})")
    p.add_argument("--stage-batches", type=int, default=20,
                   help="part e: micro-batches timed per stage of the GPU loader without training (0: skip)")
    p.add_argument("--stages-only", action="store_true",
                   help="part e: only the GPU loader's stages (part_e_stages.json), no training")
    p.add_argument("--e-step", default="compile_graph", choices=("eager", "graph", "compile_graph"),
                   help="part e: the training step (compile_graph: lowspace train --compile --cuda-graph)")
    p.add_argument("--compile", action="store_true", help="part a: add the torch.compile variants")
    p.add_argument("--profile", default="", help="comma-separated variants to profile (kernel table per variant)")
    p.add_argument("--skip-proxy-api", action="store_true")
    p.add_argument("--fmnist-root", default=None, help="parts c/d: directory of the Fashion-MNIST IDX files")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run to check this script (on the CPU when there is no GPU); numbers mean nothing")
    args = p.parse_args(argv)
    args.profile = [v for v in args.profile.split(",") if v]
    args.feeds = [v for v in args.feeds.split(",") if v]
    if unknown := [v for v in args.feeds if v not in FEEDS]:
        p.error(f"--feeds: {', '.join(unknown)} not among {', '.join(FEEDS)}")
    global DEVICE, PRECISION
    if not torch.cuda.is_available():
        if not args.smoke:
            raise SystemExit("needs a CUDA GPU (or --smoke)")
        DEVICE, PRECISION = "cpu", "fp32"
    if args.smoke:
        args.preset, args.warmup, args.chunks, args.per_chunk = "b0", 2, 2, 2
        args.batch, args.resolution = args.batch or 4, args.resolution or 32
        args.cpu_workers, args.read_threads = min(args.cpu_workers, 2), min(args.read_threads, 2)
        args.loader_processes = min(args.loader_processes, 2)
        args.stage_batches = min(args.stage_batches, 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.part == "e" else 15)
    args.per_chunk = args.per_chunk if args.per_chunk is not None else (8 if args.part == "e" else 20)
    torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    if args.part in ("a", "b"):
        res = args.resolution or (64 if args.part == "a" else 224)
        batch = args.batch or (512 if args.part == "a" else 256)
        payload = part_step(args, args.part, res, batch)
    elif args.part == "c":
        payload = part_c(args)
    elif args.part == "e":
        payload = part_e(args)
    else:
        payload = part_d(args)
    payload["wall_s"] = time.perf_counter() - t0
    payload["command"] = " ".join([Path(sys.executable).name] + sys.argv)
    write(args.out, args.part, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
