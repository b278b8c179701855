"""Gentle, clip-consistent augmentation (seed §7: the old pipeline blurred too much).

One :class:`AugmentParams` is drawn per training *sample* and applied to every frame of it
(target, clip, and the references when ``references: same``), so augmentation never creates
flicker between the frames a temporal loss compares. The defaults are deliberately mild:
+-5 % colour, +-2 px shift with a matching sub-degree rotation / +-1 % zoom, and a weak blur
on 5 % of samples. The warp uses bicubic sampling and is skipped entirely when the draw is
the identity, so augmentation adds no resampling blur of its own beyond what it asks for.

Deterministic: parameters come from a ``numpy.random.Generator`` the caller seeds per sample,
and every draw is made in a fixed order whether or not it is used.
Plain PyTorch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dinet_platform.config.schema import AugmentationConfig


@dataclass(frozen=True)
class AugmentParams:
    brightness: float = 1.0
    """Multiplicative gain."""
    contrast: float = 1.0
    """Scale of the deviation from each frame's mean grey."""
    saturation: float = 1.0
    """Scale of the deviation from each pixel's grey."""
    dx: float = 0.0
    dy: float = 0.0
    """Shift in pixels of the crop being augmented."""
    angle: float = 0.0
    """Rotation about the crop centre, radians."""
    scale: float = 1.0
    blur_sigma: float = 0.0
    """Gaussian blur sigma in pixels; 0 means no blur."""

    @property
    def has_warp(self) -> bool:
        return self.dx != 0.0 or self.dy != 0.0 or self.angle != 0.0 or self.scale != 1.0

    @property
    def is_identity(self) -> bool:
        colour = self.brightness == 1.0 and self.contrast == 1.0 and self.saturation == 1.0
        return colour and not self.has_warp and self.blur_sigma == 0.0


IDENTITY = AugmentParams()


def sample_params(
    config: AugmentationConfig, rng: np.random.Generator, crop_shape: tuple[int, int]
) -> AugmentParams:
    """Draw one sample's parameters; ``crop_shape`` is the (H, W) being augmented.

    The rotation and zoom are bounded so that no pixel of the crop moves more than
    ``affine_jitter_px`` because of them (on top of the shift).
    """
    draws = rng.uniform(-1.0, 1.0, size=7)
    blur_roll = rng.random()
    if not config.enabled:
        return IDENTITY
    jitter = config.color_jitter
    shift = config.affine_jitter_px
    half_extent = max(crop_shape) / 2.0
    return AugmentParams(
        brightness=1.0 + jitter * draws[0],
        contrast=1.0 + jitter * draws[1],
        saturation=1.0 + jitter * draws[2],
        dx=shift * draws[3],
        dy=shift * draws[4],
        angle=(shift / half_extent) * draws[5] / 2.0,
        scale=1.0 + (shift / half_extent) * draws[6] / 2.0,
        blur_sigma=config.blur_sigma if blur_roll < config.blur_probability else 0.0,
    )


def _pixel_to_normalised(height: int, width: int) -> torch.Tensor:
    # align_corners=False: pixel centre x maps to (2x + 1) / W - 1.
    return torch.tensor(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]],
        dtype=torch.float64,
    )


def forward_matrix(params: AugmentParams, height: int, width: int) -> np.ndarray:
    """3x3 map from input pixel coordinates to augmented pixel coordinates."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = math.cos(params.angle) * params.scale, math.sin(params.angle) * params.scale
    return np.array(
        [
            [cos, -sin, cx - cos * cx + sin * cy + params.dx],
            [sin, cos, cy - sin * cx - cos * cy + params.dy],
            [0.0, 0.0, 1.0],
        ]
    )


def transform_points(
    points: np.ndarray, params: AugmentParams, height: int, width: int
) -> np.ndarray:
    """Move (..., 2) pixel points exactly as :func:`apply` moves the image under them."""
    if not params.has_warp:
        return points
    matrix = forward_matrix(params, height, width)
    flat = points.reshape(-1, 2).astype(np.float64)
    moved = flat @ matrix[:2, :2].T + matrix[:2, 2]
    return moved.reshape(points.shape).astype(points.dtype)


def _warp(frames: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    _, _, height, width = frames.shape
    inverse = torch.from_numpy(np.linalg.inv(forward_matrix(params, height, width)))
    norm = _pixel_to_normalised(height, width)
    theta = (norm @ inverse @ torch.linalg.inv(norm))[:2].to(frames.dtype)
    # One grid for all frames: the same warp by construction, and K times less grid work.
    # (Equal to F.affine_grid(theta[None], ..., align_corners=False), without its batched matmul.)
    xs = (2 * torch.arange(width, dtype=frames.dtype) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=frames.dtype) + 1) / height - 1
    grid_x = theta[0, 0] * xs[None, :] + theta[0, 1] * ys[:, None] + theta[0, 2]
    grid_y = theta[1, 0] * xs[None, :] + theta[1, 1] * ys[:, None] + theta[1, 2]
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].expand(frames.shape[0], -1, -1, -1)
    return F.grid_sample(frames, grid, mode="bicubic", padding_mode="border", align_corners=False)


def _blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=frames.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = frames.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.pad(frames, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, horizontal, groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, vertical, groups=channels)


def _colour(frames: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Brightness, then contrast about the frame's mean grey, then saturation, in one pass.

    All three are linear in the pixel: ``y = c * b * S x + (1 - c) * b * mean_grey(x)`` with
    ``S = s I + (1 - s) 1 w^T`` (grey weights ``w`` sum to 1, so ``S`` keeps the grey level).
    """
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype)
    s, b, c = params.saturation, params.brightness, params.contrast
    matrix = c * b * (s * torch.eye(3, dtype=frames.dtype) + (1 - s) * weights.expand(3, 3))
    count, _, height, width = frames.shape
    flat = frames.reshape(count, 3, height * width)
    mean_grey = torch.einsum("c,kcp->k", weights, flat) / (height * width)
    out = torch.matmul(matrix, flat) + ((1 - c) * b * mean_grey).view(count, 1, 1)
    return out.view(count, 3, height, width)


def apply(frames: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Augment (K, 3, H, W) RGB frames in [0, 1] with one set of parameters for all K."""
    if params.is_identity:
        return frames
    out = frames
    if params.has_warp:
        out = _warp(out, params)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        out = _colour(out, params)
    if params.blur_sigma > 0:
        out = _blur(out, params.blur_sigma)
    return out.clamp(0.0, 1.0)
