"""The channels-last way of computing GroupNorm(1, C) (the training fast path, ``fast_groupnorm``) gives the
same function and gradients as nn.GroupNorm(1, C)."""
import copy

import torch

from lowspace.arch import create_model
from lowspace.arch.blocks import GroupNorm1, use_groupnorm_mode


def test_channels_last_groupnorm_same_function_and_gradients():
    torch.manual_seed(0)
    ref = create_model("b0", resolution=32, init="torch").train()
    fast = copy.deepcopy(ref)
    assert use_groupnorm_mode(fast, "channels_last") == 14  # 7 LowFormer blocks x (attention + MLP) pre-norms
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


def test_a_plain_groupnorm_switched_in_place_keeps_its_function_in_either_layout():
    norm = torch.nn.GroupNorm(1, 8)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    model = torch.nn.Sequential(norm)
    assert use_groupnorm_mode(model, "channels_last") == 1 and isinstance(norm, GroupNorm1)
    y = torch.randn(2, 8, 5, 5)
    want = torch.nn.functional.group_norm(y, 1, norm.weight, norm.bias)
    assert torch.allclose(norm(y), want, atol=1e-6)  # NCHW input: the native path
    assert torch.allclose(norm(y.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)
    assert use_groupnorm_mode(torch.nn.Sequential(torch.nn.GroupNorm(2, 8)), "channels_last") == 0
