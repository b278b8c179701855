"""PatchGAN discriminators as in DINet: one on single frames, one on 5-frame clips.

The clip discriminator sees ``clip_len`` frames stacked along channels (15 channels for 5 RGB
frames), so it judges motion as well as appearance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.models.blocks import scaled


class _DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=4)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), 0.2)
        return F.avg_pool2d(x, 2) if self.pool else x


class Discriminator(nn.Module):
    """LSGAN patch discriminator; returns a (B, 1, h, w) map of real/fake scores."""

    def __init__(
        self,
        num_channels: int,
        block_expansion: int = 64,
        num_blocks: int = 4,
        max_features: int = 256,
        width: float = 1.0,
    ):
        super().__init__()
        expansion = scaled(block_expansion, width)
        ceiling = scaled(max_features, width)
        blocks = []
        in_ch = num_channels
        for i in range(num_blocks):
            out_ch = min(ceiling, expansion * 2 ** (i + 1))
            blocks.append(_DownBlock(in_ch, out_ch, pool=i != num_blocks - 1))
            in_ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(in_ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.down_blocks:
            x = block(x)
        return self.conv(x)


def stack_clip(clip: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T*C, H, W), the clip discriminator's input layout."""
    batch, frames, channels, height, width = clip.shape
    return clip.reshape(batch, frames * channels, height, width)
