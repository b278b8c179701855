"""Building blocks of DINet, named and laid out as in the public release so state_dicts match.

Every block keeps the original attribute names (``conv``, ``norm``, ``conv1``...) because those
names are the checkpoint keys. BatchNorm replaces the original's SynchronizedBatchNorm, which has
the same parameters and buffers; DDP training converts it with ``SyncBatchNorm`` when wanted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SameBlock2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=padding, stride=2)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class UpBlock2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2)
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm -> relu -> conv, twice)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.norm2 = nn.BatchNorm2d(in_ch)
        self.channel_conv = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        skip = x if self.channel_conv is None else self.channel_conv(x)
        return out + skip


class SameBlock1d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock1d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel_size, padding=padding, stride=2)
        self.norm = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock1d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, in_ch, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv1d(in_ch, out_ch, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm1d(in_ch)
        self.norm2 = nn.BatchNorm1d(in_ch)
        self.channel_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        skip = x if self.channel_conv is None else self.channel_conv(x)
        return out + skip


class AdaAT(nn.Module):
    """Adaptive affine transformation: a per-channel rotation, scale and translation of the
    feature map, predicted from a parameter code, applied with one 3-D ``grid_sample``.

    The sampling grid reproduces the original exactly (coordinates spanning [-1, 1] with
    ``align_corners=False`` sampling, including along the channel axis), so public weights
    produce the same output.
    """

    def __init__(self, para_ch: int, feature_ch: int):
        super().__init__()
        self.feature_ch = feature_ch
        self.commn_linear = nn.Sequential(nn.Linear(para_ch, para_ch), nn.ReLU())
        self.scale = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Sigmoid())
        self.rotation = nn.Sequential(nn.Linear(para_ch, feature_ch), nn.Tanh())
        self.translation = nn.Sequential(nn.Linear(para_ch, 2 * feature_ch), nn.Tanh())

    def channel_grids(
        self, para_code: torch.Tensor, height: int, width: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Each channel's rotated, scaled and translated sampling grid ``(B, D, H, W, 2)``
        (x, y in [-1, 1] before the transform), from the parameter code ``(B, para_ch)``."""
        batch, depth = para_code.shape[0], self.feature_ch
        para_code = self.commn_linear(para_code)
        scale = (self.scale(para_code) * 2).view(batch, depth, 1, 1, 1)
        angle = (self.rotation(para_code) * 3.14159).view(batch, depth, 1, 1)
        translation = self.translation(para_code).view(batch, depth, 1, 1, 2)

        kw = {"device": para_code.device, "dtype": dtype}
        xs = torch.linspace(-1.0, 1.0, width, **kw).view(1, 1, 1, width)
        ys = torch.linspace(-1.0, 1.0, height, **kw).view(1, 1, height, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        warped_x = (cos * xs - sin * ys).unsqueeze(-1)
        warped_y = (sin * xs + cos * ys).unsqueeze(-1)
        return torch.cat([warped_x, warped_y], dim=-1) * scale + translation

    def forward(self, feature_map: torch.Tensor, para_code: torch.Tensor) -> torch.Tensor:
        batch, depth, height, width = feature_map.shape
        grid_xy = self.channel_grids(para_code, height, width, feature_map.dtype)
        zs = torch.linspace(-1.0, 1.0, depth, device=feature_map.device, dtype=feature_map.dtype)
        grid_z = zs.view(1, depth, 1, 1, 1).expand(batch, depth, height, width, 1)
        grid = torch.cat([grid_xy, grid_z], dim=-1)  # (B, D, H, W, 3)
        sampled = F.grid_sample(feature_map.unsqueeze(1), grid, align_corners=False)
        return sampled.squeeze(1)


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier: exact at 1.0, otherwise a multiple of 4 (at least 8)."""
    if width == 1.0:
        return channels
    return max(8, round(channels * width / 4) * 4)
