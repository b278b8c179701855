"""The generator applied to whole clips: what training, validation and evaluation run."""

from __future__ import annotations

import torch
from torch import nn

from dinet_platform.geometry import mouth_mask, mouth_size_of_crop
from dinet_platform.models.dinet import DINet, ReferenceFeatures


class ClipGenerator(nn.Module):
    """The generator applied to clips: every frame of each clip, with the reference features
    computed once per clip and shared by its T frames.

    Only the mouth box is generated: outside it the output *is* the source. That is what the
    product uses (the blend pastes only the box back), and it keeps the network's capacity and
    gradients on the mouth instead of on re-drawing pixels it was given (at width 0.125 it
    could not even reproduce those: 14.5 dB outside the box).

    Training wraps this module (not DINet itself) in DDP, because DDP synchronises gradients
    only for computation that goes through the wrapped module's ``forward``.
    """

    def __init__(self, generator: DINet):
        super().__init__()
        self.generator = generator

    def forward(
        self, clip_source: torch.Tensor, reference: torch.Tensor, clip_audio: torch.Tensor
    ) -> torch.Tensor:
        batch_size, frames = clip_source.shape[:2]
        features = self.generator.encode_reference(reference)
        features = ReferenceFeatures(
            features.ref_in_feature.repeat_interleave(frames, 0),
            features.appearance.repeat_interleave(frames, 0),
        )
        fake = self.generator.generate(
            clip_source.flatten(0, 1), clip_audio.flatten(0, 1), features
        )
        fake = fake.view(batch_size, frames, *fake.shape[1:])
        height, width = fake.shape[-2:]
        box = mouth_mask(mouth_size_of_crop(height, width), device=fake.device, dtype=fake.dtype)
        return clip_source + box * fake
