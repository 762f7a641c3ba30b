"""Building blocks of LowFormer-family networks, each with its exact inference rewrite.

Args used throughout:
    in_channels / out_channels: channel counts.
    kernel_size: odd kernel of the spatial conv (padding kernel_size // 2, so size -> ceil(size / stride)).
    stride: 1 or 2.
    expand_ratio: hidden width = round(expand_ratio * in_channels) (on the *input* width, as upstream).
    act: activation name, a key of :data:`ACT_LAYERS`.
    bias: whether the first conv(s) of a block carry a bias. LowFormer's local convs do (even before a
        BatchNorm); stem, stage and downsample blocks do not.
    residual: add the input to the output (requires in == out channels and stride 1).

Every block with an inference form has ``reparameterize(options=None)``: it rewrites the block in place
(BatchNorm folding, the attention's channels-last form, ...) so that its eval-mode function stays the same
up to float rounding. It changes only the block's own layers; :func:`lowspace.runtime.reparameterize`
(and timm's ``reparameterize_model``, with the default options) visits every block, parents first.
``options`` is a :class:`lowspace.runtime.DeployOptions`; see ``docs/runtime.md`` for each switch.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.nn.utils import skip_init

from ..runtime._fold import conv_transpose_as_conv, conv_transpose_as_subpixel, fold_bn
from ..runtime._options import DeployOptions

# The activations by name (the one table: blocks, rewrites and the Triton kernel's fallback use it).
ACT_LAYERS = {
    "hardswish": nn.Hardswish, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
}


def make_act(name: str | None) -> nn.Module:
    """An activation module by name; ``None`` gives Identity."""
    return nn.Identity() if name is None else ACT_LAYERS[name]()


def act_name(module: nn.Module) -> str | None:
    """The name under which :func:`make_act` builds ``module`` (None for Identity)."""
    if isinstance(module, nn.Identity):
        return None
    for name, factory in ACT_LAYERS.items():
        ref = factory()
        if type(ref) is type(module) and getattr(ref, "approximate", None) == getattr(module, "approximate", None):
            return name
    raise TypeError(f"unsupported activation {type(module).__name__}")


def _options(options: DeployOptions | None) -> DeployOptions:
    return DeployOptions() if options is None else options


def _conv_like(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, **geometry) -> nn.Conv2d:
    """A Conv2d holding ``weight`` and ``bias``, with ``conv``'s stride, padding and groups unless given."""
    kw = {**dict(stride=conv.stride, padding=conv.padding, groups=conv.groups), **geometry}
    out = skip_init(nn.Conv2d, weight.shape[1] * kw["groups"], weight.shape[0], tuple(weight.shape[2:]),
                    bias=bias is not None, device=weight.device, dtype=weight.dtype, **kw)
    out.weight = nn.Parameter(weight.detach(), requires_grad=conv.weight.requires_grad)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach(), requires_grad=conv.weight.requires_grad)
    return out


def _nhwc_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``weight`` (out, in) applied over the channels of ``x``'s NHWC view (a view for channels_last input)."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def _matmul_weight(conv: nn.Conv2d) -> nn.Parameter:
    """``conv``'s weight as (out, kh * kw * in), tap-major: the order in which ConvIm2colLinear stacks its views
    (for a 1x1 conv just (out, in))."""
    return nn.Parameter(conv.weight.detach().permute(0, 2, 3, 1).flatten(1), requires_grad=conv.weight.requires_grad)


