"""Training losses: per-frame reconstruction, perception and GAN terms, and temporal consistency.

Image metrics (PSNR, SSIM, MS-SSIM) live in :mod:`dinet_platform.metrics`, shared with
validation and evaluation.
"""

from dinet_platform.losses.flow import estimate_flow, occlusion_mask, warp
from dinet_platform.losses.reconstruction import (
    VGG19_LAYERS,
    MSSSIMLoss,
    VGG19PerceptualLoss,
    l1_loss,
    lsgan_loss,
    mouth_weighted_l1,
    vgg19_features,
)
from dinet_platform.losses.temporal import TemporalConsistencyLoss, TemporalLossTerms

__all__ = [
    "VGG19_LAYERS",
    "MSSSIMLoss",
    "TemporalConsistencyLoss",
    "TemporalLossTerms",
    "VGG19PerceptualLoss",
    "estimate_flow",
    "l1_loss",
    "lsgan_loss",
    "mouth_weighted_l1",
    "occlusion_mask",
    "vgg19_features",
    "warp",
]
