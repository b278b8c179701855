"""One entry point: ``optimize(generator, mode, calibration=...) -> InferenceEngine``.

Modes (each step alone, so the benchmark can attribute speed to it, and ``all`` combined):

- ``fp32``: the original model, full network every frame (the baseline, "naive");
- ``structure``: generation-only module, BatchNorms folded, the decoder's upsampling convs run
  at their input's resolution, the warp as 2-D sampling (:func:`prepare_for_inference`), and
  on CPU the 11x11 convolutions computed by FFT (:mod:`~dinet_platform.optimize.fft_conv`);
- ``cache``: reference features encoded once per avatar, original model otherwise;
- ``dynamic_int8``: ``quantize_dynamic`` on the Linear layers (all DINet has: see ``quantize``);
- ``static_int8``: structure + int8 convolutions calibrated on ``calibration`` frames;
- ``compile``: ``torch.compile`` (Inductor, frozen weights) of the original model's entry points;
- ``all``: structure + cache + static int8 + the float stages' weights stored in int8/fp16
  (:mod:`~dinet_platform.optimize.weight_storage`) + compile of the stages left in float.

Accuracy against the fp32 model's output (``tests/test_inference.py`` holds every mode to it):
``structure``, ``cache`` and ``compile`` only reorder float arithmetic: within ``EXACT_ATOL``
(1e-5, max abs) on well-conditioned weights, and in general no further from a float64
evaluation than twice the fp32 model itself is on image-like stand-ins, and than
``REORDER_FACTOR`` (4) times on real frames with BatchNorms settled on a few of them (near-
constant channels of flat-shaded synthetic faces give BatchNorm scales in the hundreds, and
folding them into the weights changes where fp32 rounds: measured 2.4x, ~4e-5 of full scale,
for ``structure`` on a width-0.125 model in ``tests/test_optimize.py``); the int8 modes are
lossy and held to ``MIN_PSNR_DB`` (peak 1.0) on image-like inputs. The int8 thresholds are
deliberately loose (35 dB, "no visible difference" territory) because the measured figure
depends on the weights: on a randomly initialised stand-in with settled BatchNorm statistics
we measure ~40-42 dB for static int8 (default ``appearance`` scope) and ~42 dB for dynamic
int8, at width 0.125 and at full width, and ~37.5 dB for ``all`` at full width (its float
stages' weights stored in int8/fp16); the ``full`` int8 scope is faster and smaller but
measured only ~26 dB there, so it is opt-in (``int8_scope="full"``) until a trained
checkpoint says otherwise.

``compile`` is part of ``all`` because ``all`` means every step. On this 2-core CPU its gain is
mixed (measured contended): none at full width, mouth 64 (fp32 eager convs already run near
the matmul roof), +25 % for ``all`` at width 0.25, batch 8 (small convs, where fusing the
glue between them pays). Its first call per input shape compiles for 10-120 s; a server that
cannot afford that uses ``replace(OptimizeOptions.for_mode("all"), compile=False)``.

On CUDA, int8 (a CPU kernel family) is replaced by half precision: ``static_int8`` and ``all``
run the folded model in bfloat16 (or ``half_dtype``) with channels-last memory, the warp kept
in float32. ``dynamic_int8`` on CUDA is refused rather than silently meaningless.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from dinet_platform.models.dinet import DINet, ReferenceFeatures
from dinet_platform.optimize import MODES, Mode
from dinet_platform.optimize.fft_conv import use_fft_convolutions
from dinet_platform.optimize.quantize import (
    CalibrationBatch,
    Int8Scope,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from dinet_platform.optimize.structure import InferenceGenerator, prepare_for_inference
from dinet_platform.optimize.weight_storage import compress_float_weights
from dinet_platform.runtime.engine import InferenceEngine

EXACT_ATOL = 1e-5
REORDER_FACTOR = 4.0
MIN_PSNR_DB = {"dynamic_int8": 35.0, "static_int8": 35.0, "all": 35.0}
HalfDtype = Literal["bf16", "fp16"]
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Inductor settings for compile: freezing turns weights into constants so Inductor can
# constant-fold and pre-pack them (the part of compilation that pays off for a conv net).
COMPILE_OPTIONS = {"freezing": True}


class DINetBackend(nn.Module):
    """An unmodified DINet behind the engine's backend interface (baselines, ``cache``,
    ``dynamic_int8`` and ``compile`` alone)."""

    def __init__(self, generator: DINet):
        super().__init__()
        self.generator = generator

    def encode_reference(self, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.generator.encode_reference(references)
        return features.ref_in_feature, features.appearance

    def generate(
        self,
        source: torch.Tensor,
        audio: torch.Tensor,
        ref_in_feature: torch.Tensor,
        appearance: torch.Tensor,
    ) -> torch.Tensor:
        return self.generator.generate(source, audio, ReferenceFeatures(ref_in_feature, appearance))

    def forward(
        self, source: torch.Tensor, references: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        return self.generator(source, references, audio)


@dataclass(frozen=True)
class OptimizeOptions:
    """The composable switches behind the modes."""

    fold: bool = False
    fft_conv: bool = False
    """11x11 convs by FFT (CPU; needs ``fold``); convs quantized to int8 are left to int8."""
    cache_reference: bool = False
    dynamic_int8: bool = False
    static_int8: bool = False
    int8_scope: Int8Scope = "appearance"
    compress_weights: bool = False
    """Float stages keep their weights in int8 (alignment body, tail) or fp16, computing in
    fp32 (CPU; needs ``fold``): the model's bytes, not its speed."""
    compile: bool = False
    compile_backend: str = "inductor"
    """``torch.compile`` backend; tests use ``"eager"`` to check graph capture in seconds
    (Inductor codegen takes a minute or more on 2 cores)."""
    half_dtype: HalfDtype = "bf16"

    def __post_init__(self) -> None:
        # Both rewrite the folded InferenceGenerator's stages; DINet itself has neither.
        for name in ("static_int8", "fft_conv", "compress_weights"):
            if getattr(self, name) and not self.fold:
                raise ValueError(f"{name} needs fold=True (the folded InferenceGenerator)")

    @classmethod
    def for_mode(cls, mode: Mode) -> OptimizeOptions:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        return {
            "fp32": cls(),
            "structure": cls(fold=True, fft_conv=True),
            "cache": cls(cache_reference=True),
            "dynamic_int8": cls(dynamic_int8=True),
            "static_int8": cls(fold=True, static_int8=True),
            "compile": cls(compile=True),
            "all": cls(fold=True, fft_conv=True, cache_reference=True, static_int8=True,
                       compress_weights=True, compile=True),
        }[mode]

    def describe(self) -> str:
        parts = [name for name in ("fold", "fft_conv", "cache_reference", "dynamic_int8")
                 if getattr(self, name)]
        if self.static_int8:
            parts.append(f"static_int8[{self.int8_scope}]")
        parts += [name for name in ("compress_weights", "compile") if getattr(self, name)]
        return "+".join(parts) or "fp32"


