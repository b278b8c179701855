"""int8 quantization of the generation-only DINet (CPU).

Two kinds, and why both exist:

- **Dynamic int8** (:func:`quantize_dynamic_int8`): ``torch.ao.quantization.quantize_dynamic``
  on ``nn.Linear``. DINet is a conv net: its only Linear layers are the AdaAT parameter heads
  (and the attention fusion weights), ~1.7 % of the parameters and ~0.003 % of the FLOPs at
  full width (see :func:`linear_share`). It exists because the seed lists it and to show, by
  measurement, that it cannot speed DINet up.
- **Static int8** (:func:`quantize_static_int8`): the convolutions, with activation ranges
  calibrated on real frames. This is where the CPU speed-up is: int8 conv kernels measured
  ~2.5x fp32 on this AVX2 CPU. Done with FX graph-mode quantization
  (``torch.ao.quantization.quantize_fx``, ``x86`` engine) per conv stage: it ships with torch
  2.13 (marked deprecated in favour of ``torchao``, but working), runs real int8 kernels in
  eager mode without a compiler, and traces to TorchScript for a deployment artifact.

  Why not PT2E (``torch.export`` + ``prepare_pt2e``/``convert_pt2e`` + ``X86InductorQuantizer``),
  the path torch recommends: in torch 2.13 it is gone from ``torch.ao`` and lives in the
  separate ``torchao`` package (0.18.0 on PyPI, works with torch 2.13). Tried on DINet's
  alignment stack it matched FX's speed (21 vs 23 ms) and accuracy, but its int8 kernels only
  exist after ``torch.compile`` with Inductor freezing (uncompiled, the converted graph runs
  quantize/dequantize in fp32, an order of magnitude slower). That costs a compile per shape,
  a C++ toolchain at serve time, a new dependency, and no portable artifact. FX gives the same
  speed without any of that; PT2E becomes the path when ``torch.ao`` is finally removed.

What stays in float, and why: the AdaAT warp (one ``grid_sample`` on float coordinates), the
audio encoder (1-D, ~0.01 % of the FLOPs; its pre-activation BatchNorm1d has no quantized
kernel), the attention blocks (small, and their gates multiply features), and by default
everything upstream of the warp's parameters (see ``STATIC_INT8_STAGES``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dinet_platform.optimize.structure import InferenceGenerator

if TYPE_CHECKING:
    from torch.ao.quantization import QConfig

Int8Scope = Literal["appearance", "balanced", "full"]

# Sub-modules of InferenceGenerator that static int8 quantizes, by scope. Each is one FX unit:
# activations are quantized on entry and dequantized on exit, everything between stays int8.
#
# Why scopes: everything upstream of the AdaAT warp's parameters (source encoder, reference
# encoder, alignment encoder) is condensed into one pooled code that decides *where* the warp
# samples; quantization noise there is barely averaged, grows through the alignment stack and
# is amplified by the warp. What paints the pixels (the appearance streams and the decoder)
# tolerates int8 well. Measured on the stand-in model (random init, BatchNorm settled on
# image-like frames; bench/inference.py), output PSNR vs fp32 and serialized size vs fp32:
#   appearance  42 dB, 0.59x bytes  (full width, mouth 64)
#   balanced    34 dB               (width 0.25, mouth 64)
#   full        26 dB, 0.28x bytes  (full width, mouth 64)
# The stand-in is likely pessimistic (a random BatchNorm net grows a 1 % perturbation to 3.7 %
# through the alignment stack); pick the scope by running the benchmark on a trained checkpoint.
#
# "appearance" (default): both appearance streams, the decoder and the output conv: ~63 % of the
#     per-frame FLOPs with cached references (and all of the cached reference-side appearance
#     stream). The output conv (128 -> 3 channels, 7x7, at full resolution) is there for speed,
#     not FLOPs: with 3 output channels the fp32 conv runs at a fifth of its usual rate and the
#     int8 one ~2x faster; its input is the decoder's dequantized int8 map, so only its weights
#     and its pre-sigmoid output add rounding (output PSNR unchanged at 37.3 dB, full width).
# "balanced": + the alignment body (the two full-resolution 11x11 convs): ~88 %.
# "full": every conv stage: fastest, least accurate.
STATIC_INT8_STAGES: dict[str, tuple[str, ...]] = {
    "appearance": ("appearance_reference", "appearance_frame", "decoder", "output_conv"),
    "balanced": (
        "appearance_reference", "alignment.body", "appearance_frame", "decoder", "output_conv",
    ),
    "full": (
        "source_encoder",
        "reference_encoder",
        "reference_alignment",
        "alignment",
        "appearance_reference",
        "appearance_frame",
        "decoder",
        "output_conv",
    ),
}


class CalibrationBatch(NamedTuple):
    """One batch of real frames for calibration, in ``generate``'s argument order.

    ``references`` are the stacked reference faces ``(B, 15, H, W)``, not their features: the
    reference encoder is quantized too, so its activation ranges need the frames."""

    source: torch.Tensor
    audio: torch.Tensor
    references: torch.Tensor


@contextlib.contextmanager
def quiet_ao() -> Iterator[None]:
    """torch 2.13 marks torch.ao.quantization and quantized tensors deprecated (in favour of
    torchao); the APIs work, so keep those warnings out of every caller's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quant_min and quant_max.*")
        yield


