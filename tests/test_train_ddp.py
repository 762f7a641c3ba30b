"""Data-parallel training: two processes (torchrun, gloo on CPU) end with the same weights as one process
with the same global batch.

What is compared, honestly: two processes x 8 images per step against one process x 8 images x 2
accumulated micro-batches. Both see the same 16 images per optimizer step, in the same split, and both
normalize BatchNorm over groups of 8 images. The all-reduce averages the two gradients while accumulation,
as in the official trainer, sums them: the gradients differ by an exact factor of 2, which AdamW cancels
exactly when nothing else sees the gradient's scale, so the runs turn off clipping and make eps negligible
(1e-30). The learning rate is held constant (no warm-up, cosine floor = peak): the official schedule counts
each process's micro-batches, so the two layouts step through it differently by design. One process with a
plain batch of 16 would differ by design, because BatchNorm would then normalize over 16 images
(SyncBatchNorm, which would remove that difference, needs CUDA). The BatchNorm *running*
statistics differ too (DDP keeps rank 0's), so only the parameters are compared. Tolerance: max |difference|
<= 1e-6 after 14 AdamW steps (232 training images: 24 of the 256 are held out for validation); on CPU with
one thread per process the two runs agree bit for bit (with different thread counts the kernels' summation
order differs and Adam lets the difference grow to ~1e-4).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lowspace.arch import create_model
from lowspace.cli import main

TINY = dict(name="tiny", resolution=16, stem=dict(width=8),
            stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
                    dict(width=24, depth=1, block="lowformer", attention=dict(stride=1))],
            head=dict(widths=[32]))
COMMON = ["--data", "synthetic", "--epochs", "1", "--warmup-epochs", "0", "--resolution", "16", "--batch-size", "8",
          "--lr", "1e-3", "--no-progress", "--device", "cpu", "--set", "mixup_alpha=0", "--set", "cutmix_alpha=0",
          "--set", "drop_path=0", "--set", "bn_reestimate_images=32", "--set", "eval_batch_size=16",
          "--set", "save_every_steps=0", "--set", "log_every=4", "--set", "eps=1.0e-30",
          "--set", "clip_grad_value=null",
          "--set", "min_lr=2.0e-3"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lowspace", "train", str(cfg), "--out", str(tmp_path / "ddp"), *COMMON]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same summation order in kernels
    try:
        assert main(["train", str(cfg), "--out", str(tmp_path / "one"), "--accumulation", "2", *COMMON]) == 0
    finally:
        torch.set_num_threads(threads)

    two = json.loads((tmp_path / "ddp" / "result.json").read_text())
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    assert two["info"]["world_size"] == 2 and one["info"]["world_size"] == 1
    assert two["steps"] == one["steps"] == 14 and two["info"]["images_per_step"] == one["info"]["images_per_step"] == 16
    assert two["info"]["lr"] == one["info"]["lr"] == 2e-3  # base lr x 2 processes == base lr x 2 micro-batches

    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    params = [name for name, _ in create_model(TINY, num_classes=4).named_parameters()]
    start = create_model(TINY, num_classes=4).state_dict()
    moved = max((a[n] - start[n]).abs().max().item() for n in params)
    diff = max((a[n] - b[n]).abs().max().item() for n in params)
    assert moved > 1e-3  # training changed the weights: the comparison means something
    assert diff <= 1e-6, f"max parameter difference {diff:.3g}"
    # only rank 0 wrote files
    assert (tmp_path / "ddp" / "metrics.csv").read_text().count("\n") == 2
