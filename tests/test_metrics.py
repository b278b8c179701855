"""PSNR, SSIM and MS-SSIM on DINet-sized crops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from dinet_platform.geometry import mouth_mask
from dinet_platform.metrics import ms_ssim, psnr, ssim, ssim_map

pytestmark = pytest.mark.unit


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    # Smooth content in [0.2, 0.8] so added noise does not need clamping.
    coarse = torch.rand(2, 3, 13, 10)
    return 0.2 + 0.6 * torch.nn.functional.interpolate(coarse, size=(104, 80), mode="bilinear")


def test_identical_images_score_perfectly(image: torch.Tensor) -> None:
    assert torch.isinf(psnr(image, image)).all()
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-6)
    assert torch.allclose(ms_ssim(image, image), torch.ones(2), atol=1e-6)


def test_psnr_matches_mse_formula(image: torch.Tensor) -> None:
    noisy = image + 0.05 * torch.randn_like(image)
    mse = ((noisy - image) ** 2).flatten(1).mean(dim=1)
    expected = torch.tensor([10 * math.log10(1 / m) for m in mse.tolist()])
    assert psnr(noisy, image).shape == (2,)
    assert torch.allclose(psnr(noisy, image), expected, atol=1e-4)
    assert torch.allclose(psnr(2 * noisy, 2 * image, max_val=2.0), expected, atol=1e-4)


def test_masked_psnr_counts_only_masked_pixels(image: torch.Tensor) -> None:
    mask = mouth_mask(64)
    outside = image + 0.1 * (1 - mask)
    assert torch.isinf(psnr(outside, image, mask=mask)).all()

    inside = image + 0.05 * torch.randn_like(image) * mask
    mse = ((inside - image) ** 2 * mask).flatten(1).sum(dim=1) / (3 * mask.sum())
    assert torch.allclose(psnr(inside, image, mask=mask), 10 * torch.log10(1 / mse), atol=1e-4)


def test_ssim_decreases_with_noise(image: torch.Tensor) -> None:
    noise = torch.randn_like(image)
    scores = [ssim(image + sigma * noise, image).mean().item() for sigma in (0.01, 0.05, 0.1, 0.2)]
    assert all(a > b for a, b in itertools.pairwise(scores))
    assert scores[0] < 1.0


def test_ssim_map_has_image_size_and_averages_over_a_mask(image: torch.Tensor) -> None:
    noisy = image + 0.05 * torch.randn_like(image)
    values = ssim_map(noisy, image)
    assert values.shape == image.shape
    mask = mouth_mask(64)
    by_hand = (values * mask).flatten(1).sum(dim=1) / (3 * mask.sum())
    assert torch.allclose(ssim(noisy, image, mask=mask), by_hand, atol=1e-6)


def test_ms_ssim_works_on_the_smallest_crop(image: torch.Tensor) -> None:
    noise = torch.randn_like(image)
    scores = [ms_ssim(image + s * noise, image) for s in (0.01, 0.05, 0.2)]
    assert all(s.shape == (2,) and ((s > 0) & (s <= 1)).all() for s in scores)
    assert scores[0].mean() > scores[1].mean() > scores[2].mean()
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(image, image, levels=5)


def test_metrics_are_differentiable(image: torch.Tensor) -> None:
    pred = (image + 0.05 * torch.randn_like(image)).requires_grad_(True)
    for metric in (psnr, ssim, ms_ssim):
        (grad,) = torch.autograd.grad(metric(pred, image).sum(), pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, metric.__name__


def test_mismatched_shapes_are_rejected(image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="same shape"):
        ssim(image, image[:, :, :-1])
