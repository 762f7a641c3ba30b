"""Exact weight rewrites: BatchNorm folding and transposed convs as plain convs.

All arithmetic is done in float64 and cast back, so a folded layer differs from the original only by the
rounding of its own forward pass.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | None,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a conv followed by an eval-mode BatchNorm, as one conv.

    ``bn(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, so the folded conv
    has weight ``s * W`` (per output channel) and bias ``s * (b - mean) + beta``. A conv bias before the
    BN (LowFormer's local blocks carry one) is absorbed. ``bn=None`` returns the inputs unchanged.
    """
    if bn is None:
        return weight, bias
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    dtype = weight.dtype
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    b = (b - mean) * scale + beta
    return w.to(dtype), b.to(dtype)


def conv_transpose_as_conv(weight: torch.Tensor, padding: int) -> tuple[torch.Tensor, int]:
    """A stride-1 ConvTranspose2d weight (in, out, k, k) as a Conv2d weight (out, in, k, k) and padding.

    A stride-1 transposed conv is a correlation with the spatially flipped, in/out-swapped kernel and
    padding ``k - 1 - p``.
    """
    k = weight.shape[-1]
    return weight.transpose(0, 1).flip(-1, -2).contiguous(), k - 1 - padding


def conv_transpose_as_subpixel(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ConvTranspose2d (kernel 2*stride, padding stride//2) as a 3x3 conv to ``stride**2 * out`` channels
    followed by ``pixel_shuffle(stride)`` (sub-pixel convolution).

    Output row ``o = q*s + r`` of the transposed conv reads input rows ``q-1, q, q+1`` only, with tap
    ``t = (q - i)*s + r + p``; the 3x3 conv gathers exactly those taps for every phase ``r``. Exact, at
    ``9 / 4`` of the transposed conv's multiply-adds.
    """
    cin, cout, k, k2 = weight.shape
    s = stride
    if k != k2 or k != 2 * s or padding != s // 2 or s % 2:
        raise ValueError(f"sub-pixel rewrite needs kernel 2*stride, padding stride//2, even stride; got "
                         f"kernel {k}, stride {s}, padding {padding}")
    w = weight.new_zeros(cout, s, s, cin, 3, 3)
    for ry in range(s):
        for dy in (-1, 0, 1):
            ty = -dy * s + ry + padding
            if not 0 <= ty < k:
                continue
            for rx in range(s):
                for dx in (-1, 0, 1):
                    tx = -dx * s + rx + padding
                    if 0 <= tx < k:
                        w[:, ry, rx, :, dy + 1, dx + 1] = weight[:, :, ty, tx].t()
    w = w.reshape(cout * s * s, cin, 3, 3)
    b = bias.repeat_interleave(s * s) if bias is not None else None
    return w, b
