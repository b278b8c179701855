"""Build the networks a config describes: the one place that maps ModelConfig to modules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dinet_platform.config.schema import ModelConfig
from dinet_platform.models.dinet import DINet
from dinet_platform.models.dinet_attention import DINetWithAttention
from dinet_platform.models.discriminator import Discriminator
from dinet_platform.models.syncnet import SyncNet

SOURCE_CHANNELS = 3
NUM_REFERENCES = 5


def build_generator(config: ModelConfig) -> DINet:
    common = dict(
        source_channel=SOURCE_CHANNELS,
        ref_channel=3 * NUM_REFERENCES,
        audio_channel=config.audio_channels,
        width=config.width,
    )
    if config.variant == "dinet":
        return DINet(**common)
    return DINetWithAttention(**common, attention=config.attention)


@dataclass
class Discriminators:
    frame: Discriminator
    clip: Discriminator

    def modules(self) -> dict[str, nn.Module]:
        return {"frame": self.frame, "clip": self.clip}


def build_discriminators(config: ModelConfig, clip_len: int = 5) -> Discriminators:
    return Discriminators(
        frame=Discriminator(SOURCE_CHANNELS, width=config.discriminator_width),
        clip=Discriminator(SOURCE_CHANNELS * clip_len, width=config.discriminator_width),
    )


def build_syncnet(config: ModelConfig, frames: int = 5) -> SyncNet:
    return SyncNet(frames=frames, audio_channels=config.audio_channels, width=config.syncnet_width)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
