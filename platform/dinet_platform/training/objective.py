"""One stage's GAN objective and optimisation step, in plain PyTorch (no Ray).

A batch holds clips of ``T`` consecutive frames of one video each (see the loader's row
schema): ``clip_source`` (B, T, 3, H, W) masked sources, ``reference`` (B, 15, H, W),
``clip_audio`` (B, T, C, A) audio windows, ``clip`` (B, T, 3, H, W) targets and ``mouth_mask``
(B, 1, H, W). The generator runs on every frame of every clip (:class:`ClipGenerator`).

Per step, as in DINet's clip training: update the frame discriminator and the clip
discriminator (LSGAN), then the generator on

    reconstruction * L1 + mouth_reconstruction * L1(mouth box) + perceptual * (1 - MS-SSIM | VGG)
    + gan * (LSGAN_frame + LSGAN_clip) + temporal terms + sync * expert loss (when enabled).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dinet_platform.config.schema import LossConfig
from dinet_platform.geometry import crop_geometry, mouth_mask
from dinet_platform.losses import (
    MSSSIMLoss,
    TemporalConsistencyLoss,
    VGG19PerceptualLoss,
    l1_loss,
    lsgan_loss,
    mouth_weighted_l1,
)
from dinet_platform.models import (
    Discriminators,
    SyncNet,
    stack_clip,
    sync_loss,
)
from dinet_platform.models.syncnet import clip_audio_track

Batch = dict[str, torch.Tensor]


@dataclass
class Optimizers:
    generator: torch.optim.Optimizer
    frame_discriminator: torch.optim.Optimizer
    clip_discriminator: torch.optim.Optimizer

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in vars(self).items():
            opt.load_state_dict(state[name])

    def set_lr(self, lr: float) -> None:
        for opt in vars(self).values():
            for group in opt.param_groups:
                group["lr"] = lr


def make_optimizers(
    generator: nn.Module, discriminators: Discriminators, lr: float
) -> Optimizers:
    # Adam with DINet's settings; the discriminators share the generator's learning rate.
    def adam(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(0.5, 0.999))

    return Optimizers(adam(generator), adam(discriminators.frame), adam(discriminators.clip))


class StageObjective(nn.Module):
    """Losses of one resolution stage, with the weights in force for that stage."""

    def __init__(
        self,
        loss: LossConfig,
        mouth_size: int,
        syncnet: SyncNet | None = None,
    ):
        super().__init__()
        self.weights = loss
        self.geometry = crop_geometry(mouth_size)
        mask = mouth_mask(mouth_size)
        self.register_buffer("mouth_mask", mask, persistent=False)
        self.temporal = TemporalConsistencyLoss(loss.temporal, mouth_mask=mask)
        self.perceptual: nn.Module | None = None
        if loss.perceptual > 0:
            self.perceptual = (
                VGG19PerceptualLoss(loss.vgg19_weights)
                if loss.perceptual_kind == "vgg19"
                else MSSSIMLoss()
            )
        self.syncnet = syncnet if loss.sync > 0 else None
        if self.syncnet is not None:
            self.syncnet.requires_grad_(False).eval()

    @property
    def uses_gan(self) -> bool:
        return self.weights.gan > 0

    def mouth_crops(self, clip: torch.Tensor) -> torch.Tensor:
        rows, cols = self.geometry.mouth.slices()
        return clip[..., rows, cols]

    def generator_losses(
        self, fake: torch.Tensor, batch: Batch, discriminators: Discriminators
    ) -> dict[str, torch.Tensor]:
        real = batch["clip"]
        fake_frames, real_frames = fake.flatten(0, 1), real.flatten(0, 1)
        w = self.weights
        # A term whose weight is 0 is not computed at all (the GAN terms alone cost a third
        # of a step: two discriminator forwards and their backward).
        terms: dict[str, torch.Tensor] = {
            "l1": l1_loss(fake_frames, real_frames),
            "mouth_l1": mouth_weighted_l1(fake_frames, real_frames, self.mouth_mask),
        }
        total = w.reconstruction * terms["l1"] + w.mouth_reconstruction * terms["mouth_l1"]
        if self.uses_gan:
            terms["gan_frame"] = lsgan_loss(discriminators.frame(fake_frames), True)
            terms["gan_clip"] = lsgan_loss(discriminators.clip(stack_clip(fake)), True)
            total = total + w.gan * (terms["gan_frame"] + terms["gan_clip"])
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(fake_frames, real_frames)
            total = total + w.perceptual * terms["perceptual"]
        if self.temporal.active:
            temporal = self.temporal(fake.float(), real.float())
            for name in ("frame_diff", "optical_flow", "mouth_temporal", "long_term"):
                terms[f"temporal_{name}"] = getattr(temporal, name)
            total = total + temporal.total
        if self.syncnet is not None:
            audio = clip_audio_track(batch["clip_audio"])
            terms["sync"] = sync_loss(self.syncnet(self.mouth_crops(fake), audio), True)
            total = total + w.sync * terms["sync"]
        terms["total"] = total
        return terms


def unwrapped(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def _real_fake_scores(
    discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Discriminator loss on fake and real in ONE forward (DDP allows one per backward)."""
    scores = discriminator(torch.cat([fake, real], 0))
    fake_scores, real_scores = scores.split([fake.shape[0], real.shape[0]], 0)
    return 0.5 * (lsgan_loss(fake_scores, False) + lsgan_loss(real_scores, True))


