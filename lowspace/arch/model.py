"""The LowFormer-family network built from an :class:`ArchConfig`, with timm's model interface."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath

from ..errors import ConfigError
from .blocks import ClassifierHead, ConvNormAct, FusedMBConv, LowFormerBlock, MBConv, conv_block
from .config import ArchConfig, validate

# Evaluation as in the paper: bicubic resize to size / crop_pct, centre crop.
EVAL_CROP_PCT = 0.95
EVAL_INTERPOLATION = "bicubic"


def stage_indices(num_stages: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """The stages an ``indices`` argument names, as timm reads it (None: all; an int n: the last n; a
    sequence: those stages, negative ones counted from the end), and the last stage needed."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ConfigError("indices", indices, f"1 to {num_stages} (the last n stages)")
        take = list(range(num_stages - indices, num_stages))
    else:
        take = []
        for i in indices:
            if not -num_stages <= i < num_stages:
                raise ConfigError("indices", i, f"a stage index from {-num_stages} to {num_stages - 1}")
            take.append(i % num_stages)
        if not take:
            raise ConfigError("indices", list(indices), "at least one stage")
    return take, max(take)


def pretrained_cfg_for(cfg: ArchConfig) -> dict:
    """timm-style ``pretrained_cfg`` of a model of ``cfg``: what data pipelines need to feed it.

    ``input_size`` is (in_chans, resolution, resolution); mean / std are ImageNet's for 3 channels and,
    for any other channel count, ImageNet's averaged over RGB in every channel (a grey image normalized
    like the luminance of an ImageNet one); evaluation crops ``crop_pct`` 0.95 with bicubic resizing.
    """
    if cfg.in_chans == 3:
        mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    else:
        mean = (round(sum(IMAGENET_DEFAULT_MEAN) / 3, 4),) * cfg.in_chans
        std = (round(sum(IMAGENET_DEFAULT_STD) / 3, 4),) * cfg.in_chans
    return dict(input_size=(cfg.in_chans, cfg.resolution, cfg.resolution), interpolation=EVAL_INTERPOLATION,
                crop_pct=EVAL_CROP_PCT, crop_mode="center", mean=mean, std=std, num_classes=cfg.num_classes,
                first_conv="stem.conv.conv", classifier="head.classifier")


