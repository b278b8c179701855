"""DINet (Zhang et al., AAAI 2023): deformation inpainting for few-shot talking-face dubbing.

Same architecture and parameter names as the public release: at ``width=1.0`` and 29 audio
channels ``DINet().state_dict()`` has exactly the keys and shapes of the original
``DINet(3, 15, 29)``, so public checkpoints load with ``strict=True``.

Data flow for one frame::

    source (masked face, 3xHxW) --source_in_conv--> S          (B, 256w, H/4, W/4)
    references (5 faces, 15xHxW) --ref_in_conv-----> R          reference only
    [S, R] --trans_conv--> pooled image code; audio --audio_encoder--> pooled audio code
    R --appearance_conv_list[0]--> A0                           reference only
    A0 --adaAT(codes)--> --appearance_conv_list[1]--> A1
    [S, A1] --out_conv--> generated face (3xHxW, sigmoid)

``R`` and ``A0`` depend only on the reference frames: :meth:`encode_reference` computes them
once per avatar and :meth:`generate` reuses them for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.models.blocks import (
    AdaAT,
    DownBlock1d,
    DownBlock2d,
    ResBlock1d,
    ResBlock2d,
    SameBlock1d,
    SameBlock2d,
    UpBlock2d,
    scaled,
)


@dataclass
class ReferenceFeatures:
    """Per-avatar features that do not depend on the frame being generated."""

    ref_in_feature: torch.Tensor
    """``ref_in_conv(references)``; also feeds the alignment encoder."""
    appearance: torch.Tensor
    """``appearance_conv_list[0](ref_in_feature)``, the input of the AdaAT warp."""

    def expand(self, batch: int) -> ReferenceFeatures:
        """Broadcast single-avatar features (batch 1) to a batch of frames."""
        if self.ref_in_feature.shape[0] == batch:
            return self
        return ReferenceFeatures(
            self.ref_in_feature.expand(batch, -1, -1, -1),
            self.appearance.expand(batch, -1, -1, -1),
        )


class DINet(nn.Module):
    def __init__(
        self,
        source_channel: int = 3,
        ref_channel: int = 15,
        audio_channel: int = 29,
        width: float = 1.0,
    ):
        super().__init__()
        c64, c128, c256 = (scaled(c, width) for c in (64, 128, 256))
        self.width = width
        self.source_in_conv = nn.Sequential(
            SameBlock2d(source_channel, c64, kernel_size=7, padding=3),
            DownBlock2d(c64, c128),
            DownBlock2d(c128, c256),
        )
        self.ref_in_conv = nn.Sequential(
            SameBlock2d(ref_channel, c64, kernel_size=7, padding=3),
            DownBlock2d(c64, c128),
            DownBlock2d(c128, c256),
        )
        # Alignment encoder: large kernels then repeated halving to a pooled code.
        self.trans_conv = nn.Sequential(
            SameBlock2d(2 * c256, c128),
            SameBlock2d(c128, c128, kernel_size=11, padding=5),
            SameBlock2d(c128, c128, kernel_size=11, padding=5),
            DownBlock2d(c128, c128),
            SameBlock2d(c128, c128, kernel_size=7, padding=3),
            SameBlock2d(c128, c128, kernel_size=7, padding=3),
            DownBlock2d(c128, c128),
            SameBlock2d(c128, c128),
            DownBlock2d(c128, c128),
            SameBlock2d(c128, c128),
            DownBlock2d(c128, c128),
        )
        self.audio_encoder = nn.Sequential(
            SameBlock1d(audio_channel, c128, kernel_size=5, padding=2),
            ResBlock1d(c128, c128, 3, 1),
            DownBlock1d(c128, c128, 3, 1),
            ResBlock1d(c128, c128, 3, 1),
            DownBlock1d(c128, c128, 3, 1),
            SameBlock1d(c128, c128, kernel_size=3, padding=1),
        )
        self.appearance_conv_list = nn.ModuleList(
            nn.Sequential(*(ResBlock2d(c256, c256) for _ in range(4))) for _ in range(2)
        )
        self.adaAT = AdaAT(2 * c128, c256)
        self.out_conv = nn.Sequential(
            SameBlock2d(2 * c256, c128),
            UpBlock2d(c128, c128),
            ResBlock2d(c128, c128),
            UpBlock2d(c128, c128),
            nn.Conv2d(c128, 3, kernel_size=7, padding=3),
            nn.Sigmoid(),
        )
        self.global_avg2d = nn.AdaptiveAvgPool2d(1)
        self.global_avg1d = nn.AdaptiveAvgPool1d(1)

    # -- the reference/frame split used by inference ------------------------------------------

    def encode_reference(
        self, ref_img: torch.Tensor, attention_maps: dict | None = None
    ) -> ReferenceFeatures:
        ref_in_feature = self.ref_in_conv(pad_to_multiple_of_4(ref_img))
        ref_in_feature = self._attend("reference", ref_in_feature, attention_maps)
        return ReferenceFeatures(ref_in_feature, self.appearance_conv_list[0](ref_in_feature))

    def generate(
        self,
        source_img: torch.Tensor,
        audio_feature: torch.Tensor,
        reference: ReferenceFeatures,
        attention_maps: dict | None = None,
    ) -> torch.Tensor:
        height, width = source_img.shape[-2:]
        reference = reference.expand(source_img.shape[0])
        source_in_feature = self.source_in_conv(pad_to_multiple_of_4(source_img))
        source_in_feature = self._attend("source", source_in_feature, attention_maps)
        img_para = self.trans_conv(torch.cat([source_in_feature, reference.ref_in_feature], 1))
        img_para = self.global_avg2d(img_para).flatten(1)
        audio_para = self.global_avg1d(self.audio_encoder(audio_feature)).flatten(1)
        trans_para = torch.cat([img_para, audio_para], 1)
        warped = self.adaAT(reference.appearance, trans_para)
        warped = self.appearance_conv_list[1](warped)
        warped = self._attend("appearance", warped, attention_maps)
        out = self.out_conv(torch.cat([source_in_feature, warped], 1))
        return out[..., :height, :width]

    def _attend(self, position: str, x: torch.Tensor, maps: dict | None) -> torch.Tensor:
        """Attention hook at the named position; plain DINet has none."""
        return x

    def forward(
        self, source_img: torch.Tensor, ref_img: torch.Tensor, audio_feature: torch.Tensor
    ) -> torch.Tensor:
        return self.generate(source_img, audio_feature, self.encode_reference(ref_img))


def pad_to_multiple_of_4(x: torch.Tensor) -> torch.Tensor:
    """The encoder halves twice and the decoder doubles twice; crops whose sides are not
    multiples of 4 (mouth sizes that are not multiples of 32) are padded, and the output is
    cropped back."""
    pad_h, pad_w = -x.shape[-2] % 4, -x.shape[-1] % 4
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x
