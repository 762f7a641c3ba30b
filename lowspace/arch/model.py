"""The LowFormer-family network built from an :class:`ArchConfig`."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath

from .blocks import ClassifierHead, ConvNormAct, FusedMBConv, LowFormerBlock, MBConv, conv_block
from .config import ArchConfig, validate


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


class LowFormer(nn.Module):
    """A LowFormer-family classifier.

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
        self.feature_info = [dict(num_chs=channels, reduction=reduction, module="stem")]
        stages = []
        for i, st in enumerate(cfg.stages):
            downsample = None
            if st.downsample is not None:
                ds = st.downsample
                downsample = conv_block(ds.block, channels, st.width, ds.kernel_size, ds.stride, ds.expand_ratio, act)
                reduction *= ds.stride
            attn_blocks = set(st.attention_blocks())
            blocks = []
            for j in range(st.depth):
                if st.block == "lowformer":
                    attention = None
                    if j in attn_blocks:
                        heads, head_dim = st.attention_heads()
                        a = st.attention
                        attention = dict(heads=heads, head_dim=head_dim, stride=a.stride, kernel_size=a.kernel_size,
                                         upsample=a.upsample, norm=a.norm)
                    blocks.append(LowFormerBlock(st.width, st.local_block(), st.expand_ratio, st.kernel_size, act,
                                                 attention, st.mlp_ratio, cfg.mlp_act))
                else:
                    blocks.append(conv_block(st.block, st.width, st.width, st.kernel_size, 1, st.expand_ratio, act,
                                             residual=True))
            stages.append(Stage(downsample, blocks))
            channels = st.width
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.head = ClassifierHead(channels, cfg.head.widths, cfg.num_classes, cfg.head.dropout, act)
        init_weights(self, init)
        set_drop_path(self, drop_path_rate, drop_path_skip)

    # ----------------------------------------------------------------- timm-style interface
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head on a feature map: logits, or the pooled pre-classifier features with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the stem and of every stage (for detection / segmentation necks);
        ``feature_info`` gives their channels and reductions."""
        x = self.stem(x)
        out = [x]
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: none, the model returns features)."""
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
                out += [block.drop_path_local] + [d for d in (block.drop_path_attn, block.drop_path_mlp) if d is not None]
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
