"""The generation-only DINet: what serving runs, and nothing else.

:func:`prepare_for_inference` turns a trained :class:`~dinet_platform.models.DINet` (or
``DINetWithAttention``) into an :class:`InferenceGenerator`:

- only the modules that generation uses (no discriminators, no attention-map outputs);
- every BatchNorm folded into its convolution where that is exact (see ``folding``), and each
  decoder upsampling block (nearest x2, 3x3 conv) computed as four 2x2 phase convs at its
  input's resolution, 4/9 of the work (see ``upsampling``);
- the AdaAT warp as a 2-D ``grid_sample`` of a channel-blended map (:class:`FloatWarp`: the
  same trilinear sampling, half the corners);
- eval-mode constant folding: attention blocks whose learned gate ``gamma`` is exactly 0 are the
  identity and are dropped; the first alignment conv, which reads ``cat([source, reference])``,
  is split into a source half and a reference half (exact: a conv over concatenated channels is
  the sum of convs over each part), so the reference half becomes a per-avatar constant;
- the reference/frame split of the model kept, with plain tensors in and out (exportable):
  ``encode_reference(references) -> (alignment_term, appearance)`` once per avatar, then
  ``generate(source, audio, alignment_term, appearance)`` per frame batch.

The per-avatar features are the reference half of the alignment conv's pre-activation
(``c128 x H/4 x W/4``) and the first appearance stream (``c256 x H/4 x W/4``); caching them
skips ~30 % of the full forward's FLOPs (the reference encoder, the first appearance stream and
half of the first alignment conv).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.models.attention import AttentionBlock, attend
from dinet_platform.models.blocks import AdaAT, DownBlock2d, SameBlock2d
from dinet_platform.models.dinet import DINet, pad_to_multiple_of_4
from dinet_platform.optimize.folding import fold_conv_bn, fold_sequential

ATTENTION_POSITIONS = ("source", "reference", "appearance")


class GenerationAttention(nn.Module):
    """An :class:`AttentionBlock` that returns only the attended features: the maps the
    training model collects for visualisation (and the fused map it sums up for them) are not
    computed or returned."""

    def __init__(self, block: AttentionBlock):
        super().__init__()
        self.branches = copy.deepcopy(block.branches)
        self.fusion = copy.deepcopy(block.fusion)
        self.register_buffer("gamma", block.gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attend(x, self.branches, self.fusion, self.gamma)


class FloatWarp(nn.Module):
    """The AdaAT warp, as 2-D sampling of a channel-blended map, always in float32.

    AdaAT samples a ``(D, H, W)`` volume trilinearly, but every channel's grid has a fixed
    depth coordinate: channel ``k`` reads channels ``j, j + 1`` (zero outside) with weights
    ``1 - t, t`` that depend only on ``k``. The x/y grid is the same for both, so trilinear
    sampling equals bilinear sampling of the blend ``(1 - t) f_j + t f_(j+1)``: one channel mix
    of the (per-avatar) feature map, then a 2-D ``grid_sample`` with channels as batch. Equal
    to the 3-D form within float rounding, and 2-3x faster on CPU (half the corners per
    sample).

    Sampling coordinates need float precision (the channel axis alone has 256 grid points in
    [-1, 1]), so the warp stays in float when the rest runs in int8, fp16 or bf16; inputs are
    cast up and the result back to the input's dtype (a no-op in fp32)."""

    def __init__(self, adaat: AdaAT):
        super().__init__()
        self.adaat = copy.deepcopy(adaat)

    @staticmethod
    def blend_channels(feature_map: torch.Tensor) -> torch.Tensor:
        """Mix each channel's two depth neighbours as trilinear sampling would."""
        depth = feature_map.shape[1]
        # Channel k's depth coordinate linspace(-1, 1)[k] in pixels (align_corners=False),
        # shifted by one for the zero channel padded in front.
        z = (torch.linspace(-1.0, 1.0, depth, device=feature_map.device) + 1) * depth / 2 + 0.5
        lower = torch.floor(z)
        upper_weight = (z - lower).view(1, depth, 1, 1)
        padded = F.pad(feature_map, (0, 0, 0, 0, 1, 1))
        below, above = padded[:, lower.long()], padded[:, lower.long() + 1]
        return below + upper_weight * (above - below)

    def forward(self, feature_map: torch.Tensor, para_code: torch.Tensor) -> torch.Tensor:
        """``feature_map`` ``(1 or B, D, H, W)`` (an avatar's features serve every frame),
        ``para_code`` ``(B, para_ch)``."""
        _, depth, height, width = feature_map.shape
        batch = para_code.shape[0]
        grids = self.adaat.channel_grids(para_code.float(), height, width, torch.float32)
        blended = self.blend_channels(feature_map.float()).expand(batch, -1, -1, -1)
        sampled = F.grid_sample(
            blended.reshape(batch * depth, 1, height, width),
            grids.reshape(batch * depth, height, width, 2),
            align_corners=False,
        )
        return sampled.view(batch, depth, height, width).to(feature_map.dtype)


