"""Smaller weights for the stages that still compute in float: stored in int8 or fp16, read
back as fp32 when a layer runs.

Static int8 (``quantize``) shrinks and speeds up the stages it quantizes, but the ones it
leaves in float are ~45 % of DINet's parameters: the alignment encoder (whose output drives
the warp) and the small stages around it. Their *activations* are what int8 cannot take;
their *weights* store fine in fewer bits. Measured at full width, mouth 64, on top of
``all`` (42 dB vs fp32 with every float weight in fp32), storing one stage's weights at a
time (``bench/inference.py`` stand-in):

=========================  ====================  ==================
stage                      int8 per channel      fp16
=========================  ====================  ==================
source encoder             35.4 dB               41.7 dB
reference encoder          32.2                  41.8
alignment body (11x11)     38.8                  41.8
alignment tail             39.2                  41.8
every other float stage    40-42                 41.7-41.8
=========================  ====================  ==================

So the alignment body and tail (~34 % of the parameters) keep int8 weights and every other
float weight keeps fp16 (~11 %): 37.5 dB together, and with the int8 stages the model takes
~0.28x the bytes of fp32. Compute stays fp32: each layer turns its stored weight back into
fp32 when it runs (a ``torch.nn.utils.parametrize`` parametrization, so ``state_dict``,
``torch.export`` and TorchScript all carry the small tensor). An FFT conv does that once
per input size, for its cached spectrum.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from dinet_platform.optimize.fft_conv import FFTConv2d

INT8_STORED_STAGES = ("alignment.body", "alignment.tail")
FLOAT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, FFTConv2d)


class Int8Weight(nn.Module):
    """Parametrization: int8 with one symmetric scale per output channel (127 levels a side,
    no activation to saturate against: the product is computed in fp32)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        scale = weight.detach().abs().flatten(1).amax(1).clamp(min=1e-12) / 127.0
        self.register_buffer("scale", scale.view(shape))

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.scale.dtype) * self.scale

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.round(weight / self.scale).clamp(-127, 127).to(torch.int8),)


class HalfWeight(nn.Module):
    """Parametrization: fp16 storage, fp32 when read."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor]:
        return (weight.half(),)


def store_weight(layer: nn.Module, storage: Int8Weight | HalfWeight) -> None:
    """Keep ``layer.weight`` in ``storage``'s format (in place; inference only: an int8 tensor
    cannot require grad). ``right_inverse`` returns a 1-tuple because parametrize refuses a
    dtype change for a single returned tensor, not for a sequence."""
    layer.weight.requires_grad_(False)
    parametrize.register_parametrization(layer, "weight", storage, unsafe=True)


def compress_float_weights(model: nn.Module) -> dict[str, str]:
    """Store the weights of ``model``'s float layers (plain convs, linears and FFT convs; int8
    modules are other classes and stay as they are) in int8 under
    :data:`INT8_STORED_STAGES` and in fp16 elsewhere, in place. Returns ``{layer: format}``."""
    int8_prefixes = tuple(stage + "." for stage in INT8_STORED_STAGES)
    stored: dict[str, str] = {}
    for name, layer in list(model.named_modules()):
        if type(layer) not in FLOAT_LAYERS or parametrize.is_parametrized(layer, "weight"):
            continue
        if layer.weight.dtype != torch.float32:
            continue
        if name.startswith(int8_prefixes):
            store_weight(layer, Int8Weight(layer.weight))
            stored[name] = "int8"
        else:
            store_weight(layer, HalfWeight())
            stored[name] = "fp16"
    return stored

