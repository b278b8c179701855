"""Large-kernel convolutions computed in the frequency domain (CPU inference).

DINet's alignment encoder runs two 11x11, 128->128 convolutions at a quarter of the crop's
resolution: ~80 % of its FLOPs, and the largest float cost left once the appearance streams
run in int8. A direct 11x11 conv spends 121 multiply-adds per input channel, output channel
and pixel; by the convolution theorem the same result is a per-frequency product of spectra,
a few multiply-adds per channel pair and frequency plus the FFTs of the maps. The per-frequency
products run as two real batched matmuls (the spectrum's real and imaginary parts against the
weight's), 1.3-1.5x faster here than one complex matmul over the same bytes. Measured at full
width on the 2-core development CPU (``bench/inference.py`` covers the whole model):

=====================  =========  ========  =====
conv, input            batch      direct    FFT
=====================  =========  ========  =====
11x11 128->128, 26x20  1          25 ms     13-14 ms
11x11 128->128, 26x20  8          198-246   33 ms
7x7 128->128, 13x10    1          2.1 ms    4.4 ms
7x7 128->128, 13x10    8          14 ms     11 ms
7x7 3->64, 104x80      8          28 ms     97 ms
=====================  =========  ========  =====

So only kernels of :data:`MIN_KERNEL` and wider, with enough channels on both sides, are
replaced. The result equals the direct conv within float rounding (max |diff| ~2e-6 on outputs
of magnitude 6): it is the same linear map, summed in a different order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

MIN_KERNEL = 11
MIN_CHANNELS = 32


def is_fft_candidate(conv: nn.Module) -> bool:
    """A float, stride-1, undilated, ungrouped conv with zero 'same' padding and a kernel of
    at least :data:`MIN_KERNEL` (the shape where the FFT measured faster)."""
    return (
        type(conv) is nn.Conv2d
        and min(conv.kernel_size) >= MIN_KERNEL
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.padding == tuple(k // 2 for k in conv.kernel_size)
        and all(k % 2 == 1 for k in conv.kernel_size)
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


class FFTConv2d(nn.Module):
    """An odd-kernel, stride-1 'same' ``nn.Conv2d`` evaluated as a product of spectra.

    The input is zero-padded by the kernel radius, so the circular convolution of the padded
    map equals the linear one on the kept window. The weight's spectrum depends on the input
    size; it is computed on the first call at each size and kept (not in the state_dict: the
    weight itself is, so saving and loading are unchanged)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_fft_candidate(conv):
            raise ValueError(f"not an FFT-convertible conv: {conv}")
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.radius = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
        self._spectra: dict[tuple, torch.Tensor] = {}

    def _weight_spectrum(self, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        # Keyed without reading self.weight: with int8/fp16 storage (weight_storage) every
        # read converts the whole weight.
        key = (size, like.device, like.dtype)
        if key not in self._spectra:
            # Correlation (what conv2d computes) is convolution with the flipped kernel.
            flipped = torch.flip(self.weight.to(like.dtype), (-2, -1))
            spectrum = torch.fft.rfft2(flipped, s=size)  # (out, in, H, W/2+1)
            spectrum = spectrum.permute(2, 3, 1, 0).flatten(0, 1)  # (frequencies, in, out)
            # Real and imaginary parts as two real matrices: real batched matmuls run ~1.3-1.5x
            # faster than the complex one here, at the same bytes.
            self._spectra[key] = torch.stack([spectrum.real, spectrum.imag]).contiguous()
        return self._spectra[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ry, rx = self.radius
        batch, _, height, width = x.shape
        size = (height + 2 * ry, width + 2 * rx)
        spectrum = torch.fft.rfft2(F.pad(x, (rx, rx, ry, ry)), s=size)  # (B, in, H, W')
        frequencies = spectrum.shape[-2:]
        # (frequencies, [re; im] x B, in) times each real weight matrix (frequencies, in, out)
        rows = torch.view_as_real(spectrum).permute(2, 3, 4, 0, 1).flatten(0, 1).flatten(1, 2)
        weight_re, weight_im = self._weight_spectrum(size, x)
        by_re = torch.bmm(rows, weight_re).unflatten(1, (2, batch))
        by_im = torch.bmm(rows, weight_im).unflatten(1, (2, batch))
        # (a + ib)(c + id) = (ac - bd) + i(ad + bc)
        product = torch.complex(by_re[:, 0] - by_im[:, 1], by_im[:, 0] + by_re[:, 1])
        product = product.unflatten(0, frequencies).permute(2, 3, 0, 1)  # (B, out, H, W')
        out = torch.fft.irfft2(product, s=size)
        out = out[..., 2 * ry: 2 * ry + height, 2 * rx: 2 * rx + width]
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out

    def to_direct(self) -> nn.Conv2d:
        """The equivalent direct ``nn.Conv2d`` (for deployment artifacts: a traced or exported
        program cannot keep a per-size cache, and baking the spectrum in would store ~10x the
        weight's bytes)."""
        weight = self.weight.detach()
        out_channels, in_channels, kh, kw = weight.shape
        conv = nn.Conv2d(in_channels, out_channels, (kh, kw), padding=self.radius,
                         bias=self.bias is not None)
        conv.weight = nn.Parameter(weight.clone(), requires_grad=False)
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        if parametrize.is_parametrized(self, "weight"):  # keep its int8/fp16 storage
            for storage in self.parametrizations.weight:
                parametrize.register_parametrization(conv, "weight", storage, unsafe=True)
        return conv.to(weight.device).eval()

    def extra_repr(self) -> str:
        out_channels, in_channels, kh, kw = self.weight.shape
        return f"{in_channels}, {out_channels}, kernel_size=({kh}, {kw})"


def use_fft_convolutions(model: nn.Module) -> int:
    """Replace, in place, every :func:`is_fft_candidate` conv of ``model`` with an
    :class:`FFTConv2d`; returns how many. Quantized convs are other classes and stay as
    they are."""
    targets = [name for name, module in model.named_modules() if is_fft_candidate(module)]
    for name in targets:
        model.set_submodule(name, FFTConv2d(model.get_submodule(name)))
    return len(targets)


def use_direct_convolutions(model: nn.Module) -> int:
    """Undo :func:`use_fft_convolutions` in place; returns how many convs were swapped back."""
    targets = [name for name, module in model.named_modules() if isinstance(module, FFTConv2d)]
    for name in targets:
        model.set_submodule(name, model.get_submodule(name).to_direct())
    return len(targets)
