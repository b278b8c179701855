"""The one inference engine the CLI, the demo and Serve share.

An :class:`InferenceEngine` wraps a *backend*: anything with

- ``encode_reference(references) -> tuple[Tensor, ...]`` (per-avatar features), and
- ``generate(source, audio, *features) -> Tensor`` (faces for a batch of frames)

which is what :class:`~dinet_platform.optimize.structure.InferenceGenerator`, the adapter for
an unmodified DINet, and an exported artifact loaded without the model code all provide. The
engine adds the policy: device and dtype handling, inference mode, and whether reference
features are cached per avatar (:class:`AvatarFeatures`; Serve keeps them in
:class:`~dinet_platform.serving.avatars.AvatarCache`) or recomputed
for every frame as the original DINet inference does.

This module imports only torch, so a deployment that loads an exported artifact never imports
the project's model classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dinet_platform.audio_contract import AudioFeatureSpec
from dinet_platform.config.schema import DINetConfig
from dinet_platform.runtime.streaming import stream_contract


class Backend(Protocol):
    def encode_reference(self, references: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def generate(
        self, source: torch.Tensor, audio: torch.Tensor, *features: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class AvatarFeatures:
    """What :meth:`InferenceEngine.encode_reference` returns for one avatar.

    ``encoded`` features are the backend's per-avatar tensors; otherwise (an engine without
    reference caching) ``tensors`` holds the raw reference frames and every ``generate`` call
    encodes them again, as the original per-frame forward does."""

    tensors: tuple[torch.Tensor, ...]
    encoded: bool

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def expand(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The tensors broadcast (as views) to a batch of frames; batch-1 features serve any
        batch."""
        out = []
        for tensor in self.tensors:
            if tensor.shape[0] not in (1, batch):
                raise ValueError(
                    f"reference features have batch {tensor.shape[0]}, frames have {batch}: "
                    "encode one avatar (batch 1) or one reference stack per frame"
                )
            out.append(tensor.expand(batch, *tensor.shape[1:]))
        return tuple(out)


class InferenceEngine:
    """``encode_reference(references)`` once per avatar, ``generate(source, audio, features)``
    per batch of frames. Inputs may live on any device and dtype; outputs are float32 on the
    engine's device.

    Args:
        backend: the model (see the module doc).
        cache_reference: keep encoded features (the optimisation) or re-encode the references
            inside every ``generate`` (the original behaviour, for baselines).
        device: where the backend runs.
        dtype: the compute dtype inputs are cast to (float32; float16/bfloat16 on GPU).
        description: what was applied, for logs and benchmark tables.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        cache_reference: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        description: str = "",
    ):
        self.backend = backend
        self.cache_reference = cache_reference
        self.device = torch.device(device)
        self.dtype = dtype
        self.description = description
        self._encode: Callable[..., tuple[torch.Tensor, ...]] = backend.encode_reference
        self._generate: Callable[..., torch.Tensor] = backend.generate

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype, non_blocking=True)

    def encode_reference(self, references: torch.Tensor) -> AvatarFeatures:
        """Per-avatar features from stacked reference faces ``(B, 15, H, W)`` in [0, 1]
        (B = 1 for one avatar; its features serve frame batches of any size)."""
        references = self._prepare(references)
        if not self.cache_reference:
            return AvatarFeatures((references,), encoded=False)
        with torch.inference_mode():
            return AvatarFeatures(tuple(self._encode(references)), encoded=True)

    def generate(
        self, source: torch.Tensor, audio: torch.Tensor, features: AvatarFeatures
    ) -> torch.Tensor:
        """Faces ``(B, 3, H, W)`` (float32, [0, 1]) for masked sources ``(B, 3, H, W)`` and
        audio windows ``(B, A, 5)``."""
        source, audio = self._prepare(source), self._prepare(audio)
        tensors = features.expand(source.shape[0])
        with torch.inference_mode():
            if not features.encoded:
                tensors = tuple(self._encode(tensors[0].contiguous()))
            return self._generate(source, audio, *tensors).float()

    def __call__(
        self, source: torch.Tensor, references: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        """The original single-call signature: encode and generate."""
        return self.generate(source, audio, self.encode_reference(references))

    def compile(self, **options: object) -> InferenceEngine:
        """Wrap the backend's two entry points in ``torch.compile`` (in place; returns self).
        Compilation happens on the first call of each shape."""
        self._encode = torch.compile(self.backend.encode_reference, **options)
        self._generate = torch.compile(self.backend.generate, **options)
        return self


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded: Serve's ``GET /v1/model`` reports :meth:`as_dict`."""

    name: str
    """Registered model name, or a short name for a run/path reference."""
    version: int | None
    alias: str | None
    mode: str
    """The optimization mode the engine runs (``fp32`` ... ``all``)."""
    mouth_size: int
    source: str
    """The resolved reference (``models:/dinet/3`` for ``models:/dinet@production``)."""
    description: str
    """What the engine applies (``fold+cache_reference+static_int8[appearance]``,
    ``artifact:trace``)."""
    optimized_artifact: bool
    """Loaded from an optimized artifact (torch only) rather than a checkpoint."""
    config: DINetConfig = field(repr=False)
    """The model's resolved config: ``config.data`` says how audio features and crops are
    made, and the avatar/dub code reads it from here."""
    details: dict[str, Any] = field(default_factory=dict)
    """Provenance: source version of an optimized version, its measured PSNR vs fp32, ..."""

    @property
    def audio_window(self) -> int:
        return self.config.data.audio_window

    @property
    def features(self) -> AudioFeatureSpec:
        """The audio features the model was trained on (checked against its record at load)."""
        return AudioFeatureSpec.from_data(self.config.data)

    def as_dict(self) -> dict[str, Any]:
        data = self.config.data
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "mode": self.mode,
            "mouth_size": self.mouth_size,
            "source": self.source,
            "description": self.description,
            "optimized_artifact": self.optimized_artifact,
            "audio": {
                "features": data.audio_features,
                "dim": data.feature_dim,
                "window": data.audio_window,
                "fps": data.fps,
                "sample_rate": data.sample_rate,
                "normalization": self.features.normalization,
                **stream_contract(data.sample_rate, data.fps, data.audio_window),
            },
            "details": self.details,
        }

