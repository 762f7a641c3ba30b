"""How far each preset's deploy latency is from the GPU's limits (runs on the CPU from bench.py's results).

For each model and batch in ``results.json`` it counts, in fp16:
- FLOPs (2 x MACs at the measured resolution) against the measured fp16 matrix rate (``chip.json``);
- bytes that must move: the weights once per batch, the input image, and the activations that cannot stay on
  chip at that batch, with two readings: *block-fused* (only the tensors between blocks are written and read
  back: the best a kernel per block can do) and *op-level* (every convolution's and linear layer's output is
  written and read back: what one fused conv + norm + activation kernel per layer moves);
and divides by the measured copy bandwidth. The bound is the larger of the FLOP time and the byte time.

    python3 experiments/deploy_speed/roofline.py --results experiments/deploy_speed/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lowspace
from lowspace.cost.count import count_macs, count_params

HALF = 2  # bytes per fp16 value


def activation_values(model: torch.nn.Module, resolution: int) -> dict[str, int]:
    """Values per image written by the block boundaries and by every conv / linear layer (one forward)."""
    boundaries = [model.stem.conv, *model.stem.blocks]
    for stage in model.stages:
        boundaries += [stage.downsample, *stage.blocks]
    counts = {"block": 0, "op": 0}

    def add(key):
        def hook(_module, _inputs, output):
            counts[key] += output.numel()
        return hook

    handles = [m.register_forward_hook(add("block")) for m in boundaries if not isinstance(m, torch.nn.Identity)]
    handles += [m.register_forward_hook(add("op")) for m in model.modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    return counts


def bounds(name: str, batch: int, resolution: int, chip: dict) -> dict:
    """FLOP time, byte times (block-fused and op-level) and the bound, in ms, for one model and batch."""
    model = lowspace.create_model(name)
    params, macs = count_params(model), count_macs(model, resolution=resolution)
    acts = activation_values(model, resolution)
    image = 3 * resolution * resolution
    flop_ms = 2 * macs * batch / chip["fp16_matmul_flop_per_s"] * 1e3
    out = {"model": name, "batch": batch, "params": params, "gflop_per_image": 2 * macs / 1e9,
           "flop_ms": flop_ms}
    for key in ("block", "op"):
        # weights once, the image read once, each activation written once and read once
        moved = HALF * (params + batch * (image + 2 * acts[key]))
        out[f"{key}_mbytes_per_image"] = moved / batch / 1e6
        out[f"{key}_bytes_ms"] = moved / chip["copy_bytes_per_s"] * 1e3
    out["bound_ms"] = max(flop_ms, out["block_bytes_ms"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="experiments/deploy_speed/results")
    args = ap.parse_args()
    folder = Path(args.results)
    chip = json.loads((folder / "chip.json").read_text())
    rows = [r for r in json.loads((folder / "results.json").read_text())["rows"] if r.get("status") == "ok"]
    lines = [f"# Roofline: {chip['gpu']}, copy {chip['copy_bytes_per_s'] / 1e12:.2f} TB/s, fp16 matrix "
             f"{chip['fp16_matmul_flop_per_s'] / 1e12:.0f} TFLOP/s (measured, chip.json)", "",
             "Bound = max(FLOP time, block-fused byte time). Share = bound / measured: 100 % would be at the limit.",
             "", "| model | batch | GFLOP/img | MB/img block-fused / op-level | FLOP ms | bytes ms block / op "
             "| bound ms | ours_deploy ms (share) | timm compiled + graph ms (share) | kernels ours / timm |",
             "|---|---:|---:|---|---:|---|---:|---|---|---|"]
    table = []
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        b = bounds(model, batch, rows[0]["resolution"], chip)
        found = {r["variant"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        ours, timm = found.get("ours_deploy"), found.get("timm_compile_graph")

        def ms(r, bound=b["bound_ms"]):
            return f"{r['ms']:.3f} ({100 * bound / r['ms']:.0f} %)" if r else "-"

        def kernels(r):
            return f"{r['profile']['kernels_per_forward']:.0f}" if r and r.get("profile") else "-"

        b.update(ours_ms=ours and ours["ms"], timm_compile_graph_ms=timm and timm["ms"])
        table.append(b)
        lines.append(f"| {model} | {batch} | {b['gflop_per_image']:.2f} | {b['block_mbytes_per_image']:.1f} / "
                     f"{b['op_mbytes_per_image']:.1f} | {b['flop_ms']:.3f} | {b['block_bytes_ms']:.3f} / "
                     f"{b['op_bytes_ms']:.3f} | {b['bound_ms']:.3f} | {ms(ours)} | {ms(timm)} | "
                     f"{kernels(ours)} / {kernels(timm)} |")
    (folder / "roofline.json").write_text(json.dumps({"chip": chip, "rows": table}, indent=1) + "\n")
    (folder / "roofline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
