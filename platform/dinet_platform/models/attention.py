"""The seed's four attention modules (§3), as plain PyTorch.

Each branch maps a feature map ``x`` (B, C, h, w) to its gate in factored form,
``(channel, spatial)``: ``channel`` is (B, C, 1, 1) or None and ``spatial`` a (B, 1, h, w) map
(also what is visualized); the attended features are ``x * channel * spatial``.
:class:`AttentionBlock` combines the enabled branches at one position of the network, either one
after another or through :class:`AdaptiveAttentionFusion`, and blends the result in with a
learned gate ``gamma`` that starts at 0: a freshly initialised block is the identity, so adding
attention to a trained DINet starts from exactly that DINet's output and learns how much
attention to use.

Keeping the gates factored is what makes attention cheap: the fused output
``sum_i w_i * (x * g_i)`` equals ``x * sum_i w_i * g_i``, so a block touches the full
(B, C, h, w) features a couple of times instead of once per branch, stack and blend.
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
        channel = torch.sigmoid(avg + peak)
        gated = x * channel
        stats = torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], 1)
        return channel, torch.sigmoid(self.spatial_conv(stats))


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

    def forward(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        prior = mouth_prior(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        return None, torch.sigmoid(self.gate(x) + self.prior_logit * prior)


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

    def forward(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        size = x.shape[-2:]
        logits = 0.0
        for scale, head in zip(self.scales, self.heads, strict=True):
            pooled = F.avg_pool2d(x, scale, ceil_mode=True) if scale > 1 else x
            logit = head(pooled)
            if scale > 1:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            logits = logits + logit
        return None, torch.sigmoid(logits / len(self.scales))


class AdaptiveAttentionFusion(nn.Module):
    """Input-dependent softmax weights (B, n) over the branches."""

    def __init__(self, channels: int, num_branches: int):
        super().__init__()
        self.weights = nn.Linear(channels, num_branches)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)  # start from an even mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.weights(x.mean((2, 3))), dim=1)


def _apply(x: torch.Tensor, gate: tuple[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
    channel, spatial = gate
    return x * spatial if channel is None else x * channel * spatial


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
        return attend(x, self.branches, self.fusion, self.gamma, maps), maps


def attend(
    x: torch.Tensor,
    branches: nn.ModuleDict,
    fusion: AdaptiveAttentionFusion | None,
    gamma: torch.Tensor,
    maps: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x`` blended with its attended features by ``gamma``; each branch's spatial map (and the
    fused one) is put in ``maps`` when one is given."""
    if fusion is None:
        attended = x
        for name, branch in branches.items():
            channel, spatial = branch(attended)
            attended = _apply(attended, (channel, spatial))
            if maps is not None:
                maps[name] = spatial
        return x + gamma * (attended - x)
    weights = fusion(x)
    # Spatial-only gates mix on (B, 1, h, w) maps; only a channel gate widens to (B, C, h, w).
    spatial_mix, channel_mix = 0.0, 0.0
    for i, (name, branch) in enumerate(branches.items()):
        channel, spatial = branch(x)
        weight = weights[:, i, None, None, None]
        if channel is None:
            spatial_mix = spatial_mix + weight * spatial
        else:
            channel_mix = channel_mix + (weight * channel) * spatial
        if maps is not None:
            maps[name] = spatial
            maps["fused"] = maps.get("fused", 0.0) + weight * spatial
    return x * (1.0 + gamma * (channel_mix + spatial_mix - 1.0))
