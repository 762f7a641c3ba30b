"""Declarative architecture configs for LowFormer-family networks.

An :class:`ArchConfig` is a tree of frozen dataclasses. It is parsed from plain dicts / YAML by
:meth:`ArchConfig.from_dict` (type checks, unknown keys) and checked by :func:`validate` (allowed values
and whether the network can run at its input resolution). Both raise :class:`lowspace.ConfigError`
naming the dotted field path. Nothing here imports torch.

Conventions (see LOWFORMER.md for the official ones):

* The stem is a stride-2 3x3 conv (``stem.width`` channels) followed by ``stem.depth`` residual blocks.
* Every stage is an optional ``downsample`` block followed by ``depth`` blocks at the stage width.
  (The official code counts the stride-2 block inside the depth of stages 1-2 but not of stages 3-4;
  here the depth never counts it.)
* A ``lowformer`` stage places attention on some of its blocks (``attention.placement``). A block with
  attention is ``x + Attn(norm(x))``, then ``x + MLP(GN(x))`` when ``mlp_ratio > 0``, then
  ``x + Local(x)``; a block without attention is the local conv alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from ..errors import ConfigError, unknown_key_error

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
# The official LowFormer block switches its local conv from FusedMBConv to MBConv at this width.
AUTO_LOCAL_MBCONV_WIDTH = 256
_PLACEMENT_RE = re.compile(r"^(all|none|last:(\d+)|every:(\d+))$")


@dataclass(frozen=True)
class StemConfig:
    """Stride-2 3x3 conv to ``width`` channels, then ``depth`` residual ``block``s (expand on input)."""

    width: int = 16
    depth: int = 0
    block: str = "fused_mbconv"
    expand_ratio: float = 4.0
    kernel_size: int = 3


@dataclass(frozen=True)
class DownsampleConfig:
    """The first block of a stage: changes width and (with stride 2) halves the resolution."""

    block: str = "fused_mbconv"
    stride: int = 2
    expand_ratio: float = 4.0
    kernel_size: int = 3


@dataclass(frozen=True)
class AttentionConfig:
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

    placement: Union[str, tuple[int, ...]] = "all"
    stride: int = 1
    kernel_size: int = 3
    heads: Union[int, str] = "auto"
    head_dim: Union[int, str] = "auto"
    upsample: str = "conv_transpose"
    norm: str = "groupnorm"


@dataclass(frozen=True)
class StageConfig:
    """One stage: optional downsample block, then ``depth`` blocks of type ``block`` at ``width``.

    ``expand_ratio`` and ``kernel_size`` apply to conv blocks and to the local conv of ``lowformer``
    blocks. ``attention``, ``mlp_ratio`` (0 = no MLP) and ``local`` (``auto`` = fused below width 256,
    MBConv from 256) apply to ``lowformer`` stages only and are ignored elsewhere.
    """

    width: int
    depth: int
    block: str = "fused_mbconv"
    expand_ratio: float = 4.0
    kernel_size: int = 3
    downsample: DownsampleConfig | None = field(default_factory=DownsampleConfig)
    attention: AttentionConfig | None = field(default_factory=AttentionConfig)
    mlp_ratio: float = 4.0
    local: str = "auto"

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
class HeadConfig:
    """Classifier head: 1x1 conv to widths[0] (+BN+act), pool, Linear to widths[1] + LayerNorm + act,
    dropout, Linear to classes. Fewer widths drop the later layers (``[]``: pool then classifier)."""

    widths: tuple[int, ...] = (1536, 1600)
    dropout: float = 0.0


@dataclass(frozen=True)
class ArchConfig:
    """A complete LowFormer-family architecture.

    ``name``, ``recipe`` (the training recipe a preset names) and ``notes`` are metadata: they do not
    change the network and are not part of :attr:`arch_id`.
    """

    stages: tuple[StageConfig, ...]
    stem: StemConfig = field(default_factory=StemConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    resolution: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    act: str = "hardswish"
    mlp_act: str = "gelu"
    name: str | None = None
    recipe: str | None = None
    notes: str | None = None

    def __post_init__(self):
        _freeze_sequences(self)
        validate(self)

    # ---------------------------------------------------------------- serialization
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "ArchConfig":
        """Parse a plain dict (as read from YAML). Unknown keys and wrong types raise ConfigError."""
        try:
            return _parse(cls, data, "", source)
        except ConfigError as err:
            raise _with_source(err, source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field as set; ``from_dict(to_dict())`` gives an equal config."""
        return _to_plain(self)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "ArchConfig":
        """Read a config from a YAML file path or from YAML text."""
        text, source = _read_text(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError("<yaml>", str(path_or_text)[:80], f"not valid YAML ({err})", source) from None
        return cls.from_dict(data, source=source)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written (atomically) to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            from ..io import atomic_write_text
            atomic_write_text(path, text)
        return text

    # ---------------------------------------------------------------- identity
    def canonical_dict(self) -> dict[str, Any]:
        """The network's identity: defaults resolved, ignored fields and metadata dropped."""
        return _canonical(self)

    @property
    def arch_id(self) -> str:
        """Stable 12-hex-digit hash of :meth:`canonical_dict` (same network, same id)."""
        blob = json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes) -> "ArchConfig":
        """A copy with top-level fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# ==================================================================== resolution of derived values
def resolve_placement(placement, depth: int) -> tuple[int, ...]:
    """Block indices that carry attention for a placement spec and a stage depth."""
    if isinstance(placement, str):
        m = _PLACEMENT_RE.match(placement)
        if not m:
            raise ValueError(placement)
        if m.group(1) == "all":
            return tuple(range(depth))
        if m.group(1) == "none":
            return ()
        if m.group(2) is not None:
            k = int(m.group(2))
            return tuple(range(max(0, depth - k), depth))
        n = int(m.group(3))
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


# ==================================================================== validation (the one place)
def _check_choice(path, value, options):
    if value not in options:
        raise ConfigError(path, value, "allowed: " + ", ".join(map(str, options)))


def _check_int(path, value, low, high=None):
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(path, value, f"must be an integer {rng}")


def _check_float(path, value, low, high=None, low_open=False):
    bad = value < low or (low_open and value == low) or (high is not None and value > high)
    if bad or math.isnan(value):
        lo = ">" if low_open else ">="
        rng = f"{lo} {low}" + ("" if high is None else f" and <= {high}")
        raise ConfigError(path, value, f"must be a number {rng}")


def _check_kernel(path, value):
    if value not in KERNEL_SIZES:
        raise ConfigError(path, value, "kernel sizes must be odd: " + ", ".join(map(str, KERNEL_SIZES)))


def _check_expand(path, ratio, in_channels):
    _check_float(path, ratio, 0.0, 16.0, low_open=True)
    if round(ratio * in_channels) < 1:
        raise ConfigError(path, ratio, f"expand ratio x {in_channels} input channels rounds to 0 hidden channels")


def validate(cfg: ArchConfig) -> None:
    """Check every value of ``cfg`` and that the network can run at ``cfg.resolution``."""
    _check_int("resolution", cfg.resolution, 8, 4096)
    _check_int("in_chans", cfg.in_chans, 1, 64)
    _check_int("num_classes", cfg.num_classes, 0)
    _check_choice("act", cfg.act, ACTIVATIONS)
    _check_choice("mlp_act", cfg.mlp_act, MLP_ACTIVATIONS)

    stem = cfg.stem
    _check_int("stem.width", stem.width, 1, 8192)
    _check_int("stem.depth", stem.depth, 0, 32)
    _check_choice("stem.block", stem.block, CONV_BLOCKS)
    _check_kernel("stem.kernel_size", stem.kernel_size)
    _check_expand("stem.expand_ratio", stem.expand_ratio, stem.width)

    if not cfg.stages:
        raise ConfigError("stages", [], "at least one stage is required")
    channels = stem.width
    for i, st in enumerate(cfg.stages):
        p = f"stages.{i}"
        _check_int(f"{p}.width", st.width, 1, 8192)
        _check_int(f"{p}.depth", st.depth, 0, 64)
        _check_choice(f"{p}.block", st.block, STAGE_BLOCKS)
        _check_kernel(f"{p}.kernel_size", st.kernel_size)
        _check_expand(f"{p}.expand_ratio", st.expand_ratio, st.width)
        ds = st.downsample
        if ds is not None:
            _check_choice(f"{p}.downsample.block", ds.block, CONV_BLOCKS)
            _check_choice(f"{p}.downsample.stride", ds.stride, DOWNSAMPLE_STRIDES)
            _check_kernel(f"{p}.downsample.kernel_size", ds.kernel_size)
            _check_expand(f"{p}.downsample.expand_ratio", ds.expand_ratio, channels)
        elif st.width != channels:
            raise ConfigError(f"{p}.downsample", None,
                              f"a stage without a downsample block keeps the width of its input ({channels}), "
                              f"but width is {st.width}; add a downsample block (stride 1 or 2)")
        if ds is None and st.depth == 0:
            raise ConfigError(f"{p}.depth", 0, "a stage needs a downsample block or at least one block")
        _check_float(f"{p}.mlp_ratio", st.mlp_ratio, 0.0, 16.0)
        _check_choice(f"{p}.local", st.local, LOCAL_BLOCKS)
        if st.attention is not None:
            _validate_attention(f"{p}.attention", st)
        channels = st.width

    _check_float("head.dropout", cfg.head.dropout, 0.0, 1.0)
    if len(cfg.head.widths) > 2:
        raise ConfigError("head.widths", list(cfg.head.widths), "at most two widths: [conv, linear]")
    for j, w in enumerate(cfg.head.widths):
        _check_int(f"head.widths.{j}", w, 1, 65536)

    # Can the network run at its resolution? (Every conv pads k//2, so sizes shrink as ceil(x/stride).)
    for shape in feature_shapes(cfg):
        if shape.height < 1:
            raise ConfigError("resolution", cfg.resolution, f"the {shape.name} feature map shrinks below 1x1")


def _validate_attention(p: str, st: StageConfig) -> None:
    att = st.attention
    pl = att.placement
    if isinstance(pl, str):
        if not _PLACEMENT_RE.match(pl):
            raise ConfigError(f"{p}.placement", pl,
                              "allowed: 'all', 'none', 'last:K', 'every:N' or a list of block indices")
        m = _PLACEMENT_RE.match(pl)
        n = m.group(2) or m.group(3)
        if n is not None and int(n) < 1:
            raise ConfigError(f"{p}.placement", pl, "K and N must be >= 1")
        if m.group(2) is not None and st.block == "lowformer" and int(n) > st.depth:
            raise ConfigError(f"{p}.placement", pl, f"the stage has only {st.depth} blocks")
    else:
        for j, idx in enumerate(pl):
            if not 0 <= idx < max(st.depth, 1) or (st.block == "lowformer" and idx >= st.depth):
                raise ConfigError(f"{p}.placement.{j}", idx, f"block indices must be in 0..{st.depth - 1}")
        if len(set(pl)) != len(pl):
            raise ConfigError(f"{p}.placement", list(pl), "block indices must not repeat")
    _check_choice(f"{p}.stride", att.stride, ATTENTION_STRIDES)
    _check_kernel(f"{p}.kernel_size", att.kernel_size)
    _check_choice(f"{p}.upsample", att.upsample, UPSAMPLE_KINDS)
    _check_choice(f"{p}.norm", att.norm, ATTENTION_NORMS)
    for name in ("heads", "head_dim"):
        v = getattr(att, name)
        if isinstance(v, str):
            if v != "auto":
                raise ConfigError(f"{p}.{name}", v, "a positive integer or 'auto'")
        else:
            _check_int(f"{p}.{name}", v, 1, 1024)
    if st.block == "lowformer":
        try:
            heads, head_dim = st.attention_heads()
        except ValueError as err:
            bad = "heads" if att.head_dim == "auto" else "head_dim"
            raise ConfigError(f"{p}.{bad}", getattr(att, bad), str(err)) from None
        if heads < 1 or head_dim < 1:
            raise ConfigError(f"{p}.heads", att.heads, f"width {st.width} gives {heads} heads of dim {head_dim}")


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


# ==================================================================== dict <-> dataclass
def _freeze_sequences(obj) -> None:
    """Normalize values given from Python: lists become tuples (frozen configs stay hashable) and ints in
    float fields become floats (so ``expand_ratio=6`` and ``6.0`` are the same config)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, list):
            v = tuple(v)
            object.__setattr__(obj, f.name, v)
        if hints[f.name] is float and isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(obj, f.name, float(v))
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _freeze_sequences(v)
        if isinstance(v, (list, tuple)):
            for item in v:
                if dataclasses.is_dataclass(item):
                    _freeze_sequences(item)


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _parse(tp, value, path: str, source):
    origin = typing.get_origin(tp)
    where = path or "<root>"
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(where, None, "a value is required here")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _parse(opt, value, path, source)
            except ConfigError as err:
                errors.append(err)
        # Report the error of the option whose shape matched best (a mapping for dataclasses).
        for err in errors:
            if isinstance(value, Mapping) and "mapping" not in err.allowed:
                raise err
        alts = " or ".join(_type_name(o) for o in options if o is not type(None))
        raise ConfigError(where, value, f"expected {alts}")
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, value, f"expected a list of {_type_name(item_tp)}s")
        return tuple(_parse(item_tp, v, f"{path}.{i}", source) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(where, value, f"expected a mapping with keys: {', '.join(f.name for f in fields(tp))}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in fields(tp)]
        for key in value:
            if key not in names:
                raise unknown_key_error(path, str(key), names)
        kwargs = {}
        for f in fields(tp):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ConfigError(sub, None, "this field is required")
                continue
            kwargs[f.name] = _parse(hints[f.name], value[f.name], sub, source)
        return tp(**kwargs)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported config type {tp}")
    raise ConfigError(where, value, f"expected {_type_name(tp)}")


def _with_source(err: ConfigError, source: str | None) -> ConfigError:
    if source is None or err.source is not None:
        return err
    return ConfigError(err.path, err.value, err.allowed, source)


def _read_text(path_or_text: str | Path) -> tuple[str, str | None]:
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and str(path_or_text).endswith((".yaml", ".yml"))):
        path = Path(path_or_text)
        try:
            return path.read_text(), str(path)
        except OSError as err:
            raise ConfigError("<file>", str(path), f"cannot read the config file ({err.strerror})") from None
    return str(path_or_text), None
