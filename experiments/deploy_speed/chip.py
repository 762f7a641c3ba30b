"""The GPU's measured limits for the roofline: copy bandwidth and dense fp16 matrix rate.

    python3 experiments/deploy_speed/chip.py --out OUT     # writes OUT/chip.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from lowspace.cost.measure import time_runner
from lowspace.cost.protocol import Timing
from lowspace.runtime import Runner


def timed_ms(fn, example: torch.Tensor) -> float:
    """Median milliseconds per call of ``fn``, timed by lowspace's own rule (``lowspace.cost.measure``)."""
    runner = Runner(fn=fn, input=example, backend="eager", precision="fp16")
    chunks, _, stats_from, _ = time_runner(runner, torch.device("cuda"), Timing().for_device("cuda"))
    return statistics.median(chunks[-stats_from:])


def copy_bandwidth(gib: float = 4.0) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy of ``gib`` GiB."""
    n = int(gib * 2**30)
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    return 2 * n / (timed_ms(lambda: dst.copy_(src), src) / 1e3)


def matmul_rate(n: int = 8192, dtype=torch.float16) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype`` (fp32 accumulation, as cuBLAS does for fp16)."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / (timed_ms(lambda: a @ b, a) / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/deploy_speed/results")
    args = ap.parse_args()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "copy_bytes_per_s": copy_bandwidth(), "fp16_matmul_flop_per_s": matmul_rate()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "chip.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
