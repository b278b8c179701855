"""Structured stand-in frames for smoke tests and benchmarks when no shards are at hand.

Static int8 calibration and PSNR comparisons are only meaningful on inputs whose statistics
look like images: uniform noise drives every activation to the same range and hides (or
exaggerates) quantization error. These are smooth random fields (low-resolution noise upsampled
bicubically) with the mouth box masked in the source, as DINet's data loader does, and smooth
audio features. Real deployments calibrate on frames from their shards instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.geometry import crop_geometry
from dinet_platform.optimize.quantize import CalibrationBatch

NUM_REFERENCES = 5


def _smooth_field(
    batch: int, channels: int, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    low = torch.rand(batch, channels, max(2, height // 12), max(2, width // 12),
                     generator=generator)
    field = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return (0.15 + 0.7 * field).clamp(0.0, 1.0)


def synthetic_batch(
    mouth_size: int, batch: int, *, audio_channels: int = 29, seed: int = 0
) -> CalibrationBatch:
    """One batch ``(source, audio, references)`` at the crop size of ``mouth_size``: source
    faces with the mouth box zeroed, five smooth reference faces each, smooth audio windows."""
    geometry = crop_geometry(mouth_size)
    height, width = geometry.crop_shape
    generator = torch.Generator().manual_seed(seed)
    source = _smooth_field(batch, 3, height, width, generator)
    rows, cols = geometry.mouth.slices()
    source[..., rows, cols] = 0.0
    references = _smooth_field(batch, 3 * NUM_REFERENCES, height, width, generator)
    audio = torch.randn(batch, audio_channels, 9, generator=generator)
    audio = F.avg_pool1d(audio, kernel_size=5, stride=1)  # (B, A, 5), correlated over time
    return CalibrationBatch(source=source, audio=audio, references=references)


def synthetic_batches(
    mouth_size: int, batch: int, count: int, *, audio_channels: int = 29, seed: int = 0
) -> list[CalibrationBatch]:
    """``count`` independent :func:`synthetic_batch` es (seeds ``seed .. seed + count - 1``)."""
    return [
        synthetic_batch(mouth_size, batch, audio_channels=audio_channels, seed=seed + index)
        for index in range(count)
    ]


def settle_batchnorm(generator: nn.Module, batches: list[CalibrationBatch]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (in place; returns the
    generator in eval mode).

    A freshly initialised DINet has running stats mean 0 / var 1 that match none of its
    activations, so its eval output is almost constant (std ~0.002) and any PSNR against it is
    meaningless. With the statistics settled on image-like inputs, activations are normalised as
    in a trained model and the output spans a real range: the stand-in we use to measure
    quantization error when no trained checkpoint is at hand. Weights are not touched."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
        norm.train()
    with torch.no_grad():
        for batch in batches:
            generator(batch.source, batch.references, batch.audio)
    for norm, (momentum, _) in zip(norms, saved, strict=True):
        norm.momentum = momentum
    return generator.eval()
