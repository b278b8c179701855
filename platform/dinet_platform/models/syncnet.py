"""A small SyncNet-style audio-visual embedding model: the sync expert.

Two encoders map a short clip of mouth crops and the matching audio features to unit-norm
embeddings; their cosine similarity says how well the lips match the sound. The same model
serves as the training sync loss (frozen) and as the evaluation sync metric (LSE-C / LSE-D
style confidence and offset over shifted audio).

Mouth crops are resized to a fixed ``input_size`` inside the model, so one expert works for
every stage resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.models.blocks import scaled


def _conv2d(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


def _conv1d(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.BatchNorm1d(out_ch),
        nn.ReLU(),
    )


class SyncNet(nn.Module):
    def __init__(
        self,
        frames: int = 5,
        audio_channels: int = 29,
        embed_dim: int = 128,
        width: float = 1.0,
        input_size: int = 64,
    ):
        super().__init__()
        c32, c64, c128, c256 = (scaled(c, width) for c in (32, 64, 128, 256))
        self.frames = frames
        self.input_size = input_size
        self.face_encoder = nn.Sequential(
            _conv2d(3 * frames, c32, 1),
            _conv2d(c32, c64, 2),
            _conv2d(c64, c128, 2),
            _conv2d(c128, c256, 2),
            _conv2d(c256, c256, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c256, embed_dim),
        )
        self.audio_encoder = nn.Sequential(
            _conv1d(audio_channels, c128, 1),
            _conv1d(c128, c128, 1),
            _conv1d(c128, c256, 2),
            _conv1d(c256, c256, 1),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(c256, embed_dim),
        )

    def embed_face(self, mouth_clip: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, h, w) mouth crops in [0, 1] -> (B, D) unit embeddings."""
        batch, frames, channels, height, width = mouth_clip.shape
        if frames != self.frames:
            raise ValueError(f"SyncNet expects {self.frames} frames, got {frames}")
        x = mouth_clip.reshape(batch, frames * channels, height, width)
        if (height, width) != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.normalize(self.face_encoder(x), dim=1)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T_audio) features -> (B, D) unit embeddings."""
        return F.normalize(self.audio_encoder(audio), dim=1)

    def forward(self, mouth_clip: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Cosine similarity in [-1, 1] per sample: high when lips and audio are in sync."""
        return (self.embed_face(mouth_clip) * self.embed_audio(audio)).sum(1)


def sync_loss(similarity: torch.Tensor, in_sync: torch.Tensor | bool = True) -> torch.Tensor:
    """Binary cross-entropy on the similarity mapped to [0, 1] (Wav2Lip's expert loss)."""
    probability = ((similarity + 1) / 2).clamp(1e-6, 1 - 1e-6)
    target = torch.as_tensor(in_sync, dtype=probability.dtype, device=probability.device)
    return F.binary_cross_entropy(probability, target.expand_as(probability))


def clip_audio_track(clip_audio: torch.Tensor) -> torch.Tensor:
    """The audio the sync expert hears for a clip: each frame's own (centre) feature vector.

    ``clip_audio`` is (B, T, C, A) — for each of T frames a window of A feature frames centred
    on it — and the result is (B, C, T), the features aligned one-to-one with the T frames.
    """
    return clip_audio[..., clip_audio.shape[-1] // 2].transpose(1, 2)
