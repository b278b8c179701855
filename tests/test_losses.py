"""Losses: optical flow, temporal consistency, reconstruction, perception and GAN terms."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dinet_platform.config.schema import TemporalWeights
from dinet_platform.geometry import mouth_mask
from dinet_platform.losses import (
    MSSSIMLoss,
    TemporalConsistencyLoss,
    VGG19PerceptualLoss,
    estimate_flow,
    l1_loss,
    lsgan_loss,
    mouth_weighted_l1,
    occlusion_mask,
    vgg19_features,
    warp,
)

pytestmark = pytest.mark.unit

HEIGHT, WIDTH = 104, 80  # the crop of mouth size 64
MARGIN = 10  # pixels near the border, where flow has to guess


def texture(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB texture in [0.2, 0.8]: noise blurred with a Gaussian of sigma 2."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch * 3, 1, height + 12, width + 12, generator=generator)
    taps = torch.exp(-(torch.arange(-6, 7.0) ** 2) / 8)
    taps = taps / taps.sum()
    blurred = F.conv2d(F.conv2d(noise, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    blurred = blurred.view(batch, 3, height, width)
    low = blurred.amin(dim=(1, 2, 3), keepdim=True)
    high = blurred.amax(dim=(1, 2, 3), keepdim=True)
    return 0.2 + 0.6 * (blurred - low) / (high - low)


def translating_clip(frames: int, step: tuple[int, int] = (1, 1), seed: int = 0) -> torch.Tensor:
    """(1, T, 3, H, W) clip of a static texture moving by ``step`` (dx, dy) pixels a frame."""
    dx, dy = step
    pad = frames * max(abs(dx), abs(dy))
    scene = texture(1, HEIGHT + 2 * pad, WIDTH + 2 * pad, seed)
    crops = [
        scene[..., pad + t * dy : pad + t * dy + HEIGHT, pad + t * dx : pad + t * dx + WIDTH]
        for t in range(frames)
    ]
    return torch.stack(crops, dim=1)


def interior(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


# --- optical flow ----------------------------------------------------------------------------


def test_estimate_flow_recovers_a_translation() -> None:
    scene = texture(4, HEIGHT + 8, WIDTH + 8)
    other = scene[..., 4 : 4 + HEIGHT, 4 : 4 + WIDTH]
    # frame(x, y) = other(x + 2, y + 1), so the flow is (2, 1) everywhere.
    frame = scene[..., 5 : 5 + HEIGHT, 6 : 6 + WIDTH]

    flow = estimate_flow(frame, other)

    assert flow.shape == (4, 2, HEIGHT, WIDTH)
    expected = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    assert interior(flow - expected).norm(dim=1).max() < 0.25
    assert interior(warp(other, flow) - frame).abs().max() < 0.02
    reliable = occlusion_mask(flow, estimate_flow(other, frame))
    assert reliable.shape == (4, 1, HEIGHT, WIDTH)
    assert interior(reliable).mean() > 0.99
    # The right-most columns look 2 px past the border: nothing to compare there.
    assert reliable[..., -1].sum() == 0


def test_warp_samples_at_x_plus_flow() -> None:
    image = torch.arange(12.0).view(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 1.0  # one pixel to the right; the last column repeats the border
    assert torch.equal(warp(image, flow)[0, 0, :, :3], image[0, 0, :, 1:])
    assert torch.equal(warp(image, flow)[0, 0, :, 3], image[0, 0, :, 3])


def test_occlusion_mask_flags_inconsistent_flow() -> None:
    flow_fw = torch.zeros(1, 2, 20, 20)
    flow_fw[:, 0] = 1.0
    flow_bw = -flow_fw.clone()
    flow_bw[..., 5:10, 5:10] = 3.0  # the backward flow disagrees here
    reliable = occlusion_mask(flow_fw, flow_bw)
    assert reliable[0, 0, 6:9, 4:8].sum() == 0
    assert reliable[0, 0, 12:, :19].all()


# --- temporal consistency --------------------------------------------------------------------


@pytest.fixture
def temporal_loss() -> TemporalConsistencyLoss:
    return TemporalConsistencyLoss(TemporalWeights(), mouth_mask(64))


TERMS = ("frame_diff", "optical_flow", "mouth_temporal", "long_term", "total")


def test_temporal_loss_is_zero_for_a_perfect_clip(temporal_loss: TemporalConsistencyLoss) -> None:
    target = translating_clip(5)
    terms = temporal_loss(target.clone(), target)
    assert terms.as_dict() == dict.fromkeys(TERMS, 0.0)


def test_temporal_loss_ignores_an_error_that_is_constant_in_time(
    temporal_loss: TemporalConsistencyLoss,
) -> None:
    target = translating_clip(4)
    terms = temporal_loss(target + 0.1, target)
    assert terms.total.item() == pytest.approx(0.0, abs=1e-6)


def test_every_term_grows_with_flicker(temporal_loss: TemporalConsistencyLoss) -> None:
    target = translating_clip(5)
    offsets = torch.tensor([0.3, -0.8, 0.5, 1.0, -0.2]).view(1, 5, 1, 1, 1)
    results = [temporal_loss(target + a * offsets, target).as_dict() for a in (0.01, 0.02, 0.05)]
    results.append(temporal_loss(target + 0.1 * offsets, target).as_dict())
    for name in TERMS:
        values = [result[name] for result in results]
        assert all(a < b for a, b in itertools.pairwise(values)), (name, values)
        assert values[0] > 0, name


def test_flow_term_follows_the_real_motion(temporal_loss: TemporalConsistencyLoss) -> None:
    target = translating_clip(4, step=(1, 1))
    # The real frames are explained by the motion: warping back leaves ~nothing.
    current, previous = target[0, 1:], target[0, :-1]
    flow = estimate_flow(current, previous)
    assert interior(warp(previous, flow) - current).abs().max() < 0.02
    # A blemish that moves with the face changes every pixel it covers from frame to frame,
    # but it is not flicker: the flow term sees (almost) nothing, frame_diff sees it all.
    blemish = translating_clip(4, step=(1, 1), seed=1) - 0.5
    terms = temporal_loss(target + 0.2 * blemish, target)
    assert terms.optical_flow.item() < 0.1 * terms.frame_diff.item()


def test_mouth_term_only_sees_the_mouth(temporal_loss: TemporalConsistencyLoss) -> None:
    target = translating_clip(3)
    flicker = 0.1 * torch.randn(1, 3, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    mask = mouth_mask(64)

    outside = temporal_loss(target + flicker * (1 - mask), target)
    assert outside.mouth_temporal.item() == 0.0
    assert outside.frame_diff.item() > 0

    inside = temporal_loss(target + flicker * mask, target)
    assert inside.mouth_temporal.item() > 0


def test_default_mouth_box_matches_the_geometry() -> None:
    target = translating_clip(3)
    flicker = 0.1 * torch.randn(1, 3, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    with_mask = TemporalConsistencyLoss(TemporalWeights(), mouth_mask(64))
    from_prior = TemporalConsistencyLoss(TemporalWeights())
    expected = with_mask(target + flicker, target).mouth_temporal
    assert torch.allclose(from_prior(target + flicker, target).mouth_temporal, expected)


def test_long_term_uses_the_lags_a_short_clip_has(temporal_loss: TemporalConsistencyLoss) -> None:
    target = translating_clip(3)
    drift = torch.tensor([0.0, 0.0, 0.1]).view(1, 3, 1, 1, 1)
    # Lag 2 only (the window of 5 would allow lags 2..4): |e_2 - e_0| = 0.1.
    assert temporal_loss(target + drift, target).long_term.item() == pytest.approx(0.1, abs=1e-6)
    two_frames = temporal_loss(target[:, :2] + 0.1 * drift[:, 1:], target[:, :2])
    assert two_frames.long_term.item() == 0.0


def test_temporal_loss_rejects_bad_clips(temporal_loss: TemporalConsistencyLoss) -> None:
    clip = translating_clip(3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_loss(clip[:, :1], clip[:, :1])
    with pytest.raises(ValueError, match="same"):
        temporal_loss(clip, clip[:, :2])


# --- per-frame losses ------------------------------------------------------------------------


def test_mouth_weighted_l1_counts_only_the_mouth_box() -> None:
    target = texture(2, HEIGHT, WIDTH)
    mask = mouth_mask(64)
    assert mouth_weighted_l1(target + 0.3 * (1 - mask), target, mask).item() == 0.0
    assert mouth_weighted_l1(target + 0.3 * mask, target, mask).item() == pytest.approx(0.3)
    assert l1_loss(target + 0.3 * mask, target).item() < 0.3


def test_ms_ssim_loss() -> None:
    target = texture(2, HEIGHT, WIDTH)
    loss = MSSSIMLoss()
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(target + 0.05 * torch.randn_like(target), target).item() > 0.01


def test_lsgan_loss() -> None:
    ones = torch.ones(2, 1, 4, 4)
    assert lsgan_loss(ones, is_real=True).item() == 0.0
    assert lsgan_loss(ones, is_real=False).item() == 1.0
    assert lsgan_loss(0.5 * ones, is_real=True).item() == 0.25


# --- VGG19 perception ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised state_dict in torchvision's ``vgg19()`` layout."""
    torch.manual_seed(0)
    state = {f"features.{key}": value for key, value in vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored, as a real file's classifier is
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg_loss(vgg_weights: Path) -> VGG19PerceptualLoss:
    return VGG19PerceptualLoss(vgg_weights)


def test_vgg19_loss_compares_features(vgg_loss: VGG19PerceptualLoss, vgg_weights: Path) -> None:
    saved = torch.load(vgg_weights, weights_only=True)
    assert torch.equal(vgg_loss.features[34].bias, saved["features.34.bias"])
    assert not any(p.requires_grad for p in vgg_loss.parameters())
    target = texture(2, 32, 32)
    assert vgg_loss(target, target).item() == 0.0
    assert vgg_loss(target + 0.1 * torch.randn_like(target), target).item() > 0


def test_vgg19_loss_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        VGG19PerceptualLoss(path)


def test_vgg19_loss_rejects_other_layouts(tmp_path: Path) -> None:
    # Zero-stride tensors: a full set of keys without writing 80 MB of weights.
    state = {
        f"features.{key}": torch.zeros(1).expand(value.shape)
        for key, value in vgg19_features().state_dict().items()
    }
    renamed = tmp_path / "renamed.pth"
    torch.save({key.replace("features.", "vgg."): value for key, value in state.items()}, renamed)
    with pytest.raises(ValueError, match="missing"):
        VGG19PerceptualLoss(renamed)

    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match=r"features\.0\.weight"):
        VGG19PerceptualLoss(wrong_shape)

    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ValueError, match="state_dict"):
        VGG19PerceptualLoss(not_a_dict)


# --- gradients -------------------------------------------------------------------------------


def test_gradients_reach_the_generated_frames(vgg_loss: VGG19PerceptualLoss) -> None:
    target = translating_clip(3)
    generated = (target + 0.05 * torch.randn_like(target)).requires_grad_(True)
    temporal = TemporalConsistencyLoss(TemporalWeights(), mouth_mask(64))(generated, target)
    frames, real = generated[0], target[0]
    losses = {name: getattr(temporal, name) for name in TERMS}
    losses |= {
        "l1": l1_loss(frames, real),
        "mouth_l1": mouth_weighted_l1(frames, real, mouth_mask(64)),
        "ms_ssim": MSSSIMLoss()(frames, real),
        "vgg19": vgg_loss(frames[:, :, :32, :32], real[:, :, :32, :32]),
        "lsgan": lsgan_loss(frames.mean(dim=(1, 2, 3)), is_real=True),
    }
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss, generated, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
