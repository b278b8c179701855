"""The seed's four attention modules (§3), as plain PyTorch.

Each branch maps a feature map ``x`` (B, C, h, w) to ``(attended, map)`` where ``map`` is a
(B, 1, h, w) spatial attention map for visualization. :class:`AttentionBlock` combines the
enabled branches at one position of the network, either one after another or through
:class:`AdaptiveAttentionFusion`, and blends the result in with a learned gate ``gamma`` that
starts at 0: a freshly initialised block is the identity, so adding attention to a trained
DINet starts from exactly that DINet's output and learns how much attention to use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.geometry import mouth_prior


class SpatialAttention(nn.Module):
    """CBAM-style: a channel gate from pooled statistics, then a spatial gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        avg = self.channel_mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.channel_mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(avg + peak)
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        spatial = torch.sigmoid(self.spatial_conv(stats))
        return x * spatial, spatial


class MouthFocusedAttention(nn.Module):
    """A learned spatial gate whose odds are multiplied by ``mouth_region_weight`` inside the
    mouth box: ``gate = sigmoid(logits + log(weight) * prior)``."""

    def __init__(self, channels: int, mouth_region_weight: float = 10.0, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )
        self.prior_logit = math.log(mouth_region_weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prior = mouth_prior(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        gate = torch.sigmoid(self.gate(x) + self.prior_logit * prior)
        return x * gate, gate


class MultiScaleAttention(nn.Module):
    """Spatial attention logits computed on the map pooled by each scale, averaged."""

    def __init__(self, channels: int, scales: list[int], reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.scales = list(scales)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
            )
            for _ in self.scales
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        logits = 0.0
        for scale, head in zip(self.scales, self.heads, strict=True):
            pooled = F.avg_pool2d(x, scale, ceil_mode=True) if scale > 1 else x
            logit = head(pooled)
            if scale > 1:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            logits = logits + logit
        attention = torch.sigmoid(logits / len(self.scales))
        return x * attention, attention


class AdaptiveAttentionFusion(nn.Module):
    """Input-dependent softmax weights over the branch outputs."""

    def __init__(self, channels: int, num_branches: int):
        super().__init__()
        self.weights = nn.Linear(channels, num_branches)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)  # start from an even mix

    def forward(
        self, x: torch.Tensor, branch_outputs: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.weights(x.mean((2, 3))), dim=1)  # (B, n)
        stacked = torch.stack(branch_outputs, dim=1)  # (B, n, C, h, w)
        fused = (weights[:, :, None, None, None] * stacked).sum(1)
        return fused, weights


class AttentionBlock(nn.Module):
    """The enabled attention branches at one position of the network."""

    def __init__(
        self,
        channels: int,
        *,
        spatial: bool,
        mouth_focused: bool,
        multi_scale: bool,
        adaptive_fusion: bool,
        scales: list[int],
        mouth_region_weight: float,
        reduction: int,
    ):
        super().__init__()
        branches: dict[str, nn.Module] = {}
        if spatial:
            branches["spatial"] = SpatialAttention(channels, reduction)
        if mouth_focused:
            branches["mouth_focused"] = MouthFocusedAttention(
                channels, mouth_region_weight, reduction
            )
        if multi_scale:
            branches["multi_scale"] = MultiScaleAttention(channels, scales, reduction)
        if not branches:
            raise ValueError("an AttentionBlock needs at least one enabled branch")
        self.branches = nn.ModuleDict(branches)
        self.fusion = (
            AdaptiveAttentionFusion(channels, len(branches))
            if adaptive_fusion and len(branches) > 1
            else None
        )
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps: dict[str, torch.Tensor] = {}
        if self.fusion is None:
            attended = x
            for name, branch in self.branches.items():
                attended, maps[name] = branch(attended)
        else:
            outputs = []
            for name, branch in self.branches.items():
                out, maps[name] = branch(x)
                outputs.append(out)
            attended, weights = self.fusion(x, outputs)
            maps["fused"] = sum(
                weights[:, i, None, None, None] * maps[name]
                for i, name in enumerate(self.branches)
            )
        return x + self.gamma * (attended - x), maps
