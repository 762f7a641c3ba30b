"""Inference-only modules and the rewrite of a :class:`~lowspace.arch.model.LowFormer` into them.

The rewritten network is a flat ``features`` sequence plus a head. Every conv carries its (folded) bias
and activation, so a compiler sees one conv + one epilogue per layer, and nothing holds drop-path,
dropout or BatchNorm state.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch.blocks import (ClassifierHead, ConvMlp, ConvNormAct, FusedMBConv, LowFormerAttention, LowFormerBlock,
                           MBConv)
from ._fold import conv_transpose_as_conv, conv_transpose_as_subpixel, fold_bn
from ._options import DeployOptions

_ACTS = {
    None: lambda x: x,
    "hardswish": F.hardswish, "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
_ACT_NAMES = {nn.Identity: None, nn.Hardswish: "hardswish", nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu"}


def act_name(module: nn.Module) -> str | None:
    """The name of an activation module (as :func:`lowspace.arch.blocks.make_act` builds them)."""
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    try:
        return _ACT_NAMES[type(module)]
    except KeyError:
        raise TypeError(f"unsupported activation {type(module).__name__}") from None


def apply_act(name: str | None, x: torch.Tensor) -> torch.Tensor:
    return _ACTS[name](x)


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class Conv(nn.Module):
    """Conv2d with bias and activation fused in one module (a folded ConvNormAct).

    ``as_linear`` runs a 1x1 stride-1 conv as a matmul on the NHWC view (free for channels_last input).
    ``triton`` runs a depthwise conv (+bias+activation) through lowspace's Triton kernel on CUDA.
    """

    def __init__(self, weight, bias, stride=1, padding=0, groups=1, act=None, as_linear=False, triton=False):
        super().__init__()
        self.stride, self.padding, self.groups, self.act = stride, padding, groups, act
        self.as_linear = as_linear and weight.shape[-1] == 1 and stride == 1 and groups == 1
        self.triton = triton and groups == weight.shape[0] and weight.shape[1] == 1
        self.weight = _frozen(weight.flatten(1) if self.as_linear else weight)
        self.bias = _frozen(bias)

    @classmethod
    def from_conv_norm_act(cls, m: ConvNormAct, opts: DeployOptions, as_linear=None) -> "Conv":
        conv = m.conv
        weight, bias = fold_bn(conv.weight, conv.bias, m.bn if isinstance(m.bn, nn.BatchNorm2d) else None)
        linear = opts.conv1x1 == "linear" if as_linear is None else as_linear
        return cls(weight, bias, conv.stride[0], conv.padding[0], conv.groups, act_name(m.act), linear, opts.triton)

    def extra_repr(self):
        shape = tuple(self.weight.shape)
        kind = "linear" if self.as_linear else "triton" if self.triton else "conv"
        return f"{kind} {shape}, stride={self.stride}, groups={self.groups}, act={self.act}"

    def forward(self, x):
        if self.as_linear:
            return apply_act(self.act, F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2))
        if self.triton and x.is_cuda:
            from .triton_ops import depthwise_conv
            return depthwise_conv(x, self.weight, self.bias, self.stride, self.padding, self.act)
        return apply_act(self.act, F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups))


def _conv(m: ConvNormAct, opts: DeployOptions) -> nn.Module:
    """A ConvNormAct as a :class:`Conv` (folded) or, with ``fold_bn=False``, conv + BN + activation kept."""
    if opts.fold_bn or not isinstance(m.bn, nn.BatchNorm2d):
        return Conv.from_conv_norm_act(m, opts)
    conv = Conv(m.conv.weight, m.conv.bias, m.conv.stride[0], m.conv.padding[0], m.conv.groups, None)
    return _ActAfter(nn.Sequential(conv, copy.deepcopy(m.bn).eval()), act_name(m.act))


class _ActAfter(nn.Module):
    def __init__(self, body: nn.Module, act: str | None):
        super().__init__()
        self.body, self.act = body, act

    def forward(self, x):
        return apply_act(self.act, self.body(x))


class ConvBlock(nn.Module):
    """A FusedMBConv / MBConv as a chain of folded convs, with its identity residual if any."""

    def __init__(self, convs: list[nn.Module], residual: bool):
        super().__init__()
        self.convs = nn.Sequential(*convs)
        self.residual = residual

    @classmethod
    def from_block(cls, m: FusedMBConv | MBConv, opts: DeployOptions) -> "ConvBlock":
        parts = [m.conv1, m.conv2] if isinstance(m, FusedMBConv) else [m.expand, m.dw, m.project]
        return cls([_conv(p, opts) for p in parts], m.residual)

    def forward(self, x):
        y = self.convs(x)
        return x + y if self.residual else y


class Norm(nn.Module):
    """GroupNorm(1, C) (``decomposed``: plain mean / variance ops that a compiler fuses freely)."""

    def __init__(self, gn: nn.GroupNorm, kind: str = "native"):
        super().__init__()
        self.eps, self.kind = gn.eps, kind
        self.weight, self.bias = _frozen(gn.weight), _frozen(gn.bias)

    def forward(self, x):
        if self.kind == "native":
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(1, 2, 3), keepdim=True, correction=0)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]).to(x.dtype)


class Attention(nn.Module):
    """LowFormer attention with folded BN and channels-last friendly Q/K/V handling (see DeployOptions)."""

    def __init__(self, m: LowFormerAttention, opts: DeployOptions):
        super().__init__()
        self.heads, self.head_dim = m.heads, m.head_dim
        self.sdpa, self.fused = opts.sdpa, opts.fuse_attention
        proj = _conv(m.proj, opts)
        qkv_w = m.qkv.weight
        qkv_b = None
        if self.fused and isinstance(proj, Conv) and proj.bias is not None:
            # qkv(dw(x) + b) = qkv(dw(x)) + W_qkv b: the 1x1 conv absorbs the projection's bias.
            qkv_b = (qkv_w.flatten(1).double() @ proj.bias.double()).to(qkv_w.dtype)
            proj.bias = None
        self.proj = proj
        self.qkv = Conv(qkv_w, qkv_b, as_linear=opts.conv1x1 == "linear")
        up = m.up
        self.interpolate = m.interpolate
        self.shuffle = 1
        if self.interpolate:
            self.up = Conv(up.weight, up.bias, as_linear=opts.conv1x1 == "linear")
        elif self.fused and up.stride[0] == 1:
            w, pad = conv_transpose_as_conv(up.weight, up.padding[0])
            self.up = Conv(w, up.bias, 1, pad)
        elif opts.upsample == "subpixel" and up.stride[0] > 1:
            w, b = conv_transpose_as_subpixel(up.weight, up.bias, up.stride[0], up.padding[0])
            self.up = Conv(w, b, 1, 1)
            self.shuffle = up.stride[0]
        else:
            self.up = _ConvTranspose(up)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        n, _, h, w = qkv.shape
        if self.fused:
            # NHWC view: channel = head * 3d + {q, k, v} * d + e; for channels_last input these are views.
            t = qkv.permute(0, 2, 3, 1).reshape(n, h * w, self.heads, 3, self.head_dim)
            q, k, v = (u.transpose(1, 2) for u in t.unbind(3))
            o = _sdpa(q, k, v, self.sdpa)
            return o.transpose(1, 2).reshape(n, h, w, self.heads * self.head_dim).permute(0, 3, 1, 2)
        t = qkv.reshape(n, self.heads, 3 * self.head_dim, h * w).transpose(-1, -2)
        q, k, v = t.split(self.head_dim, dim=-1)
        o = _sdpa(q, k, v, self.sdpa)
        return o.transpose(-1, -2).reshape(n, self.heads * self.head_dim, h, w)

    def forward(self, x):
        height, width = x.shape[-2:]
        o = self.up(self.attend(self.qkv(self.proj(x))))
        if self.shuffle > 1:
            o = F.pixel_shuffle(o, self.shuffle)
        if self.interpolate and o.shape[-2:] != (height, width):
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return o[..., :height, :width]


class _ConvTranspose(nn.Module):
    def __init__(self, m: nn.ConvTranspose2d):
        super().__init__()
        self.stride, self.padding = m.stride, m.padding
        self.weight, self.bias = _frozen(m.weight), _frozen(m.bias)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)


def _sdpa(q, k, v, kernel: str):
    if kernel == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Module):
    """fc1 (+activation) and fc2 as folded convs."""

    def __init__(self, m: ConvMlp, opts: DeployOptions):
        super().__init__()
        linear = opts.conv1x1 == "linear"
        self.fc1 = Conv(m.fc1.weight, m.fc1.bias, act=act_name(m.act), as_linear=linear)
        self.fc2 = Conv(m.fc2.weight, m.fc2.bias, as_linear=linear)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class Block(nn.Module):
    """``x + Attn(norm(x))``, ``x + MLP(GN(x))``, ``x + Local(x)`` without drop-path."""

    def __init__(self, m: LowFormerBlock, opts: DeployOptions):
        super().__init__()
        self.attn_norm = self.attn = self.mlp_norm = self.mlp = None
        if m.attn is not None:
            self.attn_norm = Norm(m.attn_norm, opts.groupnorm) if isinstance(m.attn_norm, nn.GroupNorm) else None
            self.attn = Attention(m.attn, opts)
        if m.mlp is not None:
            self.mlp_norm = Norm(m.mlp_norm, opts.groupnorm)
            self.mlp = Mlp(m.mlp, opts)
        self.local = ConvBlock.from_block(m.local, opts)

    def forward(self, x):
        if self.attn is not None:
            x = x + self.attn(self.attn_norm(x) if self.attn_norm is not None else x)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x + self.local(x)


class Head(nn.Module):
    """1x1 conv (folded) -> mean pool -> Linear -> LayerNorm -> activation -> classifier."""

    def __init__(self, m: ClassifierHead, opts: DeployOptions):
        super().__init__()
        self.conv = _conv(m.conv, opts) if isinstance(m.conv, ConvNormAct) else None
        self.fc = _frozen(m.fc.weight) if isinstance(m.fc, nn.Linear) else None
        self.norm = copy.deepcopy(m.norm) if isinstance(m.norm, nn.LayerNorm) else None
        if self.norm is not None:
            self.norm.requires_grad_(False)
        self.act = act_name(m.act)
        self.classifier = copy.deepcopy(m.classifier) if isinstance(m.classifier, nn.Linear) else None
        if self.classifier is not None:
            self.classifier.requires_grad_(False)

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x)
        x = x.mean((2, 3))
        if self.fc is not None:
            x = F.linear(x, self.fc)
        if self.norm is not None:
            x = self.norm(x)
        x = apply_act(self.act, x)
        return self.classifier(x) if self.classifier is not None else x


class DeployNet(nn.Module):
    """The rewritten network: ``head(features(x))``."""

    def __init__(self, features: list[nn.Module], head: nn.Module):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.head = head

    def forward(self, x):
        return self.head(self.features(x))


def rewrite(model: nn.Module, opts: DeployOptions) -> DeployNet:
    """The inference-only form of a lowspace ``LowFormer`` (float32, same device; the model is not changed)."""
    from ..arch.model import LowFormer
    if not isinstance(model, LowFormer):
        raise TypeError(type(model).__name__)

    def block(m):
        if isinstance(m, LowFormerBlock):
            return Block(m, opts)
        if isinstance(m, (FusedMBConv, MBConv)):
            return ConvBlock.from_block(m, opts)
        raise TypeError(f"unsupported block {type(m).__name__}")

    with torch.no_grad():
        features = [_conv(model.stem.conv, opts)] + [block(b) for b in model.stem.blocks]
        for stage in model.stages:
            if stage.downsample is not None:
                features.append(block(stage.downsample))
            features += [block(b) for b in stage.blocks]
        net = DeployNet(features, Head(model.head, opts))
    return net.eval()