def autocast_dtype(device: torch.device | str, mixed_precision: bool) -> torch.dtype | None:
    """bf16 autocast where the hardware computes bf16 natively: every CUDA device this platform
    targets, and CPUs with AVX512-BF16 or AMX (there oneDNN's bf16 convolutions made a demo
    step ~2x faster; on other CPUs bf16 is emulated and slower than fp32). None: fp32."""
    if not mixed_precision:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16
    if kind == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    # torch exposes these probes only privately; a torch without them trains in fp32
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def train_step(
    generator: nn.Module,
    discriminators: Discriminators,
    objective: StageObjective,
    optimizers: Optimizers,
    batch: Batch,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimisation step of the discriminators then the generator; returns loss values.

    ``generator`` is a :class:`ClipGenerator`, possibly DDP-wrapped, as are the discriminators.
    The generator half scores the fakes with the *unwrapped* discriminators, frozen, so no DDP
    reducer waits for discriminator gradients that this backward does not produce.
    """
    device = batch["clip"].device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    )
    real = batch["clip"]
    with autocast:
        fake = generator(batch["clip_source"], batch["reference"], batch["clip_audio"])

    # Discriminators: real clips vs the generator's (detached) output; without a GAN term
    # they are not trained (nothing would use them).
    d_losses: dict[str, float] = {}
    if objective.uses_gan:
        with autocast:
            fake_detached = fake.detach()
            d_frame = _real_fake_scores(
                discriminators.frame, fake_detached.flatten(0, 1), real.flatten(0, 1)
            )
            d_clip = _real_fake_scores(
                discriminators.clip, stack_clip(fake_detached), stack_clip(real)
            )
        optimizers.frame_discriminator.zero_grad(set_to_none=True)
        optimizers.clip_discriminator.zero_grad(set_to_none=True)
        (d_frame + d_clip).backward()
        optimizers.frame_discriminator.step()
        optimizers.clip_discriminator.step()
        d_losses = {"d_frame": float(d_frame.detach()), "d_clip": float(d_clip.detach())}

    # Generator: the discriminators are fixed for this half of the step.
    frozen = Discriminators(unwrapped(discriminators.frame), unwrapped(discriminators.clip))
    for module in frozen.modules().values():
        module.requires_grad_(False)
    try:
        with autocast:
            terms = objective.generator_losses(fake, batch, frozen)
        optimizers.generator.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizers.generator.step()
    finally:
        for module in frozen.modules().values():
            module.requires_grad_(True)

    values = {f"g_{name}": float(value.detach()) for name, value in terms.items()}
    values.update(d_losses)
    return values


def example_batch(
    mouth_size: int,
    batch_size: int,
    clip_len: int = 5,
    audio_channels: int = 29,
    audio_window: int = 5,
    generator: torch.Generator | None = None,
) -> Batch:
    """A random batch with the loader's shapes: for smoke runs, benchmarks and tests."""
    geometry = crop_geometry(mouth_size)
    height, width = geometry.crop_shape
    clip = torch.rand(batch_size, clip_len, 3, height, width, generator=generator)
    mask = mouth_mask(mouth_size).expand(batch_size, -1, -1, -1).clone()
    return {
        "clip": clip,
        "clip_source": clip * (1 - mask.unsqueeze(1)),
        "reference": torch.rand(batch_size, 15, height, width, generator=generator),
        "clip_audio": torch.rand(
            batch_size, clip_len, audio_channels, audio_window, generator=generator
        ),
        "mouth_mask": mask,
    }