def optimize(
    generator: DINet,
    mode: Mode | OptimizeOptions = "all",
    *,
    calibration: Iterable[CalibrationBatch | tuple] | None = None,
    device: torch.device | str = "cpu",
    int8_scope: Int8Scope | None = None,
) -> InferenceEngine:
    """An :class:`InferenceEngine` for ``generator`` (left untouched) with ``mode``'s
    optimisations. ``calibration`` (real frames, :class:`CalibrationBatch` es) is required for
    static int8 on CPU; ``int8_scope`` overrides the mode's quantized stages."""
    options = mode if isinstance(mode, OptimizeOptions) else OptimizeOptions.for_mode(mode)
    if int8_scope is not None:
        options = replace(options, int8_scope=int8_scope)
    device = torch.device(device)
    generator = copy.deepcopy(generator).eval().requires_grad_(False)
    dtype = torch.float32

    if device.type == "cuda":
        # cuDNN picks its own conv algorithms; half precision already halves the weights
        options = replace(options, fft_conv=False, compress_weights=False)
        if options.dynamic_int8:
            raise ValueError("dynamic int8 is a CPU kernel; on CUDA use static_int8/all (bf16)")
        if options.static_int8:  # int8 -> half precision on GPU, on the folded model
            options = replace(options, static_int8=False, fold=True)
            dtype = HALF_DTYPES[options.half_dtype]

    backend: nn.Module = (
        prepare_for_inference(generator) if options.fold else DINetBackend(generator)
    )
    if options.static_int8:
        if calibration is None:
            raise ValueError("static int8 needs calibration frames (calibration=...)")
        backend = quantize_static_int8(backend, calibration, scope=options.int8_scope)
    if options.dynamic_int8:
        backend = quantize_dynamic_int8(backend)
    if options.fft_conv:
        use_fft_convolutions(backend)
    if options.compress_weights:
        compress_float_weights(backend)

    backend = _place(backend, device, dtype)
    engine = InferenceEngine(
        backend,  # type: ignore[arg-type]  (nn.Module methods satisfy the Backend protocol)
        cache_reference=options.cache_reference,
        device=device,
        dtype=dtype,
        description=options.describe() + ("" if dtype == torch.float32 else f"@{dtype}"),
    )
    if options.compile:
        # Compiled stages share one wrapper code object, so Dynamo counts every (stage, shape,
        # grad mode) graph against a single recompile limit (8): past it, stages silently run
        # eager. A served model needs a few dozen.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        kwargs = _compile_kwargs(options.compile_backend)
        if options.static_int8:
            compile_float_stages(backend, **kwargs)
        else:
            engine.compile(**kwargs)
    return engine