class Conv1x1Linear(nn.Module):
    """A 1x1 stride-1 conv computed as a matmul over the channels of the NHWC view (a view for
    channels_last input), which a compiler fuses with the epilogue that follows."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = _matmul_weight(conv), conv.bias

    @staticmethod
    def applies(conv: nn.Module) -> bool:
        return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.groups == 1)

    def forward(self, x):
        return _nhwc_matmul(x, self.weight, self.bias)


class ConvIm2colLinear(nn.Module):
    """A dense k x k conv (k > 1, zero padding) computed as one matmul: the k * k shifted, strided views of the
    padded input stacked over channels (tap-major), then a matmul over the channels of the NHWC view."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = _matmul_weight(conv), conv.bias
        self.kernel_size, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]

    @staticmethod
    def applies(conv: nn.Module) -> bool:
        return _square_conv(conv) and conv.groups == 1 and conv.kernel_size[0] > 1

    def forward(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        x = F.pad(x, (p, p, p, p))
        ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
        taps = [x[:, :, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s] for dy in range(k) for dx in range(k)]
        return _nhwc_matmul(torch.cat(taps, 1), self.weight, self.bias)


def as_matmul(conv: nn.Module, options: DeployOptions) -> nn.Module:
    """``conv`` as a matmul where the options ask for one: a plain 1x1 conv as a :class:`Conv1x1Linear`
    (``conv1x1="linear"``), a dense k x k conv as a :class:`ConvIm2colLinear` (``convkxk="im2col"``)."""
    if options.conv1x1 == "linear" and Conv1x1Linear.applies(conv):
        return Conv1x1Linear(conv)
    return ConvIm2colLinear(conv) if options.convkxk == "im2col" and ConvIm2colLinear.applies(conv) else conv


def _square_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain ``nn.Conv2d`` of square kernel, stride and zero padding, no dilation: the
    convs lowspace's Triton kernels take."""
    return (isinstance(conv, nn.Conv2d) and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1]
            and conv.dilation == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding_mode == "zeros")


class TritonConvAct(nn.Module):
    """Conv + bias + activation as one of lowspace's Triton kernels on CUDA (``lowspace.runtime``): a
    depthwise conv (``kind="depthwise"``) or a dense conv with few input channels (``kind="stem"``, the
    network's first conv). An activation the kernels lack runs after them; on other devices, and while
    exporting to ONNX, conv2d followed by the activation."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        from ..runtime._triton import TRITON_ACTS
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.groups = conv.stride[0], conv.padding[0], conv.groups
        self.kind = "depthwise" if self.applies(conv, "depthwise") else "stem"
        self.act = act
        name = act_name(act)
        self.kernel_act = name if name in TRITON_ACTS else None

    @staticmethod
    def applies(conv: nn.Module, kind: str) -> bool:
        """Whether ``conv`` is a conv the ``kind`` kernel computes (square stride and padding)."""
        from ..runtime._triton import STEM_MAX_IN
        if not _square_conv(conv):
            return False
        if kind == "depthwise":
            return conv.groups == conv.out_channels == conv.in_channels
        return conv.groups == 1 and conv.in_channels <= STEM_MAX_IN

    def forward(self, x):
        if x.is_cuda and not torch.onnx.is_in_onnx_export():
            from ..runtime._triton import depthwise_conv, stem_conv
            kernel = depthwise_conv if self.kind == "depthwise" else stem_conv
            y = kernel(x, self.weight, self.bias, self.stride, self.padding, self.kernel_act)
            return y if self.kernel_act is not None else self.act(y)
        return self.act(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups))


class TritonProject(nn.Module):
    """The 1x1 project conv of a FusedMBConv / MBConv with the previous conv's bias and activation and the
    block's residual, as lowspace's Triton project kernel on CUDA (``lowspace.runtime``): its input is the
    previous conv's raw output. On other devices, and while exporting to ONNX, the same in PyTorch ops."""

    def __init__(self, pre_bias: torch.Tensor | None, act: str | None, project: nn.Conv2d, tune: bool = False):
        super().__init__()
        self.pre_bias = None if pre_bias is None else nn.Parameter(pre_bias.detach(), requires_grad=False)
        self.act, self.tune = act, tune
        self.weight_t = nn.Parameter(project.weight.detach().flatten(1).t().contiguous(), requires_grad=False)
        self.bias = None if project.bias is None else nn.Parameter(project.bias.detach(), requires_grad=False)

    @staticmethod
    def _plain(m: nn.Module) -> bool:
        """A ConvNormAct with no norm left (folded) whose conv is a plain ``nn.Conv2d``."""
        return isinstance(m, ConvNormAct) and isinstance(m.bn, nn.Identity) and type(m.conv) is nn.Conv2d

    @staticmethod
    def applies(project: nn.Module) -> bool:
        """Whether ``project`` (a ConvNormAct) is a plain 1x1 conv with no norm or activation left."""
        return (TritonProject._plain(project) and Conv1x1Linear.applies(project.conv)
                and isinstance(project.act, nn.Identity))

    @staticmethod
    def takes_over(previous: nn.Module) -> bool:
        """Whether the kernel can apply the bias and activation of ``previous`` (a ConvNormAct): a plain conv
        with no norm left. (Otherwise, as for the Triton depthwise kernel, ``previous`` keeps them.)"""
        from ..runtime._triton import TRITON_ACTS
        return TritonProject._plain(previous) and act_name(previous.act) in TRITON_ACTS

    def forward(self, h, residual=None):
        if h.is_cuda and not torch.onnx.is_in_onnx_export():
            from ..runtime._triton import project_conv
            return project_conv(h, self.pre_bias, self.weight_t, self.bias, residual, self.act, self.tune)
        from ..runtime._triton import _project_torch
        return _project_torch(h, self.pre_bias, self.weight_t, self.bias, residual, self.act)


