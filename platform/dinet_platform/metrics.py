"""Image metrics shared by the losses, validation and evaluation: PSNR, SSIM and MS-SSIM.

There is one implementation of each so that a number logged during training means the same as
the number in an evaluation report. All functions take (B, C, H, W) images in ``[0, max_val]``,
return one value per sample (shape ``(B,)``) and are differentiable.

SSIM uses a Gaussian window (11 taps, sigma 1.5, as in Wang et al. 2004) with reflect padding,
so :func:`ssim_map` has the same size as the image: a caller can average it over any pixel
region (for example the mouth box from :func:`dinet_platform.geometry.mouth_mask`) without
cropping the mask. Near the border the statistics therefore see mirrored pixels, which is a
small difference from the "valid" SSIM of scikit-image.

MS-SSIM defaults to 3 scales instead of the usual 5: DINet's smallest crop is 104x80, and five
halvings would shrink it to 7x5, smaller than the window. With 3 scales the coarsest image is
26x20, still wider than the 11-pixel window. The scale weights are the first ``levels`` of
Wang et al.'s five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised to sum to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents from Wang, Simoncelli & Bovik (2003), finest scale first."""


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(
            "expected two (B, C, H, W) images of the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of ``values`` (B, C, H, W) over the pixels where ``mask`` is 1.

    ``mask`` broadcasts to ``values``: (1 or B, 1 or C, H, W)."""
    if mask is None:
        return values.flatten(1).mean(dim=1)
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1)

PSNR_CAP_DB = 100.0
"""Where an identical-image PSNR (``inf``) is logged or stored: MLflow stores no infinity."""


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    max_val: float = 1.0,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample; ``inf`` where the images are identical.

    With ``mask`` (broadcastable to the images, 1 = counted) the mean squared error is taken over
    the masked pixels only, so a mouth-region PSNR is not diluted by the untouched face.
    """
    _check_pair(pred, target)
    mse = _masked_mean((pred.float() - target.float()) ** 2, mask)
    return 10.0 * torch.log10(max_val**2 / mse)


def psnr_from_mse(mse: float, max_val: float = 1.0) -> float:
    """PSNR in dB of a mean squared error (``inf`` for 0): for errors summed elsewhere."""
    return math.inf if mse <= 0 else 10.0 * math.log10(max_val**2 / mse)


def output_psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """One PSNR over every element of two tensors in ``[0, 1]`` (an optimized model's output
    against the fp32 model's, say)."""
    return psnr_from_mse(float(torch.mean((output.float() - reference.float()) ** 2)))


def _gaussian_window(
    window_size: int, sigma: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    coords = torch.arange(window_size, device=device, dtype=dtype) - (window_size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def _blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel with reflect padding (output keeps H x W)."""
    channels = images.shape[1]
    pad = window.numel() // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def _ssim_components(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int,
    sigma: float,
    max_val: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The luminance term and the contrast-structure term of SSIM, both (B, C, H, W)."""
    _check_pair(pred, target)
    if window_size % 2 == 0 or window_size < 3:
        raise ValueError(f"window_size must be an odd number >= 3, got {window_size}")
    height, width = pred.shape[-2:]
    if min(height, width) <= window_size // 2:
        raise ValueError(
            f"images of {height}x{width} are too small for an SSIM window of {window_size}"
        )
    x, y = pred.float(), target.float()
    window = _gaussian_window(window_size, sigma, x.device, x.dtype)
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    # One filter call for all five local statistics, in float32 even under autocast: the
    # variances are differences of nearly equal numbers.
    with torch.autocast(device_type=x.device.type, enabled=False):
        stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance, contrast_structure


def ssim_map(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    max_val: float = 1.0,
) -> torch.Tensor:
    """Per-pixel SSIM, (B, C, H, W), the same size as the inputs (see the module docstring)."""
    luminance, contrast_structure = _ssim_components(pred, target, window_size, sigma, max_val)
    return luminance * contrast_structure


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    max_val: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean SSIM per sample, (B,); 1 for identical images.

    With ``mask`` (broadcastable to the images, 1 = counted) the SSIM map is averaged over the
    masked pixels only; the local statistics still use the neighbours around each pixel.
    """
    return _masked_mean(ssim_map(pred, target, window_size, sigma, max_val), mask)


def ms_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    levels: int = 3,
    window_size: int = 11,
    sigma: float = 1.5,
    max_val: float = 1.0,
) -> torch.Tensor:
    """Multi-scale SSIM per sample, (B,), in [0, 1]; 1 for identical images.

    The contrast-structure term is taken at every scale and the luminance term only at the
    coarsest, as in Wang et al. (2003). Negative terms are clamped to a small positive value so
    the fractional powers stay defined (and differentiable) for badly mismatched images.
    ``levels`` may be 1 to 5; the coarsest scale must still be larger than half the window
    (3 levels with the 11-pixel window work down to 24 pixels on the shorter side).
    """
    _check_pair(pred, target)
    if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"levels must be between 1 and {len(MS_SSIM_WEIGHTS)}, got {levels}")
    smallest = min(pred.shape[-2:]) / 2 ** (levels - 1)
    if smallest <= window_size // 2:
        raise ValueError(
            f"images of {pred.shape[-2]}x{pred.shape[-1]} are too small for {levels} MS-SSIM "
            f"levels with window {window_size}: use fewer levels"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=pred.device)
    weights = weights / weights.sum()
    eps = 1e-6
    x, y = pred.float(), target.float()
    result = torch.ones(x.shape[0], device=x.device)
    for level in range(levels):
        luminance, contrast_structure = _ssim_components(x, y, window_size, sigma, max_val)
        term = contrast_structure
        if level == levels - 1:
            term = luminance * contrast_structure
        result = result * term.flatten(1).mean(dim=1).clamp_min(eps) ** weights[level]
        if level < levels - 1:
            size = (math.ceil(x.shape[-2] / 2), math.ceil(x.shape[-1] / 2))
            x = F.interpolate(x, size=size, mode="area")
            y = F.interpolate(y, size=size, mode="area")
    return result
