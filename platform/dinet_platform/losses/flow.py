"""Dense optical flow without learned weights: pyramidal Lucas–Kanade in plain torch.

The temporal loss needs to know how the real video moves between frames. No pretrained flow
network is available here (nothing is downloaded), so flow is estimated classically: a
coarse-to-fine Lucas–Kanade on grayscale images, batched and vectorised, so it runs on CPU or
GPU in a few milliseconds for DINet-sized crops.

Convention: ``flow`` is (B, 2, H, W) in pixels, channel 0 horizontal (x) and channel 1 vertical
(y). ``warp(img, flow)`` samples ``img`` at ``x + flow(x)``, and ``estimate_flow(frame, other)``
returns the flow with ``warp(other, flow) ≈ frame``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at ``x + flow(x)`` with bilinear interpolation.

    Samples outside the image take the nearest border value; :func:`occlusion_mask` marks those
    pixels unreliable. Differentiable with respect to ``image`` (and ``flow``).
    """
    batch, _, height, width = image.shape
    if flow.shape != (batch, 2, height, width):
        raise ValueError(
            f"flow must be (B, 2, H, W) = {(batch, 2, height, width)}, got {tuple(flow.shape)}"
        )
    # Pixel coordinates need float32: in half precision they would be off by up to half a pixel.
    flow = flow.float()
    xs = torch.arange(width, device=image.device, dtype=torch.float32)
    ys = torch.arange(height, device=image.device, dtype=torch.float32)
    x = xs.view(1, 1, width) + flow[:, 0]
    y = ys.view(1, height, 1) + flow[:, 1]
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels.
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)
    sampled = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return sampled.to(image.dtype)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    channels = images.shape[1]
    if channels == 3:
        luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype)
        return (images * luma.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return images.mean(dim=1, keepdim=True)


def _blur_matrix(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(size, size) matrix applying a 1-D Gaussian with replicate padding along one axis."""
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-(offsets.float() ** 2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    columns = (torch.arange(size, device=device)[:, None] + offsets[None, :]).clamp(0, size - 1)
    matrix = torch.zeros(size, size, device=device)
    return matrix.scatter_add_(1, columns, kernel.expand(size, -1).contiguous())


def _gaussian_blur(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel with matrices from :func:`_blur_matrix`.

    Two small matrix products rather than a depthwise convolution: on CPU that is several times
    faster for these image sizes, and replicate padding is built into the matrices.
    """
    return rows @ images @ cols.T


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences, one-sided at the border."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    grad_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    grad_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return grad_x, grad_y


def _pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest first; each level is the area-average of the one before (odd sizes round up)."""
    pyramid = [images]
    for _ in range(levels - 1):
        height, width = pyramid[-1].shape[-2:]
        size = (math.ceil(height / 2), math.ceil(width / 2))
        pyramid.append(F.interpolate(pyramid[-1], size=size, mode="area"))
    return pyramid


def _auto_levels(height: int, width: int, min_size: int = 16) -> int:
    """As many halvings as keep the shorter side at least ``min_size`` (and 4 at most)."""
    levels = 1
    while levels < 4 and min(height, width) / 2**levels >= min_size:
        levels += 1
    return levels


def _upsample_flow(flow: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Resize a flow field to ``size`` and rescale its vectors to the new pixel units."""
    if flow.shape[-2:] == size:
        return flow
    scale_y = size[0] / flow.shape[-2]
    scale_x = size[1] / flow.shape[-1]
    resized = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([scale_x, scale_y], device=flow.device, dtype=flow.dtype)
    return resized * scale.view(1, 2, 1, 1)


def _lands_inside(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: where ``x + flow(x)`` lies within the image."""
    height, width = flow.shape[-2:]
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    dest_x = xs + flow[:, 0]
    dest_y = ys + flow[:, 1]
    inside = (dest_x >= 0) & (dest_x <= width - 1) & (dest_y >= 0) & (dest_y <= height - 1)
    return inside.unsqueeze(1)


def _refine(
    flow: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    iterations: int,
    window_sigma: float,
    regularization: float,
    max_step: float,
) -> torch.Tensor:
    """Gauss–Newton Lucas–Kanade steps at one pyramid level (grayscale (B, 1, h, w) images)."""
    height, width = target.shape[-2:]
    rows = _blur_matrix(height, window_sigma, target.device)
    cols = _blur_matrix(width, window_sigma, target.device)
    target_gx, target_gy = _gradients(target)
    for _ in range(iterations):
        warped = warp(source, flow)
        warped_gx, warped_gy = _gradients(warped)
        # Samples from beyond the border are repeated edge pixels, not evidence; averaging both
        # images' gradients makes the step symmetric and better posed.
        valid = _lands_inside(flow).to(target.dtype) / 2
        gx = (target_gx + warped_gx) * valid
        gy = (target_gy + warped_gy) * valid
        diff = warped - target
        products = torch.cat([gx * gx, gx * gy, gy * gy, gx * diff, gy * diff], dim=1)
        sxx, sxy, syy, sxt, syt = _gaussian_blur(products, rows, cols).unbind(dim=1)
        sxx = sxx + regularization
        syy = syy + regularization
        det = sxx * syy - sxy * sxy
        step_x = (sxy * syt - syy * sxt) / det
        step_y = (sxy * sxt - sxx * syt) / det
        flow = flow + torch.stack([step_x, step_y], dim=1).clamp(-max_step, max_step)
    return flow


@torch.no_grad()
def estimate_flow(
    frame: torch.Tensor,
    other: torch.Tensor,
    levels: int | None = None,
    iterations: int = 3,
    window_sigma: float = 2.5,
    regularization: float = 1e-6,
    max_step: float = 1.0,
) -> torch.Tensor:
    """Dense flow (B, 2, H, W) with ``warp(other, flow) ≈ frame``, by pyramidal Lucas–Kanade.

    Images are (B, C, H, W) in [0, 1] (RGB is converted to luma). At each pyramid level, from
    coarse to fine, ``iterations`` Gauss–Newton steps solve the 2x2 Lucas–Kanade system per
    pixel over a Gaussian window of ``window_sigma`` pixels. ``regularization`` (in squared
    intensity units) is added to the diagonal of the structure tensor so flat, textureless
    regions get (near) zero flow instead of noise, and each step is clamped to ``max_step``
    pixels to keep the iteration stable. With the default levels (shorter side >= 16 px at the
    coarsest, so 3 for 104x80) motions of a few pixels per frame, typical of a face crop at
    25 fps, are recovered to sub-pixel accuracy.
    """
    if frame.dim() != 4 or frame.shape != other.shape:
        raise ValueError(
            "expected two (B, C, H, W) images of the same shape, got "
            f"{tuple(frame.shape)} and {tuple(other.shape)}"
        )
    levels = levels or _auto_levels(*frame.shape[-2:])
    # Flow needs full precision even when the caller trains under autocast.
    with torch.autocast(device_type=frame.device.type, enabled=False):
        targets = _pyramid(_grayscale(frame.float()), levels)
        sources = _pyramid(_grayscale(other.float()), levels)
        coarsest = targets[-1].shape[-2:]
        flow = torch.zeros(frame.shape[0], 2, *coarsest, device=frame.device)
        for target, source in zip(reversed(targets), reversed(sources), strict=True):
            flow = _upsample_flow(flow, target.shape[-2:])
            flow = _refine(flow, target, source, iterations, window_sigma, regularization, max_step)
    return flow


@torch.no_grad()
def occlusion_mask(
    flow_fw: torch.Tensor,
    flow_bw: torch.Tensor,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
) -> torch.Tensor:
    """(B, 1, H, W) mask, 1 where ``flow_fw`` is reliable, by forward-backward consistency.

    ``flow_fw = estimate_flow(a, b)`` and ``flow_bw = estimate_flow(b, a)``. Following Sundaram,
    Brox & Keutzer (ECCV 2010), a pixel is unreliable (occluded or mis-tracked) when the backward
    flow at its destination does not bring it back:
    ``|w_f + w_b'|^2 > alpha1 (|w_f|^2 + |w_b'|^2) + alpha2`` with ``w_b'`` the backward flow
    sampled at ``x + w_f(x)``. Pixels whose destination leaves the image are unreliable too,
    since :func:`warp` only repeats the border there.
    """
    if flow_fw.shape != flow_bw.shape or flow_fw.dim() != 4 or flow_fw.shape[1] != 2:
        raise ValueError(
            "expected two (B, 2, H, W) flows of the same shape, got "
            f"{tuple(flow_fw.shape)} and {tuple(flow_bw.shape)}"
        )
    flow_bw_at_dest = warp(flow_bw, flow_fw)
    mismatch = (flow_fw + flow_bw_at_dest).square().sum(dim=1, keepdim=True)
    magnitude = flow_fw.square().sum(dim=1, keepdim=True) + flow_bw_at_dest.square().sum(
        dim=1, keepdim=True
    )
    consistent = mismatch <= alpha1 * magnitude + alpha2
    return (consistent & _lands_inside(flow_fw)).to(flow_fw.dtype)