class TritonDwQkv(nn.Module):
    """A LowFormer attention's depthwise projection (BatchNorm folded, bias moved into the QKV conv) and its QKV
    1x1 conv as lowspace's Triton dw + QKV kernel on CUDA (``lowspace.runtime``); on other devices, and while
    exporting to ONNX, the same in PyTorch ops."""

    def __init__(self, dw: nn.Conv2d, qkv: nn.Conv2d):
        super().__init__()
        self.dw_weight = nn.Parameter(dw.weight.detach(), requires_grad=False)
        self.stride, self.padding = dw.stride[0], dw.padding[0]
        self.weight_t = nn.Parameter(qkv.weight.detach().flatten(1).t().contiguous(), requires_grad=False)
        self.bias = None if qkv.bias is None else nn.Parameter(qkv.bias.detach(), requires_grad=False)

    @staticmethod
    def applies(dw: nn.Module, qkv: nn.Module) -> bool:
        """Whether ``dw`` is a bias-free depthwise conv the kernel takes and ``qkv`` a plain 1x1 conv."""
        return (TritonConvAct.applies(dw, "depthwise") and dw.bias is None
                and type(qkv) is nn.Conv2d and Conv1x1Linear.applies(qkv))

    def forward(self, x):
        if x.is_cuda and not torch.onnx.is_in_onnx_export():
            from ..runtime._triton import dw_qkv
            return dw_qkv(x, self.dw_weight, self.stride, self.padding, self.weight_t, self.bias)
        from ..runtime._triton import _dw_qkv_torch
        return _dw_qkv_torch(x, self.dw_weight, self.stride, self.padding, self.weight_t, self.bias)


