"""Optional speed-ups of the training step that keep the model's function and weights unchanged."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch.blocks import GroupNorm1


class ChannelsLastGroupNorm(GroupNorm1):
    """``GroupNorm(1, C)`` that keeps channels-last inputs channels-last.

    With one group the statistics run over (C, H, W) of each sample, which for a channels-last tensor is
    one contiguous block: a LayerNorm over the (H, W, C) view plus a per-channel affine computes the same
    function without the layout round trip (to NCHW and back) that the native kernel needs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "decomposed", False):
            return super().forward(x)
        if (self.num_groups != 1 or x.dim() != 4 or x.is_contiguous()
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return nn.GroupNorm.forward(self, x)
        n, c, h, w = x.shape
        y = F.layer_norm(x.permute(0, 2, 3, 1), (h, w, c), eps=self.eps).permute(0, 3, 1, 2)
        if self.affine:
            y = torch.addcmul(self.bias.view(1, -1, 1, 1), y, self.weight.view(1, -1, 1, 1))
        return y


def channels_last_groupnorm(model: nn.Module) -> int:
    """Switch every ``GroupNorm(1, C)`` of ``model`` (the blocks' ``GroupNorm1`` or a plain one) to
    :class:`ChannelsLastGroupNorm` in place (same parameters and state dict); returns how many were switched."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and not isinstance(m, ChannelsLastGroupNorm) and m.num_groups == 1:
            m.decomposed = getattr(m, "decomposed", False)
            m.__class__ = ChannelsLastGroupNorm
            count += 1
    return count
