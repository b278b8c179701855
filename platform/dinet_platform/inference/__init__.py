"""Inference optimization for DINet (plain PyTorch: no Ray, no MLflow).

The one entry point is :func:`optimize`, which returns an :class:`InferenceEngine` with
``encode_reference(references)`` (once per avatar) and ``generate(source, audio, features)``
(per frame batch); the CLI, the demo and Serve all run that engine. Deployment artifacts are
written by :func:`save_artifact` and read back by :func:`load_artifact` with torch alone.

Modules: ``folding`` (BatchNorm folding), ``structure`` (the generation-only model),
``quantize`` (int8), ``engine`` (engine and avatar cache), ``modes`` (optimize and its modes),
``artifact`` (export / TorchScript), ``synthetic`` (stand-in frames for tests and benchmarks),
``loading`` (:func:`load_engine`: any model reference -> engine + :class:`ModelInfo`),
``avatar`` (a face video prepared for a model), ``blend`` (feathered paste-back), ``dub``
(:func:`dub_video`: offline dubbing to mp4), ``cli`` (``dinet optimize``, ``dinet dub``).

Names are imported lazily, so ``import dinet_platform.inference.artifact`` (the deployment
path) does not import the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AvatarCache": "engine",
    "AvatarFeatures": "engine",
    "InferenceEngine": "engine",
    "ArtifactInfo": "artifact",
    "load_artifact": "artifact",
    "save_artifact": "artifact",
    "InferenceGenerator": "structure",
    "prepare_for_inference": "structure",
    "CalibrationBatch": "quantize",
    "linear_share": "quantize",
    "quantize_dynamic_int8": "quantize",
    "quantize_static_int8": "quantize",
    "MODES": "modes",
    "OptimizeOptions": "modes",
    "optimize": "modes",
    "Avatar": "avatar",
    "dub_video": "dub",
    "ModelInfo": "loading",
    "load_engine": "loading",
    "save_optimized": "loading",
    "settle_batchnorm": "synthetic",
    "synthetic_batch": "synthetic",
    "synthetic_batches": "synthetic",
}

__all__ = [
    "MODES",
    "ArtifactInfo",
    "Avatar",
    "AvatarCache",
    "AvatarFeatures",
    "CalibrationBatch",
    "InferenceEngine",
    "InferenceGenerator",
    "ModelInfo",
    "OptimizeOptions",
    "dub_video",
    "linear_share",
    "load_artifact",
    "load_engine",
    "optimize",
    "prepare_for_inference",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "save_artifact",
    "save_optimized",
    "settle_batchnorm",
    "synthetic_batch",
    "synthetic_batches",
]

if TYPE_CHECKING:
    from dinet_platform.inference.artifact import ArtifactInfo, load_artifact, save_artifact
    from dinet_platform.inference.avatar import Avatar
    from dinet_platform.inference.dub import dub_video
    from dinet_platform.inference.engine import AvatarCache, AvatarFeatures, InferenceEngine
    from dinet_platform.inference.loading import ModelInfo, load_engine, save_optimized
    from dinet_platform.inference.modes import MODES, OptimizeOptions, optimize
    from dinet_platform.inference.quantize import (
        CalibrationBatch,
        linear_share,
        quantize_dynamic_int8,
        quantize_static_int8,
    )
    from dinet_platform.inference.structure import InferenceGenerator, prepare_for_inference
    from dinet_platform.inference.synthetic import (
        settle_batchnorm,
        synthetic_batch,
        synthetic_batches,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