class TritonFusedMBConv(nn.Module):
    """A whole FusedMBConv with its BatchNorms folded (k x k conv, bias, activation, 1x1 conv, bias, residual)
    as lowspace's Triton fused MBConv kernel on CUDA (``lowspace.runtime``), whose hidden tensor never leaves
    the chip; on other devices, and while exporting to ONNX, the same in PyTorch ops."""

    def __init__(self, block: "FusedMBConv"):
        super().__init__()
        from ..runtime._triton import fused_mbconv_rows
        conv1, conv2 = block.conv1.conv, block.conv2.conv
        self.kernel_size, self.stride, self.padding = conv1.kernel_size[0], conv1.stride[0], conv1.padding[0]
        self.act, self.residual = act_name(block.conv1.act), block.residual
        self.w1_rows = nn.Parameter(fused_mbconv_rows(conv1.weight.detach()), requires_grad=False)
        self.b1 = None if conv1.bias is None else nn.Parameter(conv1.bias.detach(), requires_grad=False)
        self.w2_t = nn.Parameter(conv2.weight.detach().flatten(1).t().contiguous(), requires_grad=False)
        self.b2 = None if conv2.bias is None else nn.Parameter(conv2.bias.detach(), requires_grad=False)

    @staticmethod
    def applies(block: "FusedMBConv") -> bool:
        """Whether ``block``'s convs are plain (norms folded) with an activation the kernel has: a square
        dense k x k conv, then a 1x1 conv with no activation."""
        from ..runtime._triton import TRITON_ACTS
        first = block.conv1
        return (TritonProject._plain(first) and _square_conv(first.conv) and first.conv.groups == 1
                and act_name(first.act) in TRITON_ACTS and TritonProject.applies(block.conv2))

    @staticmethod
    def takes(x: torch.Tensor) -> bool:
        return True

    def forward(self, x):
        args = (x, self.w1_rows, self.b1, self.kernel_size, self.stride, self.padding, self.act, self.w2_t,
                self.b2, x if self.residual else None)
        if x.is_cuda and not torch.onnx.is_in_onnx_export():
            from ..runtime._triton import fused_mbconv
            return fused_mbconv(*args)
        from ..runtime._triton import _fused_mbconv_torch
        return _fused_mbconv_torch(*args)


class TritonMBConv(nn.Module):
    """A whole MBConv with its BatchNorm folded (1x1 expand conv, bias, activation, depthwise conv, bias,
    activation, 1x1 project conv, bias, residual) as lowspace's Triton MBConv kernel on CUDA for maps of at most
    ``MBCONV_MAX_POSITIONS`` positions (``lowspace.runtime``; the block runs its layers on larger ones); on
    other devices, and while exporting to ONNX, the same in PyTorch ops."""

    def __init__(self, block: "MBConv"):
        super().__init__()
        expand, dw, project = block.expand.conv, block.dw.conv, block.project.conv
        self.kernel_size, self.stride, self.padding = dw.kernel_size[0], dw.stride[0], dw.padding[0]
        self.act1, self.act2, self.residual = act_name(block.expand.act), act_name(block.dw.act), block.residual

        def frozen(t):
            return None if t is None else nn.Parameter(t.detach().contiguous(), requires_grad=False)
        self.w1_t, self.b1 = frozen(expand.weight.flatten(1).t()), frozen(expand.bias)
        self.dw_taps, self.bd = frozen(dw.weight.flatten(1).t()), frozen(dw.bias)  # (k * k, hidden)
        self.w2_t, self.b2 = frozen(project.weight.flatten(1).t()), frozen(project.bias)

    @staticmethod
    def applies(block: "MBConv") -> bool:
        """Whether ``block``'s convs are plain (norm folded) with activations the kernel has: a 1x1 expand
        conv, a square depthwise conv, a 1x1 project conv with no activation."""
        from ..runtime._triton import TRITON_ACTS
        expand, dw = block.expand, block.dw
        return (TritonProject._plain(expand) and Conv1x1Linear.applies(expand.conv)
                and TritonProject._plain(dw) and TritonConvAct.applies(dw.conv, "depthwise")
                and act_name(expand.act) in TRITON_ACTS and act_name(dw.act) in TRITON_ACTS
                and TritonProject.applies(block.project))

    @staticmethod
    def takes(x: torch.Tensor) -> bool:
        """Whether the kernel takes ``x`` (its map small enough on CUDA; anything elsewhere)."""
        from ..runtime._triton import MBCONV_MAX_POSITIONS
        return not x.is_cuda or x.shape[-2] * x.shape[-1] <= MBCONV_MAX_POSITIONS

    def forward(self, x):
        args = (x, self.w1_t, self.b1, self.act1, self.dw_taps, self.bd, self.kernel_size, self.stride,
                self.padding, self.act2, self.w2_t, self.b2, x if self.residual else None)
        if x.is_cuda and not torch.onnx.is_in_onnx_export():
            from ..runtime._triton import mbconv
            return mbconv(*args)
        from ..runtime._triton import _mbconv_torch
        return _mbconv_torch(*args)


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

    @torch.no_grad()
    def fold_norm(self) -> None:
        """Fold the BatchNorm (eval-mode statistics) into the conv, which gains a bias; no-op without one."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = _conv_like(self.conv, *fold_bn(self.conv.weight, self.conv.bias, self.bn))
            self.bn = nn.Identity()

    @torch.no_grad()
    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """Fold the BatchNorm (``fold_bn``); then, with no norm left, a conv may become a matmul
        (``conv1x1``, ``convkxk``), a depthwise conv one Triton kernel with its activation (``triton``), and so may a
        dense conv with few input channels, the stem's (``triton_stem``)."""
        options = _options(options)
        if options.fold_bn:
            self.fold_norm()
        if isinstance(self.bn, nn.BatchNorm2d):
            return
        if ((options.triton is True and TritonConvAct.applies(self.conv, "depthwise"))
                or (options.triton_stem and TritonConvAct.applies(self.conv, "stem"))):
            self.conv, self.act = TritonConvAct(self.conv, self.act), nn.Identity()
        else:
            self.conv = as_matmul(self.conv, options)


