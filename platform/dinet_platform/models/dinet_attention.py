"""DINet with the seed's attention modules inserted at the key positions.

Positions (each switchable through ``AttentionConfig.positions``):

- ``source``: the source-encoder output (before alignment and decoding);
- ``reference``: the reference-encoder output (reference-only, so it stays cached per avatar);
- ``appearance``: the warped appearance stream right before the decoder.

With every module switched off no attention parameters exist and the model *is* DINet (same
``state_dict``). Each attention block starts as the identity (see ``AttentionBlock``), so a
plain DINet checkpoint loaded into this model reproduces DINet until training moves ``gamma``.
"""

from __future__ import annotations

import torch
from torch import nn

from dinet_platform.config.schema import AttentionConfig
from dinet_platform.models.attention import AttentionBlock
from dinet_platform.models.blocks import scaled
from dinet_platform.models.dinet import DINet

AttentionMaps = dict[str, torch.Tensor]


class DINetWithAttention(DINet):
    def __init__(
        self,
        source_channel: int = 3,
        ref_channel: int = 15,
        audio_channel: int = 29,
        width: float = 1.0,
        attention: AttentionConfig | None = None,
    ):
        super().__init__(source_channel, ref_channel, audio_channel, width)
        attention = attention or AttentionConfig()
        channels = scaled(256, width)
        blocks = {}
        if attention.any_enabled:
            for position in attention.positions:
                blocks[position] = AttentionBlock(
                    channels,
                    spatial=attention.spatial,
                    mouth_focused=attention.mouth_focused,
                    multi_scale=attention.multi_scale,
                    adaptive_fusion=attention.adaptive_fusion,
                    scales=attention.scales,
                    mouth_region_weight=attention.mouth_region_weight,
                    reduction=attention.reduction,
                )
        self.attention = nn.ModuleDict(blocks)

    def _attend(
        self, position: str, x: torch.Tensor, maps: AttentionMaps | None
    ) -> torch.Tensor:
        if position not in self.attention:
            return x
        x, block_maps = self.attention[position](x)
        if maps is not None:
            maps.update({f"{position}/{name}": m.detach() for name, m in block_maps.items()})
        return x

    def forward(
        self,
        source_img: torch.Tensor,
        ref_img: torch.Tensor,
        audio_feature: torch.Tensor,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, AttentionMaps]:
        if not return_attention:
            return super().forward(source_img, ref_img, audio_feature)
        maps: AttentionMaps = {}
        reference = self.encode_reference(ref_img, attention_maps=maps)
        return self.generate(source_img, audio_feature, reference, attention_maps=maps), maps
