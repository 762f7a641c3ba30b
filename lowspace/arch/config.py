"""Declarative architecture configs for LowFormer-family networks.

An :class:`ArchConfig` is a tree of frozen dataclasses built on :mod:`lowspace.config`: every field declares
its type and allowed values, so a config is checked whenever it is built (from Python, a dict, YAML or
``--set``), and each class's ``validate()`` adds the checks that involve several fields (can the network
run at its input resolution, do the heads divide the width). Errors are ``ConfigError``s
naming the dotted field path. Nothing here imports torch.

Conventions (the official LowFormer code's, except where noted):

* The stem is a stride-2 3x3 conv (``stem.width`` channels) followed by ``stem.depth`` residual blocks.
* Every stage is an optional ``downsample`` block followed by ``depth`` blocks at the stage width.
  (The official code counts the stride-2 block inside the depth of stages 1-2 but not of stages 3-4;
  here the depth never counts it.)
* A ``lowformer`` stage places attention on some of its blocks (``attention.placement``). A block with
  attention is ``x + Attn(norm(x))``, then ``x + MLP(GN(x))`` when ``mlp_ratio > 0``, then
  ``x + Local(x)``; a block without attention is the local conv alone.
* Hidden widths are ``round(ratio x channels)`` (expand ratios on a block's input width, MLP ratios on the
  stage width); a ratio that rounds to zero channels is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..config import Config, option
from ..errors import ConfigError

CONV_BLOCKS = ("fused_mbconv", "mbconv")
STAGE_BLOCKS = CONV_BLOCKS + ("lowformer",)
LOCAL_BLOCKS = ("auto",) + CONV_BLOCKS
ACTIVATIONS = ("hardswish", "relu", "relu6", "silu", "gelu")
MLP_ACTIVATIONS = ("gelu", "gelu_tanh", "hardswish", "relu", "silu")
UPSAMPLE_KINDS = ("conv_transpose", "interpolate")
ATTENTION_NORMS = ("groupnorm", "none")
ATTENTION_STRIDES = (1, 2, 4)
DOWNSAMPLE_STRIDES = (1, 2)
KERNEL_SIZES = (1, 3, 5, 7, 9)
MAX_WIDTH = 8192
MAX_CLASSES = 1_000_000
# The official LowFormer block switches its local conv from FusedMBConv to MBConv at this width.
AUTO_LOCAL_MBCONV_WIDTH = 256
_PLACEMENT_RE = re.compile(r"all|none|last:(\d+)|every:(\d+)")
_PLACEMENT_HELP = "allowed: 'all', 'none', 'last:K', 'every:N' or a list of block indices"


def _ratio(default: float, low_open: bool = True) -> Any:
    """An expand or MLP ratio: hidden width = round(ratio x channels), at most 16x."""
    return option(default, gt=0, le=16) if low_open else option(default, ge=0, le=16)


def _check_hidden(path: str, ratio: float, channels: int, what: str) -> None:
    if round(ratio * channels) < 1:
        raise ConfigError(path, ratio, f"{what} ratio x {channels} channels rounds to 0 hidden channels")


@dataclass(frozen=True)
class StemConfig(Config):
    """Stride-2 3x3 conv to ``width`` channels, then ``depth`` residual ``block``s (expand on input)."""

    width: int = option(16, ge=1, le=MAX_WIDTH)
    depth: int = option(0, ge=0, le=32)
    block: str = option("fused_mbconv", choices=CONV_BLOCKS)
    expand_ratio: float = _ratio(4.0)
    kernel_size: int = option(3, choices=KERNEL_SIZES)

    def validate(self) -> None:
        _check_hidden("expand_ratio", self.expand_ratio, self.width, "expand")


@dataclass(frozen=True)
class DownsampleConfig(Config):
    """The first block of a stage: changes width and (with stride 2) halves the resolution."""

    block: str = option("fused_mbconv", choices=CONV_BLOCKS)
    stride: int = option(2, choices=DOWNSAMPLE_STRIDES)
    expand_ratio: float = _ratio(4.0)
    kernel_size: int = option(3, choices=KERNEL_SIZES)


@dataclass(frozen=True)
class AttentionConfig(Config):
    """LowFormer attention of a ``lowformer`` stage.

    placement: ``all``, ``none``, ``last:K``, ``every:N`` (blocks N-1, 2N-1, ...) or a list of block
        indices. Blocks without attention are local-conv blocks.
    stride: tokens attend at 1/stride of the stage resolution (1, 2 or 4).
    kernel_size: depthwise kernel of the strided projection before Q/K/V.
    heads, head_dim: ints or ``auto``. Both ``auto``: the official rule (heads = max(1, C*m // 30),
        head_dim = (C // heads) * m, m = 0.5 for C > 80 else 1). One given: the other is derived from the
        attention width C // 2, which it must divide.
    upsample: ``conv_transpose`` (the paper: a dense transposed conv, output projection folded in) or
        ``interpolate`` (1x1 conv at token resolution, then bilinear resize).
    norm: pre-attention norm, ``groupnorm`` (GroupNorm(1, C)) or ``none`` (LowFormer-E3).
    """

    placement: Union[str, tuple[int, ...]] = option("all", ge=0, le=63)
    stride: int = option(1, choices=ATTENTION_STRIDES)
    kernel_size: int = option(3, choices=KERNEL_SIZES)
    heads: Union[int, Literal["auto"]] = option("auto", ge=1, le=1024)
    head_dim: Union[int, Literal["auto"]] = option("auto", ge=1, le=1024)
    upsample: str = option("conv_transpose", choices=UPSAMPLE_KINDS)
    norm: str = option("groupnorm", choices=ATTENTION_NORMS)

    def validate(self) -> None:
        pl = self.placement
        if isinstance(pl, str):
            m = _PLACEMENT_RE.fullmatch(pl)
            if not m:
                raise ConfigError("placement", pl, _PLACEMENT_HELP)
            n = m.group(1) or m.group(2)
            if n is not None and not 1 <= int(n) <= 64:
                raise ConfigError("placement", pl, "K and N must be between 1 and 64")
        elif len(set(pl)) != len(pl):
            raise ConfigError("placement", list(pl), "block indices must not repeat")


@dataclass(frozen=True)
class StageConfig(Config):
    """One stage: optional downsample block, then ``depth`` blocks of type ``block`` at ``width``.

    ``expand_ratio`` and ``kernel_size`` apply to conv blocks and to the local conv of ``lowformer``
    blocks. ``attention``, ``mlp_ratio`` (0 = no MLP) and ``local`` (``auto`` = fused below width 256,
    MBConv from 256) apply to ``lowformer`` stages only and are ignored elsewhere.
    """

    width: int = option(ge=1, le=MAX_WIDTH)
    depth: int = option(ge=0, le=64)
    block: str = option("fused_mbconv", choices=STAGE_BLOCKS)
    expand_ratio: float = _ratio(4.0)
    kernel_size: int = option(3, choices=KERNEL_SIZES)
    downsample: DownsampleConfig | None = field(default_factory=DownsampleConfig)
    attention: AttentionConfig | None = field(default_factory=AttentionConfig)
    mlp_ratio: float = _ratio(4.0, low_open=False)
    local: str = option("auto", choices=LOCAL_BLOCKS)

    def validate(self) -> None:
        _check_hidden("expand_ratio", self.expand_ratio, self.width, "expand")
        if self.mlp_ratio > 0:
            _check_hidden("mlp_ratio", self.mlp_ratio, self.width, "MLP")
        if self.attention is not None:
            self._validate_attention()

    def _validate_attention(self) -> None:
        att, lowformer = self.attention, self.block == "lowformer"
        if isinstance(att.placement, str):
            m = _PLACEMENT_RE.fullmatch(att.placement)
            if m.group(1) is not None and lowformer and int(m.group(1)) > self.depth:
                raise ConfigError("attention.placement", att.placement, f"the stage has only {self.depth} blocks")
        else:
            for j, idx in enumerate(att.placement):
                if idx >= max(self.depth, 1) or (lowformer and idx >= self.depth):
                    raise ConfigError(f"attention.placement.{j}", idx,
                                      f"block indices must be in 0..{self.depth - 1}")
        if not lowformer:
            return
        try:
            heads, head_dim = self.attention_heads()
        except ValueError as err:
            bad = "heads" if att.head_dim == "auto" else "head_dim"
            raise ConfigError(f"attention.{bad}", getattr(att, bad), str(err)) from None
        if heads < 1 or head_dim < 1:
            raise ConfigError("attention.heads", att.heads, f"width {self.width} gives {heads} heads of dim {head_dim}")

    def attention_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks that carry attention (empty for conv stages)."""
        if self.block != "lowformer" or self.attention is None:
            return ()
        return resolve_placement(self.attention.placement, self.depth)

    def attention_heads(self) -> tuple[int, int]:
        """(heads, head_dim) of this stage's attention, with ``auto`` resolved."""
        att = self.attention or AttentionConfig()
        return resolve_heads(self.width, att.heads, att.head_dim)

    def local_block(self) -> str:
        """The concrete local conv of a lowformer block (``auto`` resolved)."""
        if self.local != "auto":
            return self.local
        return "mbconv" if self.width >= AUTO_LOCAL_MBCONV_WIDTH else "fused_mbconv"


@dataclass(frozen=True)
class HeadConfig(Config):
    """Classifier head: 1x1 conv to widths[0] (+BN+act), pool, Linear to widths[1] + LayerNorm + act,
    dropout, Linear to classes. Fewer widths drop the later layers (``[]``: pool then classifier)."""

    widths: tuple[int, ...] = option((1536, 1600), ge=1, le=65536)
    dropout: float = option(0.0, ge=0, le=1)

    def validate(self) -> None:
        if len(self.widths) > 2:
            raise ConfigError("widths", list(self.widths), "at most two widths: [conv, linear]")


@dataclass(frozen=True)
class ArchConfig(Config):
    """A complete LowFormer-family architecture.

    ``name``, ``recipe`` (the training recipe a preset names) and ``notes`` are metadata: they do not
    change the network and are not part of :attr:`arch_id`.
    """

    config_kind = "architecture config"

    stages: tuple[StageConfig, ...]
    stem: StemConfig = field(default_factory=StemConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    resolution: int = option(224, ge=8, le=4096)
    in_chans: int = option(3, ge=1, le=64)
    num_classes: int = option(1000, ge=0, le=MAX_CLASSES)
    act: str = option("hardswish", choices=ACTIVATIONS)
    mlp_act: str = option("gelu", choices=MLP_ACTIVATIONS)
    name: str | None = None
    recipe: str | None = None
    notes: str | None = option(None, text=True)

    def validate(self) -> None:
        """The checks across stages: widths chain through downsample blocks, the network fits its input."""
        if not self.stages:
            raise ConfigError("stages", [], "at least one stage is required")
        channels = self.stem.width
        for i, st in enumerate(self.stages):
            p = f"stages.{i}"
            if st.downsample is not None:
                _check_hidden(f"{p}.downsample.expand_ratio", st.downsample.expand_ratio, channels, "expand")
            elif st.width != channels:
                raise ConfigError(f"{p}.downsample", None,
                                  f"a stage without a downsample block keeps the width of its input ({channels}), "
                                  f"but width is {st.width}; add a downsample block (stride 1 or 2)")
            if st.downsample is None and st.depth == 0:
                raise ConfigError(f"{p}.depth", 0, "a stage needs a downsample block or at least one block")
            channels = st.width
        # Every conv pads k//2, so sizes shrink as ceil(x / stride).
        for shape in feature_shapes(self):
            if shape.height < 1:
                raise ConfigError("resolution", self.resolution, f"the {shape.name} feature map shrinks below 1x1")

    # ---------------------------------------------------------------- identity
    def canonical_dict(self) -> dict[str, Any]:
        """The network's identity: defaults resolved, ignored fields and metadata dropped."""
        return _canonical(self)

    @property
    def arch_id(self) -> str:
        """Stable 12-hex-digit hash of :meth:`canonical_dict` (same network, same id)."""
        blob = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def validate(cfg: ArchConfig) -> None:
    """Check ``cfg`` again from its plain form (configs check themselves when built)."""
    ArchConfig.from_dict(cfg.to_dict())


# ==================================================================== resolution of derived values
def resolve_placement(placement, depth: int) -> tuple[int, ...]:
    """Block indices that carry attention for a placement spec and a stage depth."""
    if isinstance(placement, str):
        m = _PLACEMENT_RE.fullmatch(placement)
        if not m:
            raise ValueError(placement)
        if placement == "all":
            return tuple(range(depth))
        if placement == "none":
            return ()
        if m.group(1) is not None:
            k = int(m.group(1))
            return tuple(range(max(0, depth - k), depth))
        n = int(m.group(2))
        return tuple(i for i in range(depth) if (i + 1) % n == 0)
    return tuple(sorted(set(placement)))


def official_heads(width: int) -> tuple[int, int]:
    """The official LowFormer rule for (heads, head_dim) at a given width."""
    mul = 0.5 if width > 80 else 1.0
    heads = max(1, int(width * mul) // 30)
    head_dim = int((width // heads) * mul)
    return heads, head_dim


def resolve_heads(width: int, heads, head_dim) -> tuple[int, int]:
    """(heads, head_dim) with ``auto`` resolved; raises ValueError where heads do not divide C // 2."""
    if heads == "auto" and head_dim == "auto":
        return official_heads(width)
    attn_width = width // 2
    if heads == "auto":
        if attn_width % head_dim:
            raise ValueError(f"head_dim {head_dim} does not divide the attention width {attn_width}")
        return attn_width // head_dim, head_dim
    if head_dim == "auto":
        if attn_width % heads:
            raise ValueError(f"heads {heads} do not divide the attention width {attn_width}")
        return heads, attn_width // heads
    return heads, head_dim


def conv_out(size: int, stride: int) -> int:
    """Spatial size after a conv with padding k//2 (odd k): ceil(size / stride)."""
    return -(-size // stride)


@dataclass(frozen=True)
class StageShape:
    """What one part of the network looks like at a given input resolution."""

    name: str
    channels: int
    height: int
    width: int
    depth: int
    attention_blocks: tuple[int, ...] = ()
    attention_tokens: int = 0
    heads: int = 0
    head_dim: int = 0


def feature_shapes(cfg: ArchConfig, resolution: int | None = None) -> list[StageShape]:
    """Output channels and spatial size of the stem and of every stage (square input)."""
    res = resolution or cfg.resolution
    size = conv_out(res, 2)
    out = [StageShape("stem", cfg.stem.width, size, size, cfg.stem.depth)]
    for i, st in enumerate(cfg.stages):
        if st.downsample is not None:
            size = conv_out(size, st.downsample.stride)
        blocks = st.attention_blocks()
        tokens = heads = head_dim = 0
        if blocks:
            t = conv_out(size, st.attention.stride)
            tokens = t * t
            heads, head_dim = st.attention_heads()
        out.append(StageShape(f"stage{i + 1}", st.width, size, size, st.depth, blocks, tokens, heads, head_dim))
    return out


# ==================================================================== canonical form (arch_id)
def _canonical(cfg: ArchConfig) -> dict[str, Any]:
    stem = dataclasses.asdict(cfg.stem)
    if cfg.stem.depth == 0:
        stem = {"width": cfg.stem.width, "depth": 0}
    stages = []
    for st in cfg.stages:
        d: dict[str, Any] = {"width": st.width, "depth": st.depth, "block": st.block,
                             "downsample": None if st.downsample is None else dataclasses.asdict(st.downsample)}
        if st.depth:
            d["kernel_size"] = st.kernel_size
            d["expand_ratio"] = float(st.expand_ratio)
        if st.block == "lowformer" and st.depth:
            d["local"] = st.local_block()
            blocks = st.attention_blocks()
            if blocks:
                heads, head_dim = st.attention_heads()
                att = st.attention
                d["attention"] = {"blocks": list(blocks), "stride": att.stride, "kernel_size": att.kernel_size,
                                  "heads": heads, "head_dim": head_dim, "upsample": att.upsample,
                                  "norm": att.norm}
                d["mlp_ratio"] = float(st.mlp_ratio)
        stages.append(d)
    uses_mlp = any(s.get("mlp_ratio", 0) > 0 for s in stages)
    return {
        "resolution": cfg.resolution, "in_chans": cfg.in_chans, "num_classes": cfg.num_classes,
        "act": cfg.act, "mlp_act": cfg.mlp_act if uses_mlp else None,
        "stem": stem, "stages": stages,
        "head": {"widths": list(cfg.head.widths), "dropout": float(cfg.head.dropout)},
    }