class _ConvChain(nn.Module):
    """What FusedMBConv and MBConv share: their ConvNormActs (named in ``layers``) run in order, with an
    identity residual when ``residual``."""

    layers: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.chain: nn.Module | None = None  # the whole block as one kernel (with triton_chain)

    def _set_residual(self, residual: bool) -> None:
        self.residual = residual
        self.drop_path = DropPath(0.0) if residual else nn.Identity()

    def last_norm(self) -> nn.Module:
        return getattr(self, self.layers[-1]).bn

    def forward(self, x):
        if self.chain is not None and self.chain.takes(x):
            return self.chain(x)
        y = x
        *first, last = self.layers
        for name in first:
            y = getattr(self, name)(y)
        project = getattr(self, last)
        if isinstance(project, TritonProject):
            return project(y, x if self.residual else None)
        y = project(y)
        return x + self.drop_path(y) if self.residual else y

    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """Drop path goes (the convs rewrite themselves). With ``triton_chain`` (and ``fold_bn``), the norms
        are folded and a block whose convs are then plain gets :attr:`chain`, itself as one Triton kernel
        (:class:`TritonFusedMBConv`, :class:`TritonMBConv`), which :meth:`forward` runs on the inputs it takes.
        With ``triton_project``, the convs are rewritten first, then the 1x1 project conv and the residual
        become one :class:`TritonProject`, which also takes over the previous conv's bias and activation where
        that conv is still a plain conv."""
        self.drop_path = nn.Identity()
        options = _options(options)
        if options.triton_chain and options.fold_bn and self.chain is None:
            for name in self.layers:
                getattr(self, name).fold_norm()
            kernel = TritonFusedMBConv if isinstance(self, FusedMBConv) else TritonMBConv
            self.chain = kernel(self) if kernel.applies(self) else None
        if not options.triton_project or isinstance(getattr(self, self.layers[-1]), TritonProject):
            return
        for name in self.layers:
            getattr(self, name).reparameterize(options)
        previous, project = (getattr(self, name) for name in self.layers[-2:])
        if not TritonProject.applies(project):
            return
        tune = options.triton_project == "autotune"
        if TritonProject.takes_over(previous):
            conv = previous.conv
            fused = TritonProject(conv.bias, act_name(previous.act), project.conv, tune)
            previous.conv, previous.act = _conv_like(conv, conv.weight, None), nn.Identity()
        else:
            fused = TritonProject(None, None, project.conv, tune)
        setattr(self, self.layers[-1], fused)


