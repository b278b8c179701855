"""The stage objective and training step (plain PyTorch, no Ray)."""

from __future__ import annotations

import pytest
import torch
from dinet_platform.config import LossConfig, ModelConfig
from dinet_platform.geometry import mouth_mask
from dinet_platform.models import build_discriminators, build_generator, build_syncnet
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.training.objective import (
    StageObjective,
    autocast_dtype,
    example_batch,
    make_optimizers,
    train_step,
)
from dinet_platform.training.validation import ValidationAccumulator

from tests.support import TINY_MODEL

pytestmark = pytest.mark.unit

MODEL = ModelConfig(**TINY_MODEL)


def setup(loss: LossConfig, mouth_size: int = 64, syncnet=None):
    torch.manual_seed(0)
    generator = ClipGenerator(build_generator(MODEL))
    discriminators = build_discriminators(MODEL, clip_len=3)
    objective = StageObjective(loss, mouth_size, syncnet=syncnet)
    optimizers = make_optimizers(generator, discriminators, lr=1e-3)
    batch = example_batch(mouth_size, 2, clip_len=3, generator=torch.Generator().manual_seed(1))
    return generator, discriminators, objective, optimizers, batch


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_one_step_updates_generator_and_both_discriminators():
    generator, discriminators, objective, optimizers, batch = setup(LossConfig())
    before = [snapshot(m) for m in (generator, discriminators.frame, discriminators.clip)]
    losses = train_step(generator, discriminators, objective, optimizers, batch)
    after = [snapshot(m) for m in (generator, discriminators.frame, discriminators.clip)]
    for old, new in zip(before, after, strict=True):
        assert any(not torch.equal(old[k], new[k]) for k in old)
    expected = {"g_l1", "g_mouth_l1", "g_perceptual", "g_gan_frame", "g_gan_clip",
                "g_temporal_frame_diff", "g_temporal_optical_flow", "g_temporal_mouth_temporal",
                "g_temporal_long_term", "g_total", "d_frame", "d_clip"}
    assert expected <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # The discriminators are trainable again after the generator half of the step.
    assert all(p.requires_grad for p in discriminators.frame.parameters())


def test_sync_term_uses_the_frozen_expert():
    syncnet = build_syncnet(MODEL, frames=3)
    expert_before = snapshot(syncnet)
    generator, discriminators, objective, optimizers, batch = setup(
        LossConfig(sync=0.1, sync_expert="expert.pt"), syncnet=syncnet
    )
    losses = train_step(generator, discriminators, objective, optimizers, batch)
    assert losses["g_sync"] > 0
    after = snapshot(syncnet)
    assert all(torch.equal(expert_before[k], after[k]) for k in after)


@pytest.mark.slow
@pytest.mark.parametrize("mouth_size", [96, 128])
def test_step_runs_at_higher_stage_sizes(mouth_size):
    generator, discriminators, objective, optimizers, batch = setup(LossConfig(), mouth_size)
    losses = train_step(generator, discriminators, objective, optimizers, batch)
    assert losses["g_total"] > 0


@pytest.mark.slow
def test_check_models_command_times_every_stage(tmp_path):
    from dinet_platform.cli import app
    from typer.testing import CliRunner

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {width: 0.125, discriminator_width: 0.125}\n"
        "stages:\n"
        "  - {mouth_size: 64, epochs: 1, batch_size: 1, lr: 1.0e-4}\n"
        "  - {mouth_size: 96, epochs: 1, batch_size: 1, lr: 1.0e-4}\n"
        "data: {clip_len: 2}\n"
    )
    result = CliRunner().invoke(app, ["check-models", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "104x80" in result.output and "156x120" in result.output


def test_only_the_mouth_box_is_generated():
    generator, _, _, _, batch = setup(LossConfig())
    fake = generator(batch["clip_source"], batch["reference"], batch["clip_audio"])
    outside = (1 - batch["mouth_mask"]).bool().unsqueeze(1).expand_as(fake)
    assert torch.equal(fake[outside], batch["clip_source"][outside])
    inside = ~outside
    assert not torch.equal(fake[inside], batch["clip_source"][inside])


def test_terms_with_weight_zero_are_not_computed_and_unused_discriminators_not_trained(
    monkeypatch,
):
    from dinet_platform.config.schema import TemporalWeights

    off = TemporalWeights(frame_diff=0, optical_flow=0, mouth_temporal=0, long_term=0)
    loss = LossConfig(gan=0, perceptual=0, temporal=off)
    generator, discriminators, objective, optimizers, batch = setup(loss)
    before = [snapshot(m) for m in (discriminators.frame, discriminators.clip)]
    losses = train_step(generator, discriminators, objective, optimizers, batch)
    assert set(losses) == {"g_l1", "g_mouth_l1", "g_total"}
    after = [snapshot(m) for m in (discriminators.frame, discriminators.clip)]
    for old, new in zip(before, after, strict=True):
        assert all(torch.equal(old[k], new[k]) for k in old)
    # Temporal terms on but the flow's weight 0: the flow is never estimated.
    import dinet_platform.losses.temporal as temporal_module

    def no_flow(*_args, **_kwargs):
        raise AssertionError("optical flow estimated at weight 0")

    monkeypatch.setattr(temporal_module, "estimate_flow", no_flow)
    _, _, objective, _, _ = setup(loss.model_copy(
        update={"temporal": off.model_copy(update={"mouth_temporal": 1.0})}))
    terms = objective.generator_losses(batch["clip"] + 0.1, batch, discriminators)
    assert terms["temporal_mouth_temporal"] > 0 and terms["temporal_optical_flow"] == 0


def test_mixed_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    assert autocast_dtype("cuda", mixed_precision=True) is torch.bfloat16
    assert autocast_dtype("cuda", mixed_precision=False) is None
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert autocast_dtype("cpu", mixed_precision=True) is None  # emulated bf16 is slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert autocast_dtype("cpu", mixed_precision=True) is torch.bfloat16
    assert autocast_dtype("cpu", mixed_precision=False) is None


def test_a_bf16_step_trains_the_generator():
    generator, discriminators, objective, optimizers, batch = setup(
        LossConfig(gan=0.0, perceptual=0.0))
    before = snapshot(generator)
    losses = train_step(generator, discriminators, objective, optimizers, batch, torch.bfloat16)
    assert torch.isfinite(torch.tensor(losses["g_total"]))
    after = snapshot(generator)
    assert all(v.dtype == torch.float32 for v in after.values())  # weights stay fp32
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_audio_gain_is_zero_for_a_model_that_ignores_the_audio():
    real = torch.rand(2, 3, 3, 104, 80, generator=torch.Generator().manual_seed(0))
    mask = mouth_mask(64)
    listening = real + 0.01  # close to the truth with its own audio...
    deaf = ValidationAccumulator()
    deaf.add(listening, real, mask, fake_other_audio=listening)
    assert deaf.means()["val_audio_gain_db"] == pytest.approx(0.0)
    hears = ValidationAccumulator()
    hears.add(listening, real, mask, fake_other_audio=real + 0.1)  # ...and worse with another's
    assert hears.means()["val_audio_gain_db"] == pytest.approx(20.0, abs=0.5)
    assert "val_audio_gain_db" not in ValidationAccumulator().means()
