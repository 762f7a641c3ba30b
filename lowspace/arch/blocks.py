"""Building blocks of LowFormer-family networks.

Args used throughout:
    in_channels / out_channels: channel counts.
    kernel_size: odd kernel of the spatial conv (padding kernel_size // 2, so size -> ceil(size / stride)).
    stride: 1 or 2.
    expand_ratio: hidden width = round(expand_ratio * in_channels) (on the *input* width, as upstream).
    act: activation name (see :data:`lowspace.arch.config.ACTIVATIONS`).
    bias: whether the first conv(s) of a block carry a bias. LowFormer's local convs do (even before a
        BatchNorm); stem, stage and downsample blocks do not.
    residual: add the input to the output (requires in == out channels and stride 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath


def make_act(name: str | None) -> nn.Module:
    """An activation module by name; ``None`` gives Identity."""
    if name is None:
        return nn.Identity()
    table = {
        "hardswish": nn.Hardswish, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU,
        "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    }
    return table[name]()


class ConvNormAct(nn.Module):
    """Conv2d (padding k//2), then optional BatchNorm, then optional activation."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1, bias=False,
                 norm=True, act=None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class FusedMBConv(nn.Module):
    """k x k conv to the hidden width (+BN+act), then 1x1 conv to ``out_channels`` (+BN)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=4.0, act="hardswish",
                 bias=False, residual=False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.conv1 = ConvNormAct(in_channels, hidden, kernel_size, stride, bias=bias, act=act)
        self.conv2 = ConvNormAct(hidden, out_channels, 1)
        self.residual = residual
        self.drop_path = DropPath(0.0) if residual else nn.Identity()

    def last_norm(self) -> nn.Module:
        return self.conv2.bn

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + self.drop_path(y) if self.residual else y


class MBConv(nn.Module):
    """1x1 expand (+act), k x k depthwise (+act), 1x1 project (+BN); as upstream, no norm on the first two."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=4.0, act="hardswish",
                 bias=False, residual=False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expand = ConvNormAct(in_channels, hidden, 1, bias=bias, norm=False, act=act)
        self.dw = ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden, bias=bias, norm=False, act=act)
        self.project = ConvNormAct(hidden, out_channels, 1)
        self.residual = residual
        self.drop_path = DropPath(0.0) if residual else nn.Identity()

    def last_norm(self) -> nn.Module:
        return self.project.bn

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + self.drop_path(y) if self.residual else y


CONV_BLOCK_TYPES = {"fused_mbconv": FusedMBConv, "mbconv": MBConv}


def conv_block(kind: str, *args, **kwargs) -> nn.Module:
    """A FusedMBConv or MBConv by name."""
    return CONV_BLOCK_TYPES[kind](*args, **kwargs)


class LowFormerAttention(nn.Module):
    """Attention over a strided, depthwise-projected copy of the feature map.

    Q, K and V all live at 1/stride resolution (depthwise k x k conv + BN, then a 1x1 conv to 3 * heads *
    head_dim channels laid out per head as [q | k | v]). The merged heads are brought back to full
    resolution and to ``channels`` by a dense transposed conv (the output projection folded in) or by a
    1x1 conv and bilinear interpolation, then cropped to the input size (odd sizes).
    """

    def __init__(self, channels, heads, head_dim, stride=1, kernel_size=3, upsample="conv_transpose"):
        super().__init__()
        self.heads, self.head_dim, self.stride = heads, head_dim, stride
        attn_width = heads * head_dim
        self.proj = ConvNormAct(channels, channels, kernel_size, stride, groups=channels)
        self.qkv = nn.Conv2d(channels, 3 * attn_width, 1, bias=False)
        self.interpolate = upsample == "interpolate"
        if self.interpolate:
            self.up = nn.Conv2d(attn_width, channels, 1)
        elif stride == 1:
            self.up = nn.ConvTranspose2d(attn_width, channels, 3, 1, 1)
        else:
            self.up = nn.ConvTranspose2d(attn_width, channels, 2 * stride, stride, stride // 2)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Multi-head attention on a (N, 3*A, h, w) map laid out per head as [q|k|v]; returns (N, A, h, w)."""
        n, _, h, w = qkv.shape
        t = qkv.reshape(n, self.heads, 3 * self.head_dim, h * w).transpose(-1, -2)
        q, k, v = t.split(self.head_dim, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)
        return o.transpose(-1, -2).reshape(n, self.heads * self.head_dim, h, w)

    def forward(self, x):
        height, width = x.shape[-2:]
        o = self.up(self.attend(self.qkv(self.proj(x))))
        if self.interpolate and o.shape[-2:] != (height, width):
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return o[..., :height, :width]


class ConvMlp(nn.Module):
    """1x1 conv to ``hidden`` (bias), activation, 1x1 conv back (bias)."""

    def __init__(self, channels, hidden, act="gelu"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LowFormerBlock(nn.Module):
    """``x + Attn(norm(x))``, ``x + MLP(GN(x))`` (when mlp_ratio > 0), ``x + Local(x)``.

    Without attention the block is the local conv alone. The local conv is a FusedMBConv or MBConv with
    biased first convs, as in the official block.
    """

    def __init__(self, channels, local="fused_mbconv", expand_ratio=4.0, kernel_size=3, act="hardswish",
                 attention: dict | None = None, mlp_ratio=4.0, mlp_act="gelu"):
        super().__init__()
        self.attn_norm = self.attn = self.mlp_norm = self.mlp = None
        if attention is not None:
            prenorm = attention.pop("norm", "groupnorm")
            self.attn_norm = nn.GroupNorm(1, channels) if prenorm == "groupnorm" else nn.Identity()
            self.attn = LowFormerAttention(channels, **attention)
            if mlp_ratio > 0:
                self.mlp_norm = nn.GroupNorm(1, channels)
                self.mlp = ConvMlp(channels, round(channels * mlp_ratio), mlp_act)
        self.local = conv_block(local, channels, channels, kernel_size, 1, expand_ratio, act, bias=True)
        self.drop_path_attn = DropPath(0.0) if self.attn is not None else None
        self.drop_path_mlp = DropPath(0.0) if self.mlp is not None else None
        self.drop_path_local = DropPath(0.0)

    def forward(self, x):
        if self.attn is not None:
            x = x + self.drop_path_attn(self.attn(self.attn_norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path_mlp(self.mlp(self.mlp_norm(x)))
        return x + self.drop_path_local(self.local(x))


class ClassifierHead(nn.Module):
    """Optional 1x1 conv (+BN+act), global average pool, optional Linear (no bias) + LayerNorm + act,
    dropout, classifier Linear."""

    def __init__(self, in_channels, widths, num_classes, dropout=0.0, act="hardswish"):
        super().__init__()
        widths = list(widths)
        self.conv = ConvNormAct(in_channels, widths[0], 1, act=act) if widths else nn.Identity()
        width = widths[0] if widths else in_channels
        if len(widths) > 1:
            self.fc = nn.Linear(width, widths[1], bias=False)
            self.norm = nn.LayerNorm(widths[1])
            self.act = make_act(act)
            width = widths[1]
        else:
            self.fc = self.norm = self.act = nn.Identity()
        self.num_features = width
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        ref = next(self.parameters())
        self.classifier = (nn.Linear(self.num_features, num_classes).to(ref.device, ref.dtype)
                           if num_classes > 0 else nn.Identity())

    def forward(self, x, pre_logits: bool = False):
        x = self.conv(x).mean((2, 3))
        x = self.dropout(self.act(self.norm(self.fc(x))))
        return x if pre_logits else self.classifier(x)
