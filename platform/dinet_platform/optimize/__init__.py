"""The inference compiler (plain PyTorch: no Ray, no MLflow).

``modes.optimize`` turns a trained generator into a :class:`~dinet_platform.runtime.engine.
InferenceEngine` through the passes: ``folding`` (BatchNorm folding), ``structure`` (the
generation-only model), ``upsampling``, ``fft_conv``, ``quantize`` (int8) and
``weight_storage``; ``artifact`` saves and loads deployment artifacts with torch alone;
``stand_in`` makes image-like stand-in inputs for calibration, tests and benchmarks.
"""

from typing import Literal, get_args

Mode = Literal["fp32", "structure", "cache", "dynamic_int8", "static_int8", "compile", "all"]
"""The optimization modes (``modes.OptimizeOptions.for_mode``). Defined here, where importing
them loads no model code, so that loading an artifact never imports the networks."""
MODES: tuple[str, ...] = get_args(Mode)
