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