class FusedMBConv(_ConvChain):
    """k x k conv to the hidden width (+BN+act), then 1x1 conv to ``out_channels`` (+BN)."""

    layers = ("conv1", "conv2")

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=4.0, act="hardswish",
                 bias=False, residual=False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.conv1 = ConvNormAct(in_channels, hidden, kernel_size, stride, bias=bias, act=act)
        self.conv2 = ConvNormAct(hidden, out_channels, 1)
        self._set_residual(residual)


class MBConv(_ConvChain):
    """1x1 expand (+act), k x k depthwise (+act), 1x1 project (+BN); as upstream, no norm on the first two."""

    layers = ("expand", "dw", "project")

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, expand_ratio=4.0, act="hardswish",
                 bias=False, residual=False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expand = ConvNormAct(in_channels, hidden, 1, bias=bias, norm=False, act=act)
        self.dw = ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden, bias=bias, norm=False, act=act)
        self.project = ConvNormAct(hidden, out_channels, 1)
        self._set_residual(residual)


CONV_BLOCK_TYPES = {"fused_mbconv": FusedMBConv, "mbconv": MBConv}


def conv_block(kind: str, *args, **kwargs) -> nn.Module:
    """A FusedMBConv or MBConv by name."""
    return CONV_BLOCK_TYPES[kind](*args, **kwargs)


def _sdpa(q, k, v, kernel: str) -> torch.Tensor:
    if q.shape[-2] == 1:
        # A single token attends to itself alone: the softmax weight is exactly 1. (Its views' strides are
        # arbitrary, which the memory-efficient CUDA kernel rejects.)
        return v
    if kernel == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v)