def _place(backend: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move to the device; on CUDA in half precision, channels-last, warp kept in float32."""
    backend = backend.to(device)
    if dtype != torch.float32:
        backend = backend.to(dtype=dtype, memory_format=torch.channels_last)
        warp = getattr(backend, "warp", None)
        if warp is not None:
            warp.float()
    return backend


def _compile_kwargs(backend: str) -> dict[str, object]:
    # dynamic=False: each new input shape compiles its own static graph. With Dynamo's default
    # (dynamic after the second shape) the third shape's graph returns symbolic sizes, which
    # Inductor's freezing pass cannot lay out ("'int' object has no attribute 'meta'", seen
    # at mouth 128 after mouth 64 at batch 1 and 8). A served model sees a few crop and batch
    # sizes, and static graphs are the faster ones on CPU.
    kwargs: dict[str, object] = {"backend": backend, "dynamic": False}
    if backend == "inductor":
        kwargs["options"] = COMPILE_OPTIONS
    return kwargs


def compile_float_stages(model: InferenceGenerator, **compile_kwargs: object) -> InferenceGenerator:
    """``torch.compile`` each top-level stage that static int8 left in float (in place).

    Dynamo cannot trace the FX-quantized int8 ops (no fake-tensor kernels for quantized
    tensors), so compiling the whole model would graph-break at every int8 stage; compiling
    the float stages alone gives Inductor the parts it can fuse and pre-pack."""
    for name, child in list(model.named_children()):
        if _is_quantized(child) or isinstance(child, nn.Identity):
            continue
        if name == "alignment" and any(_is_quantized(c) for c in child.children()):
            for sub_name, sub in list(child.named_children()):
                if not _is_quantized(sub):
                    setattr(child, sub_name, torch.compile(sub, **compile_kwargs))
            continue
        setattr(model, name, torch.compile(child, **compile_kwargs))
    return model


QUANTIZED_NAMESPACES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _is_quantized(module: nn.Module) -> bool:
    """Holds int8 modules, or is an FX graph that quantizes (a converted bare conv has only
    functional int8 ops, no quantized module)."""
    for m in module.modules():
        if type(m).__module__.startswith(QUANTIZED_NAMESPACES):
            return True
        if isinstance(m, torch.fx.GraphModule) and "quantize_per_tensor" in m.code:
            return True
    return False
