"""Helpers shared by several test modules."""
import torch
import torch.nn as nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BatchNorm running statistics and norm affine parameters included (so BN
    folding and weight import are really tested); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif t.is_floating_point():
                scale = 0.3 if t.dim() <= 1 else 1.0 / max(1, t[0].numel()) ** 0.5
                offset = 1.0 if name.endswith("weight") and t.dim() == 1 else 0.0
                t.copy_(torch.randn(t.shape, generator=g) * scale + offset)
    return model.eval()


def hopper_spills(kernel, signature: dict, constexprs: dict, warps: int, stages: int = 3) -> int:
    """Bytes of registers ``kernel`` spills compiled for an H100 / H200 (sm_90a), by ptxas -v; no GPU needed."""
    import os
    import re
    import subprocess
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(compiled.asm["ptx"])
        out = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", ptx, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr))