def _batches(calibration: Iterable[CalibrationBatch | tuple], limit: int | None) -> Iterator:
    for index, batch in enumerate(calibration):
        if limit is not None and index >= limit:
            return
        yield CalibrationBatch(*batch)


# -- dynamic int8 ------------------------------------------------------------------------------


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (weights int8,
    activations quantized per call). Convolutions are untouched: see the module doc."""
    from torch.ao.quantization import quantize_dynamic

    with quiet_ao():
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


class LinearShare(NamedTuple):
    """How much of a model dynamic int8 (Linear only) can touch."""

    linear_params: int
    total_params: int
    linear_flops: int
    total_flops: int

    @property
    def param_fraction(self) -> float:
        return self.linear_params / max(1, self.total_params)

    @property
    def flop_fraction(self) -> float:
        return self.linear_flops / max(1, self.total_flops)


def linear_share(model: nn.Module, *inputs: torch.Tensor) -> LinearShare:
    """Measure the share of parameters and forward FLOPs in ``nn.Linear`` layers (FLOPs counted
    by ``torch.utils.flop_counter`` on one forward of ``model(*inputs)``)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    linear_params = sum(p.numel() for m in linears for p in m.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    linear_flops = 0
    for name, ops in counts.items():
        module = _submodule(model, name)
        if isinstance(module, nn.Linear):
            linear_flops += sum(ops.values())
    return LinearShare(linear_params, sum(p.numel() for p in model.parameters()),
                       linear_flops, total)


def _submodule(model: nn.Module, counter_name: str) -> nn.Module | None:
    """Resolve a FlopCounterMode module name (``Root.a.b``) to the module, if any."""
    parts = counter_name.split(".")[1:]
    module: nn.Module | None = model
    for part in parts:
        module = getattr(module, part, None) if module is not None else None
    return module


# -- static int8 -------------------------------------------------------------------------------


def _capture_stage_inputs(
    model: InferenceGenerator, stages: tuple[str, ...], batch: CalibrationBatch
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Run one batch through the float model and record each stage's inputs (FX needs
    example inputs per stage)."""
    captured: dict[str, tuple[torch.Tensor, ...]] = {}
    handles = []
    for name in stages:
        def hook(_module: nn.Module, args: tuple, name: str = name) -> None:
            captured.setdefault(name, tuple(args))

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(batch.source, batch.references, batch.audio)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def int8_qconfig() -> QConfig:
    """8-bit activations with 7-bit weights (per-channel symmetric, [-64, 63]).

    The x86 (fbgemm) int8 conv on AVX2 multiplies u8 activations by s8 weights and adds pairs
    into int16 (``vpmaddubsw``), which saturates for 8-bit x 8-bit; torch's default x86 qconfig
    therefore drops the *activations* to 7 bits. Dropping the *weights* to 7 bits instead is
    just as safe (2 x 255 x 64 < 2^15) and measured 4 dB better output PSNR here: per-channel
    weights lose little from one bit, per-tensor activations lose a lot."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    return QConfig(
        activation=HistogramObserver.with_args(reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
        ),
    )


def quantize_static_int8(
    model: InferenceGenerator,
    calibration: Iterable[CalibrationBatch | tuple],
    *,
    scope: Int8Scope = "appearance",
    max_batches: int | None = None,
) -> InferenceGenerator:
    """A copy of ``model`` with its conv stages (see ``STATIC_INT8_STAGES[scope]``) statically
    quantized to int8 with FX graph mode on the ``x86`` engine, activation ranges calibrated on
    ``calibration``: :class:`CalibrationBatch` es of real frames (a few dozen frames covering
    the avatars to serve). CPU only; the result runs in eager mode."""
    if not isinstance(model, InferenceGenerator):
        raise TypeError("static int8 needs the folded InferenceGenerator (prepare_for_inference)")
    if scope not in STATIC_INT8_STAGES:
        raise ValueError(f"int8 scope must be one of {sorted(STATIC_INT8_STAGES)}, got {scope!r}")
    batches = list(_batches(calibration, max_batches))
    if not batches:
        raise ValueError("static int8 needs at least one calibration batch of real frames")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    stages = STATIC_INT8_STAGES[scope]
    with quiet_ao():
        torch.backends.quantized.engine = "x86"
        model = copy.deepcopy(model).cpu().float().eval()
        examples = _capture_stage_inputs(model, stages, batches[0])
        mapping = get_default_qconfig_mapping("x86").set_global(int8_qconfig())
        for name in stages:
            prepared = prepare_fx(model.get_submodule(name), mapping, examples[name])
            model.set_submodule(name, prepared)
        with torch.no_grad():
            for batch in batches:
                model(batch.source, batch.references, batch.audio)
        for name in stages:
            model.set_submodule(name, convert_fx(model.get_submodule(name)))
    return model.eval()
