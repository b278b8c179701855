"""Behaviour of the networks: shapes, gradients, checkpoint layout, reference split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dinet_platform.config import AttentionConfig, ModelConfig
from dinet_platform.geometry import crop_geometry
from dinet_platform.models import (
    DINet,
    DINetWithAttention,
    SyncNet,
    build_discriminators,
    build_generator,
    build_syncnet,
    load_generator_weights,
    stack_clip,
    sync_loss,
)

from tests.support import TINY_WIDTH as TINY

pytestmark = pytest.mark.unit

ALL_ON = AttentionConfig(spatial=True, mouth_focused=True, multi_scale=True, adaptive_fusion=True)
STAGE_SIZES = [64, 96, 128, 160, 256]


def inputs(mouth_size: int, batch: int = 2, audio_channels: int = 29, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    height, width = crop_geometry(mouth_size).crop_shape
    return (
        torch.rand(batch, 3, height, width, generator=generator),
        torch.rand(batch, 15, height, width, generator=generator),
        torch.rand(batch, audio_channels, 5, generator=generator),
    )


@pytest.mark.parametrize("mouth_size", STAGE_SIZES)
@pytest.mark.parametrize("variant", [DINet, DINetWithAttention])
def test_forward_gives_a_face_crop_at_every_stage_size(variant, mouth_size):
    model = variant(width=TINY) if variant is DINet else variant(width=TINY, attention=ALL_ON)
    source, reference, audio = inputs(mouth_size)
    out = model(source, reference, audio)
    assert out.shape == source.shape
    # the crop follows the speech: the same face with another audio window is another crop
    other_audio = inputs(mouth_size, seed=1)[2]
    assert not torch.allclose(model(source, reference, other_audio), out, atol=1e-4)


def test_crop_not_a_multiple_of_four_is_padded_and_cropped_back():
    # mouth 100 -> 162x124 crop: the network pads to a multiple of 4 internally.
    source, reference, audio = inputs(100)
    assert source.shape[-2:] == (162, 124)
    assert DINet(width=TINY)(source, reference, audio).shape == source.shape


@pytest.mark.parametrize("variant", [DINet, DINetWithAttention])
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)  # a tiny model can draw a dead ReLU unit; keep the draw fixed
    model = variant(width=TINY) if variant is DINet else variant(width=TINY, attention=ALL_ON)
    if variant is DINetWithAttention:
        # Attention blocks start as the identity (gamma = 0), which blocks the gradient into
        # their branches until the first step moves gamma; emulate a trained gamma.
        for block in model.attention.values():
            block.gamma.data.fill_(0.5)
    source, reference, audio = inputs(64)
    model(source, reference, audio).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


@pytest.mark.parametrize("variant", [DINet, DINetWithAttention])
def test_reference_split_equals_full_forward(variant):
    model = variant(width=0.25) if variant is DINet else variant(width=0.25, attention=ALL_ON)
    if variant is DINetWithAttention:
        for block in model.attention.values():
            block.gamma.data.fill_(0.7)
    model.eval()
    source, reference, audio = inputs(96, batch=4)
    reference = reference[:1].expand(4, -1, -1, -1)  # one avatar, four frames
    with torch.no_grad():
        full = model(source, reference, audio)
        cached = model.encode_reference(reference[:1])
        split = model.generate(source, audio, cached)
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-6)


def test_state_dict_matches_the_public_dinet_layout():
    fixture = Path(__file__).parent / "data" / "dinet_original_state_dict_layout.json"
    original = [(key, shape) for key, shape in json.loads(fixture.read_text())["layout"]]
    ours = [(k, list(v.shape)) for k, v in DINet(3, 15, 29).state_dict().items()]
    assert ours == original
    assert sum(p.numel() for p in DINet().parameters()) == 19_190_275


@pytest.mark.slow
def test_public_dataparallel_checkpoint_loads_strictly(tmp_path):
    reference_model = DINet(width=TINY)
    public = {
        "epoch": 3,
        "state_dict": {
            "net_g": {f"module.{k}": v for k, v in reference_model.state_dict().items()}
        },
    }
    path = tmp_path / "netG_model_epoch_3.pth"
    torch.save(public, path)
    model = DINet(width=TINY)
    assert load_generator_weights(model, path).fresh == []
    for key, value in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_attention_off_is_exactly_dinet():
    plain = DINet(width=TINY)
    off = DINetWithAttention(width=TINY, attention=AttentionConfig())
    assert list(off.state_dict()) == list(plain.state_dict())
    off.load_state_dict(plain.state_dict(), strict=True)
    plain.eval()
    off.eval()
    source, reference, audio = inputs(64)
    with torch.no_grad():
        torch.testing.assert_close(off(source, reference, audio), plain(source, reference, audio))


def test_attention_model_loads_dinet_checkpoint_and_reports_fresh_keys():
    plain = DINet(width=TINY).eval()
    model = DINetWithAttention(width=TINY, attention=ALL_ON).eval()
    report = load_generator_weights(model, plain.state_dict())
    assert report.fresh and all(k.startswith("attention.") for k in report.fresh)
    assert {k.split(".")[1] for k in report.fresh} == {"source", "reference", "appearance"}
    source, reference, audio = inputs(64)
    with torch.no_grad():  # fresh attention starts as the identity
        torch.testing.assert_close(model(source, reference, audio), plain(source, reference, audio))


def test_checkpoint_of_another_width_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="shape mismatches"):
        load_generator_weights(DINet(width=TINY), DINet(width=0.25).state_dict())
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_generator_weights(DINet(width=TINY), "nope.pth")


def test_return_attention_gives_maps_for_each_enabled_module():
    config = AttentionConfig(spatial=True, mouth_focused=True, positions=["appearance"])
    model = DINetWithAttention(width=TINY, attention=config)
    source, reference, audio = inputs(64)
    out, maps = model(source, reference, audio, return_attention=True)
    assert out.shape == source.shape
    assert set(maps) == {"appearance/spatial", "appearance/mouth_focused"}
    for attention_map in maps.values():
        assert attention_map.shape == (2, 1, 26, 20)
        assert attention_map.min() >= 0.0 and attention_map.max() <= 1.0


def test_mouth_focused_attention_prefers_the_mouth_box():
    config = AttentionConfig(mouth_focused=True, positions=["appearance"], mouth_region_weight=10)
    model = DINetWithAttention(width=TINY, attention=config).eval()
    source, reference, audio = inputs(128)
    with torch.no_grad():
        _, maps = model(source, reference, audio, return_attention=True)
    gate = maps["appearance/mouth_focused"]
    geometry = crop_geometry(128)
    rows, cols = geometry.mouth.slices()
    inside = torch.zeros_like(gate, dtype=torch.bool)
    inside[..., rows.start // 4 : rows.stop // 4, cols.start // 4 : cols.stop // 4] = True
    assert gate[inside].mean() > gate[~inside].mean() + 0.2


def test_factory_builds_what_the_config_names():
    assert type(build_generator(ModelConfig(variant="dinet", width=TINY))) is DINet
    attention = build_generator(ModelConfig(variant="dinet_attention", width=TINY))
    assert isinstance(attention, DINetWithAttention)
    syncnet = build_syncnet(ModelConfig(audio_channels=13, syncnet_width=0.25), frames=5)
    similarity = syncnet(torch.rand(2, 5, 3, 40, 40), torch.rand(2, 13, 9))
    assert similarity.shape == (2,) and similarity.abs().max() <= 1.0


@pytest.mark.parametrize("mouth_size", [64, 160])
def test_discriminators_score_frames_and_clips(mouth_size):
    discriminators = build_discriminators(ModelConfig(discriminator_width=0.25), clip_len=5)
    height, width = crop_geometry(mouth_size).crop_shape
    clip = torch.rand(2, 5, 3, height, width)
    assert discriminators.frame(clip[:, 0]).shape[:2] == (2, 1)
    assert discriminators.clip(stack_clip(clip)).shape[:2] == (2, 1)


@pytest.mark.slow
def test_sync_expert_separates_matched_from_shifted_pairs_after_training():
    torch.manual_seed(0)
    model = SyncNet(frames=5, audio_channels=8, embed_dim=32, width=TINY, input_size=16)
    # A toy world where mouth brightness encodes the audio: learnable by listening only.
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        audio = torch.rand(16, 8, 5)
        mouths = audio.mean((1, 2)).view(16, 1, 1, 1, 1).expand(16, 5, 3, 16, 16)
        shifted = audio.roll(1, dims=0)
        loss = sync_loss(model(mouths, audio), True) + sync_loss(model(mouths, shifted), False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    audio = torch.rand(32, 8, 5)
    mouths = audio.mean((1, 2)).view(32, 1, 1, 1, 1).expand(32, 5, 3, 16, 16)
    with torch.no_grad():
        matched = model(mouths, audio)
        shifted = model(mouths, audio.roll(7, dims=0))
    assert matched.mean() > shifted.mean() + 0.3