class AlignmentEncoder(nn.Module):
    """DINet's ``trans_conv`` with its first conv split into source and reference halves, and
    the rest split where the resolution first drops:

    - ``source_conv``: ``relu(source_conv(source_feature) + reference_term)``, where
      ``reference_term`` is the (cached) reference half, bias-free;
    - ``body``: the full-resolution large-kernel convs (two 11x11: ~80 % of the FLOPs);
    - ``tail``: the downsampling pyramid to a few pixels, pooled afterwards into the image code.

    The split lets int8 take the body (the FLOPs) while the head and tail, whose errors reach
    the warp parameters almost unaveraged, stay float."""

    def __init__(self, source_conv: nn.Conv2d, body: nn.Sequential, tail: nn.Sequential):
        super().__init__()
        self.source_conv = source_conv
        self.body = body
        self.tail = tail

    def forward(self, source_feature: torch.Tensor, reference_term: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.source_conv(source_feature) + reference_term)
        return self.tail(self.body(x))


class InferenceGenerator(nn.Module):
    """Generation-only DINet with folded BatchNorms and the reference/frame split.

    Build it with :func:`prepare_for_inference`; eval-mode outputs equal the source model's
    within float rounding (tested at 1e-5)."""

    def __init__(
        self,
        *,
        source_encoder: nn.Sequential,
        reference_encoder: nn.Sequential,
        reference_alignment: nn.Conv2d,
        alignment: AlignmentEncoder,
        audio_encoder: nn.Sequential,
        appearance_reference: nn.Sequential,
        warp: FloatWarp,
        appearance_frame: nn.Sequential,
        decoder: nn.Sequential,
        output_conv: nn.Conv2d,
        attention: dict[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.source_encoder = source_encoder
        self.reference_encoder = reference_encoder
        self.reference_alignment = reference_alignment
        self.alignment = alignment
        self.audio_encoder = audio_encoder
        self.appearance_reference = appearance_reference
        self.warp = warp
        self.appearance_frame = appearance_frame
        self.decoder = decoder
        self.output_conv = output_conv
        attention = attention or {}
        # Fixed attributes (Identity where absent) keep forward free of dict look-ups, which
        # tracing, export and scripting all handle better.
        self.attend_source = attention.get("source", nn.Identity())
        self.attend_reference = attention.get("reference", nn.Identity())
        self.attend_appearance = attention.get("appearance", nn.Identity())

    def encode_reference(self, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-avatar features from the 5 stacked reference faces ``(B, 15, H, W)``:
        ``(alignment_term, appearance)``. Batch 1 features serve any frame batch."""
        feature = self.attend_reference(self.reference_encoder(pad_to_multiple_of_4(references)))
        return self.reference_alignment(feature), self.appearance_reference(feature)

    def generate(
        self,
        source: torch.Tensor,
        audio: torch.Tensor,
        alignment_term: torch.Tensor,
        appearance: torch.Tensor,
    ) -> torch.Tensor:
        """Faces ``(B, 3, H, W)`` in [0, 1] from masked sources ``(B, 3, H, W)``, audio windows
        ``(B, A, 5)`` and the avatar's features (batch 1 or B)."""
        height, width = source.shape[-2:]
        source_feature = self.attend_source(self.source_encoder(pad_to_multiple_of_4(source)))
        image_code = self.alignment(source_feature, alignment_term).mean((2, 3))
        audio_code = self.audio_encoder(audio).mean(2)
        code = torch.cat([image_code, audio_code], 1)
        warped = self.appearance_frame(self.warp(appearance, code))
        warped = self.attend_appearance(warped)
        out = self.decoder(torch.cat([source_feature, warped], 1))
        out = torch.sigmoid(self.output_conv(out))
        return out[..., :height, :width]

    def forward(
        self, source: torch.Tensor, references: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        """The full per-frame forward (the original signature); serving caches instead."""
        return self.generate(source, audio, *self.encode_reference(references))


def _split_first_alignment_conv(
    block: SameBlock2d, source_channels: int
) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Fold the block's BN, then split its conv over ``cat([source, reference])`` into a
    source conv (keeping the bias) and a bias-free reference conv."""
    conv = fold_conv_bn(block.conv, block.norm)
    weight, bias = conv.weight.detach(), conv.bias
    reference_channels = conv.in_channels - source_channels

    def half(channels: int, w: torch.Tensor, with_bias: bool) -> nn.Conv2d:
        part = nn.Conv2d(
            channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            bias=with_bias,
        )
        with torch.no_grad():
            part.weight.copy_(w)
            if with_bias and bias is not None:
                part.bias.copy_(bias)
        return part

    return (
        half(source_channels, weight[:, :source_channels], True),
        half(reference_channels, weight[:, source_channels:], False),
    )


def _generation_attention(generator: DINet) -> dict[str, nn.Module]:
    blocks = getattr(generator, "attention", None)
    kept: dict[str, nn.Module] = {}
    if blocks is None:
        return kept
    for position in ATTENTION_POSITIONS:
        if position not in blocks:
            continue
        block = blocks[position]
        if isinstance(block, AttentionBlock) and bool((block.gamma == 0).all()):
            continue  # gate exactly 0: x + 0 * (attended - x) is x
        kept[position] = GenerationAttention(block)
    return kept


def prepare_for_inference(generator: DINet) -> InferenceGenerator:
    """A generation-only, BN-folded copy of ``generator`` (which is left untouched), in eval
    mode with gradients off. Its outputs equal ``generator.eval()``'s within float rounding."""
    if not isinstance(generator, DINet):
        raise TypeError(f"expected a DINet generator, got {type(generator).__name__}")
    source_channels = generator.source_in_conv[-1].conv.out_channels
    trans = list(generator.trans_conv)
    # the body ends at the first stride-2 block (DownBlock2d): everything before runs at H/4
    split = next(i for i, block in enumerate(trans) if isinstance(block, DownBlock2d))
    source_conv, reference_conv = _split_first_alignment_conv(trans[0], source_channels)
    out_conv = list(generator.out_conv)
    final_conv, sigmoid = out_conv[-2], out_conv[-1]
    if not isinstance(final_conv, nn.Conv2d) or not isinstance(sigmoid, nn.Sigmoid):
        raise TypeError("unexpected out_conv layout: expected [..., Conv2d, Sigmoid]")
    model = InferenceGenerator(
        source_encoder=fold_sequential(generator.source_in_conv),
        reference_encoder=fold_sequential(generator.ref_in_conv),
        reference_alignment=reference_conv,
        alignment=AlignmentEncoder(
            source_conv, fold_sequential(trans[1:split]), fold_sequential(trans[split:])
        ),
        audio_encoder=fold_sequential(generator.audio_encoder),
        appearance_reference=fold_sequential(generator.appearance_conv_list[0]),
        warp=FloatWarp(generator.adaAT),
        appearance_frame=fold_sequential(generator.appearance_conv_list[1]),
        decoder=fold_sequential(out_conv[:-2]),
        output_conv=copy.deepcopy(final_conv),
        attention=_generation_attention(generator),
    )
    return model.eval().requires_grad_(False)