class Stage(nn.Module):
    """An optional downsample block followed by ``blocks``."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class Stem(nn.Module):
    """Stride-2 3x3 conv (+BN+act), then residual conv blocks."""

    def __init__(self, conv: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.conv = conv
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.conv(x))


def _block(st, act: str, mlp_act: str, with_attention: bool) -> nn.Module:
    """One block of stage ``st`` (at the stage's width; a lowformer block with or without attention)."""
    if st.block != "lowformer":
        return conv_block(st.block, st.width, st.width, st.kernel_size, 1, st.expand_ratio, act, residual=True)
    attention = None
    if with_attention:
        heads, head_dim = st.attention_heads()
        a = st.attention
        attention = dict(heads=heads, head_dim=head_dim, stride=a.stride, kernel_size=a.kernel_size,
                         upsample=a.upsample, norm=a.norm)
    return LowFormerBlock(st.width, st.local_block(), st.expand_ratio, st.kernel_size, act, attention,
                          st.mlp_ratio, mlp_act)


class LowFormer(nn.Module):
    """A LowFormer-family classifier with timm's model interface.

    ``forward_features`` / ``forward_head`` / ``forward_intermediates`` / ``prune_intermediate_layers`` /
    ``reset_classifier`` / ``feature_info`` / ``pretrained_cfg`` behave as in ``timm.models.lowformer``:
    intermediates and ``feature_info`` are the outputs of the stages (not the stem), so timm's feature
    extractors work on this model. ``cfg`` always describes the current network (classifier resets and
    pruning update it).

    Args:
        cfg: the architecture (validated again here).
        drop_path_rate: maximum stochastic-depth rate; see :func:`set_drop_path` for the schedule.
        drop_path_skip: number of residual branches (in order) that never get drop path.
        init: ``official`` (trunc-normal 0.02 on conv/linear weights, zero biases, zeroed last BN gamma of
            residual conv blocks, as the official training code) or ``torch`` (PyTorch defaults).
    """

    def __init__(self, cfg: ArchConfig, drop_path_rate: float = 0.0, drop_path_skip: int = 0,
                 init: str = "official"):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        act = cfg.act
        stem_cfg = cfg.stem
        stem_blocks = [conv_block(stem_cfg.block, stem_cfg.width, stem_cfg.width, stem_cfg.kernel_size, 1,
                                  stem_cfg.expand_ratio, act, residual=True) for _ in range(stem_cfg.depth)]
        self.stem = Stem(ConvNormAct(cfg.in_chans, stem_cfg.width, 3, 2, act=act), stem_blocks)

        channels, reduction = stem_cfg.width, 2
        self.feature_info = []
        stages = []
        for i, st in enumerate(cfg.stages):
            downsample = None
            if st.downsample is not None:
                ds = st.downsample
                downsample = conv_block(ds.block, channels, st.width, ds.kernel_size, ds.stride, ds.expand_ratio, act)
                reduction *= ds.stride
            attn_blocks = set(st.attention_blocks())
            stages.append(Stage(downsample, [_block(st, act, cfg.mlp_act, j in attn_blocks) for j in range(st.depth)]))
            channels = st.width
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.head = ClassifierHead(channels, cfg.head.widths, cfg.num_classes, cfg.head.dropout, act)
        init_weights(self, init)
        set_drop_path(self, drop_path_rate, drop_path_skip)

    @property
    def pretrained_cfg(self) -> dict:
        """See :func:`pretrained_cfg_for`."""
        return pretrained_cfg_for(self.cfg)

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled pre-logits features (``forward_head(x, pre_logits=True)``)."""
        return self.head.num_features

    # ----------------------------------------------------------------- timm's interface
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head on a feature map: logits, or the pooled pre-classifier features with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs for detection / segmentation necks, as timm.

        Args:
            indices: stages to return: the last n for an int, these (negative from the end) for a list,
                all for None.
            norm: no effect (LowFormer has no final norm).
            stop_early: do not run the stages after the last one asked for.
            output_fmt: ``NCHW`` only.
            intermediates_only: return the list alone instead of ``(final features, list)``.
        """
        if output_fmt != "NCHW":
            raise ConfigError("output_fmt", output_fmt, "'NCHW' (LowFormer's feature maps)")
        take, last = stage_indices(len(self.stages), indices)
        stages = self.stages[:last + 1] if stop_early else self.stages
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the intermediates ``indices`` do not need: the stages after the last one and (with
        ``prune_head``, or when stages go) the head's layers, leaving average pooling. Returns the
        indices as absolute stage numbers; ``cfg`` becomes that of the pruned network."""
        take, last = stage_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        if not (prune_head or cut):
            return take
        self.stages = self.stages[:last + 1]
        self.num_features = self.feature_info[last]["num_chs"]
        cfg = self.cfg
        self.cfg = cfg.replace(stages=tuple(cfg.stages[:last + 1]), num_classes=0,
                               head=dataclasses.replace(cfg.head, widths=()))
        ref = next(self.stem.parameters())
        self.head = ClassifierHead(self.num_features, (), 0, cfg.head.dropout, cfg.act).to(ref.device, ref.dtype)
        self.num_classes = 0
        return take

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none, the model returns the pooled features).
        ``global_pool``: None (keep) or ``avg``, the only pooling of LowFormer's head."""
        if global_pool not in (None, "avg"):
            raise ConfigError("global_pool", global_pool, "None or 'avg' (LowFormer's head pools by mean)")
        self.num_classes = num_classes
        self.head.reset(num_classes)
        self.cfg = self.cfg.replace(num_classes=num_classes)


def residual_branches(model: LowFormer) -> list[DropPath]:
    """Drop-path modules of the identity residuals inside the stages, in the official order (per block:
    local, attention, MLP). Stem blocks are excluded, as upstream."""
    out = []
    for stage in model.stages:
        for block in stage.blocks:
            if isinstance(block, LowFormerBlock):
                others = (block.drop_path_attn, block.drop_path_mlp)
                out += [block.drop_path_local] + [d for d in others if d is not None]
            elif isinstance(block.drop_path, DropPath):
                out.append(block.drop_path)
    return out


def set_drop_path(model: LowFormer, rate: float, skip: int = 0) -> list[float]:
    """Linear-by-index drop-path rates, as the official code: the first ``skip`` branches get 0, and branch i
    of the N that remain gets ``rate * (i + 1) / N``. Returns the rates. Training may rescale them over time
    (the official schedule)."""
    branches = residual_branches(model)
    n = len(branches) - skip
    rates = [0.0 if i < skip else rate * (i - skip + 1) / n for i in range(len(branches))]
    for branch, p in zip(branches, rates):
        branch.drop_prob = p
    return rates


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "official") -> None:
    """Initialize ``model`` in place (see :class:`LowFormer` for the schemes)."""
    if scheme == "torch":
        return
    if scheme != "official":
        raise ValueError(f"init scheme {scheme!r}: allowed 'official', 'torch'")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, (FusedMBConv, MBConv)) and m.residual:
            nn.init.zeros_(m.last_norm().weight)
        elif isinstance(m, LowFormerBlock):
            nn.init.zeros_(m.local.last_norm().weight)
