"""Nearest-neighbour upsampling followed by a 3x3 conv, computed at the low resolution.

DINet's decoder doubles its feature map twice (``UpBlock2d``: nearest x2, then a 3x3 conv):
~19 % of a frame's FLOPs, most of them in the last block at the crop's full resolution. On
the doubled map each 3x3 window covers only 2x2 distinct input pixels, because nearest
upsampling repeats every pixel in a 2x2 square; which of the 3x3 taps share a pixel depends
only on the output pixel's parity (its *phase*). So each of the four phases is a 2x2 conv
of the *low-resolution* input whose taps are sums of the 3x3 kernel's taps:

- rows of even outputs read input rows ``i-1, i`` with row weights ``w0, w1 + w2``;
- rows of odd outputs read input rows ``i, i+1`` with row weights ``w0 + w1, w2``;
- the same holds for columns.

One 2x2 conv with the four phase kernels stacked as output channels (padding 1) computes all
of them, and :func:`interleave_phases` puts each phase's pixels in its place: 4 x 4 taps per
input pixel instead of 4 x 9, 4/9 of the multiply-adds. Zero padding of the doubled map is
zero padding of the input, so the result equals upsample + conv within float rounding (max
|diff| ~5e-6 on outputs of magnitude 3). Measured on the 2-core development CPU, full width
(128 -> 128 channels), upsample + conv + ReLU -> this, ranges over runs:

======================  =====  ================  ================
input (decoder block)   batch  float32 (ms)      int8, FX (ms)
======================  =====  ================  ================
52x40 (the last)        1      17-20 -> 9-10     12-13 -> 6
52x40                   8      191-235 -> 160    92-117 -> 60-82
26x20                   1      4.4-6.2 -> 2-3.5  3.1-3.2 -> 1.6
26x20                   8      58-83 -> 29-36    18-19 -> 9.5
======================  =====  ================  ================
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
"""(row, column) parity of the output pixels each block of the phase conv's channels makes."""


def is_subpixel_candidate(conv: nn.Module) -> bool:
    """A 3x3, stride-1, 'same' zero-padded, ungrouped ``nn.Conv2d`` (what ``UpBlock2d`` has)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _two_tap(weight: torch.Tensor, dim: int, parity: int) -> torch.Tensor:
    """Collapse a 3-tap axis ``dim`` of ``weight`` to the 2 taps one output parity reads."""
    w0, w1, w2 = weight.unbind(dim)
    taps = (w0, w1 + w2) if parity == 0 else (w0 + w1, w2)
    return torch.stack(taps, dim)


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``(out, in, 3, 3)`` -> ``(4 * out, in, 2, 2)``: the 2x2 kernels of :data:`PHASES`,
    stacked along the output channels (summed in float64: one rounding)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {tuple(weight.shape)}")
    wide = weight.double()
    kernels = [_two_tap(_two_tap(wide, 2, row), 3, column) for row, column in PHASES]
    return torch.cat(kernels, 0).to(weight.dtype)


def interleave_phases(phases: torch.Tensor, channels: int) -> torch.Tensor:
    """The doubled map from the phase conv's output ``(B, 4 * channels, H + 1, W + 1)``:
    phase ``(a, b)`` is the window starting at ``(a, b)`` and fills rows ``a::2``, columns
    ``b::2``. Keeps the input's memory format (int8 convs give channels-last maps), and
    takes int8 maps too (as float: FX quantization leaves this function unquantized)."""
    if phases.is_quantized:
        phases = phases.dequantize()
    height, width = phases.shape[-2] - 1, phases.shape[-1] - 1
    channels_last = phases.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        phases.shape[0], channels, 2 * height, 2 * width, dtype=phases.dtype,
        device=phases.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    for index, (a, b) in enumerate(PHASES):
        block = phases[:, index * channels:(index + 1) * channels]
        out[:, :, a::2, b::2] = block[..., a:a + height, b:b + width]
    return out


# FX graph-mode quantization traces through forward; as a leaf call, the interleave stays one
# float node instead of per-slice dequantize/quantize pairs.
torch.fx.wrap("interleave_phases")


class SubpixelUpConvReLU(nn.Module):
    """``relu(conv(upsample_nearest_2x(x)))`` for a 3x3 ``conv``, computed as one 2x2 conv at
    the input's resolution and an interleave (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_subpixel_candidate(conv):
            raise ValueError(f"not a 3x3 'same' conv: {conv}")
        self.conv = nn.Conv2d(conv.in_channels, len(PHASES) * conv.out_channels, 2, padding=1,
                              bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(phase_kernels(conv.weight.detach()))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().repeat(len(PHASES)))
        self.conv.to(conv.weight.device)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels // len(PHASES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interleave_phases(F.relu(self.conv(x)), self.out_channels)