class LowFormerAttention(nn.Module):
    """Attention over a strided, depthwise-projected copy of the feature map.

    Q, K and V all live at 1/stride resolution (depthwise k x k conv + BN, then a 1x1 conv to 3 * heads *
    head_dim channels laid out per head as [q | k | v]). The merged heads are brought back to full
    resolution and to ``channels`` by a dense transposed conv (the output projection folded in) or by a
    1x1 conv and bilinear interpolation, then cropped to the input size (odd sizes).

    Inference switches (set by :meth:`reparameterize`): ``channels_last_qkv`` reads Q, K and V as views of
    the NHWC layout; ``sdpa`` picks the attention kernel (``auto``: PyTorch's choice).
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
        self.channels_last_qkv = False
        self.sdpa = "auto"

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Multi-head attention on a (N, 3*A, h, w) map laid out per head as [q|k|v]; returns (N, A, h, w)."""
        n, _, h, w = qkv.shape
        width = self.heads * self.head_dim
        if self.channels_last_qkv:
            # NHWC view: channel = head * 3d + {q, k, v} * d + e; for channels_last input these are views.
            t = qkv.permute(0, 2, 3, 1).reshape(n, h * w, self.heads, 3, self.head_dim)
            q, k, v = (u.transpose(1, 2) for u in t.unbind(3))
            o = _sdpa(q, k, v, self.sdpa)
            return o.transpose(1, 2).reshape(n, h, w, width).permute(0, 3, 1, 2)
        t = qkv.reshape(n, self.heads, 3 * self.head_dim, h * w).transpose(-1, -2)
        q, k, v = t.split(self.head_dim, dim=-1)
        o = _sdpa(q, k, v, self.sdpa)
        return o.transpose(-1, -2).reshape(n, width, h, w)

    def forward(self, x):
        height, width = x.shape[-2:]
        o = self.up(self.attend(self.qkv(self.proj(x))))
        if self.interpolate and o.shape[-2:] != (height, width):
            o = F.interpolate(o, size=(height, width), mode="bilinear", align_corners=False)
        return o[..., :height, :width]

    @torch.no_grad()
    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """``fuse_attention``: Q/K/V as channels-last views, the projection's folded bias moved into the
        QKV conv, a stride-1 transposed conv as a plain conv; ``upsample="subpixel"``: a strided transposed
        conv as a 3x3 conv and pixel shuffle; ``triton_attention``: the projection and the QKV conv as one
        Triton kernel (after ``fuse_attention``); ``conv1x1``, ``sdpa`` as everywhere."""
        options = _options(options)
        self.sdpa = options.sdpa
        fused = isinstance(self.qkv, TritonDwQkv)  # rewritten before: the projection is inside it
        if options.fold_bn and not fused:
            self.proj.fold_norm()
        if options.fuse_attention:
            self.channels_last_qkv = True
            if not fused:
                self._move_proj_bias()
        if (options.triton_attention and self.channels_last_qkv and not fused
                and isinstance(self.proj.bn, nn.Identity) and isinstance(self.proj.act, nn.Identity)
                and TritonDwQkv.applies(self.proj.conv, self.qkv)):
            self.qkv, self.proj = TritonDwQkv(self.proj.conv, self.qkv), nn.Identity()
        self.qkv = as_matmul(self.qkv, options)
        self.up = self._inference_up(options)

    def _move_proj_bias(self) -> None:
        # qkv(dw(x) + b) = qkv(dw(x)) + W_qkv b: the 1x1 conv absorbs the (folded) projection's bias.
        dw = self.proj.conv
        if not (isinstance(self.proj.bn, nn.Identity) and isinstance(dw, nn.Conv2d) and dw.bias is not None
                and isinstance(self.qkv, nn.Conv2d)):
            return
        w = self.qkv.weight
        bias = w.flatten(1).double() @ dw.bias.double()
        if self.qkv.bias is not None:
            bias = bias + self.qkv.bias.double()
        self.qkv = _conv_like(self.qkv, w, bias.to(w.dtype))
        self.proj.conv = _conv_like(dw, dw.weight, None)

    def _inference_up(self, options: DeployOptions) -> nn.Module:
        up = self.up
        if not isinstance(up, nn.ConvTranspose2d):
            return as_matmul(up, options)
        stride, padding = up.stride[0], up.padding[0]
        if options.fuse_attention and stride == 1:
            weight, pad = conv_transpose_as_conv(up.weight, padding)
            return _conv_like(up, weight, up.bias, stride=1, padding=pad, groups=1)
        if options.upsample == "subpixel" and stride > 1:
            weight, bias = conv_transpose_as_subpixel(up.weight, up.bias, stride, padding)
            return nn.Sequential(_conv_like(up, weight, bias, stride=1, padding=1, groups=1), nn.PixelShuffle(stride))
        return up


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group (normalizes over C, H and W), computed one of three ways (``mode``, all the
    same function): ``native`` (``F.group_norm``); ``decomposed``: mean / variance ops in float32 that a
    compiler fuses freely; ``channels_last``: for a channels-last input a LayerNorm over each sample's
    (H, W, C) block, which is contiguous there, plus the per-channel affine, so no layout round trip to NCHW
    and back (other inputs take the native path). :meth:`reparameterize` sets it from the ``groupnorm``
    deploy option; :func:`use_groupnorm_mode` sets it on any ``GroupNorm(1, C)`` (the training fast path)."""

    def __init__(self, channels: int):
        super().__init__(1, channels)
        self.mode = "native"

    def forward(self, x):
        if self.mode == "decomposed":
            xf = x.float()
            var, mean = torch.var_mean(xf, dim=(1, 2, 3), keepdim=True, correction=0)
            y = (xf - mean) * torch.rsqrt(var + self.eps)
            return (y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]).to(x.dtype)
        if (self.mode == "channels_last" and x.dim() == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            n, c, h, w = x.shape
            y = F.layer_norm(x.permute(0, 2, 3, 1), (h, w, c), eps=self.eps).permute(0, 3, 1, 2)
            return torch.addcmul(self.bias.view(1, -1, 1, 1), y, self.weight.view(1, -1, 1, 1)) if self.affine else y
        return super().forward(x)

    def reparameterize(self, options: DeployOptions | None = None) -> None:
        mode = _options(options).groupnorm
        self.mode = "native" if mode == "auto" else mode  # unresolved (no protocol known): the plain way


def use_groupnorm_mode(model: nn.Module, mode: str) -> int:
    """Compute every ``GroupNorm(1, C)`` of ``model`` (the blocks' :class:`GroupNorm1` or a plain one, as in
    timm models) the :class:`GroupNorm1` way ``mode``, in place (same parameters and state dict); returns how
    many norms it set."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and m.num_groups == 1:
            if not isinstance(m, GroupNorm1):
                m.__class__ = GroupNorm1
            m.mode = mode
            count += 1
    return count


