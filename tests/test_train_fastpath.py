"""The layout-preserving GroupNorm computes the same function and gradients as nn.GroupNorm(1, C)."""
import copy

import torch

from lowspace.arch import create_model
from lowspace.train.fastpath import ChannelsLastGroupNorm, channels_last_groupnorm


def test_channels_last_groupnorm_same_function_and_gradients():
    torch.manual_seed(0)
    ref = create_model("b0", resolution=32, init="torch").train()
    fast = copy.deepcopy(ref)
    assert channels_last_groupnorm(fast) == 14  # 7 LowFormer blocks x (attention + MLP) pre-norms
    assert fast.state_dict().keys() == ref.state_dict().keys()
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32)
    out_ref = ref(x)
    out_fast = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out_ref, out_fast, atol=3e-4, rtol=1e-3)
    out_ref.square().sum().backward()
    out_fast.square().sum().backward()
    num = den = 0.0
    for (_, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters()):
        num += (a.grad - b.grad).pow(2).sum().item()
        den += a.grad.pow(2).sum().item()
    assert (num / den) ** 0.5 < 1e-3
    # a GroupNorm layer alone, non-channels-last input falls back to the native kernel
    norm = torch.nn.GroupNorm(1, 8)
    norm.__class__ = ChannelsLastGroupNorm
    y = torch.randn(2, 8, 5, 5)
    assert torch.allclose(norm(y), torch.nn.functional.group_norm(y, 1, norm.weight, norm.bias), atol=1e-6)
    assert torch.allclose(norm(y.contiguous(memory_format=torch.channels_last)),
                          torch.nn.functional.group_norm(y, 1, norm.weight, norm.bias), atol=1e-5)