class ConvMlp(nn.Module):
    """1x1 conv to ``hidden`` (bias), activation, 1x1 conv back (bias)."""

    def __init__(self, channels, hidden, act="gelu"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """``conv1x1="linear"``: both convs as matmuls."""
        options = _options(options)
        self.fc1, self.fc2 = as_matmul(self.fc1, options), as_matmul(self.fc2, options)


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
            attention = dict(attention)
            prenorm = attention.pop("norm", "groupnorm")
            self.attn_norm = GroupNorm1(channels) if prenorm == "groupnorm" else nn.Identity()
            self.attn = LowFormerAttention(channels, **attention)
            if mlp_ratio > 0:
                self.mlp_norm = GroupNorm1(channels)
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

    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """Drop paths go (the branches rewrite themselves)."""
        self.drop_path_local = nn.Identity()
        if self.attn is not None:
            self.drop_path_attn = nn.Identity()
        if self.mlp is not None:
            self.drop_path_mlp = nn.Identity()


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
        ref = next(self.parameters(), None)
        factory = {} if ref is None else dict(device=ref.device, dtype=ref.dtype)
        self.classifier = nn.Linear(self.num_features, num_classes, **factory) if num_classes > 0 else nn.Identity()

    def forward(self, x, pre_logits: bool = False):
        x = self.conv(x).mean((2, 3))
        x = self.dropout(self.act(self.norm(self.fc(x))))
        return x if pre_logits else self.classifier(x)

    def reparameterize(self, options: DeployOptions | None = None) -> None:
        """Dropout goes (the conv rewrites itself)."""
        self.dropout = nn.Identity()


def inference_rewrites(model: nn.Module) -> list[str]:
    """Names of the inference rewrites present in ``model`` (as :meth:`reparameterize` left it)."""
    mods = list(model.modules())
    attns = [m for m in mods if isinstance(m, LowFormerAttention)]
    found = {
        "fold_bn": not any(isinstance(m, nn.BatchNorm2d) for m in mods),
        "fuse_attention": any(a.channels_last_qkv for a in attns),
        "subpixel_upsample": any(isinstance(m, nn.PixelShuffle) for m in mods),
        "conv1x1_as_linear": any(isinstance(m, Conv1x1Linear) for m in mods),
        "convkxk_as_im2col": any(isinstance(m, ConvIm2colLinear) for m in mods),
        "triton_depthwise": any(isinstance(m, TritonConvAct) and m.kind == "depthwise" for m in mods),
        "triton_stem": any(isinstance(m, TritonConvAct) and m.kind == "stem" for m in mods),
        "triton_project": any(isinstance(m, TritonProject) for m in mods),
        "triton_attention": any(isinstance(m, TritonDwQkv) for m in mods),
        "triton_chain": any(isinstance(m, (TritonFusedMBConv, TritonMBConv)) for m in mods),
    }
    out = [name for name, present in found.items() if present]
    norms = {f"groupnorm_{m.mode}" for m in mods if isinstance(m, GroupNorm1) and m.mode != "native"}
    return out + sorted(norms) + sorted({f"sdpa_{a.sdpa}" for a in attns if a.sdpa != "auto"})
