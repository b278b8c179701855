"""The model side of a serving replica: load the registry alias through the inference
toolkit, swap it in without failing requests, and generate frames for a batch of callers.

Plain PyTorch + MLflow, no Ray: the Serve deployment (``serving/deployment.py``) owns
one :class:`ModelServer` and calls it from its batched method.

Precision -> inference mode (``load_engine``): ``int8`` is the folded generation-only model
with the reference cache, static int8 convolutions calibrated on real frames and the float
stages' weights stored in int8/fp16 (``all`` without ``torch.compile``: a server sees many
batch sizes and compiling each costs 10-120 s); ``fp32`` the same without int8 or weight
storage; ``fp16`` / ``bf16`` on CUDA the folded model in half precision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from dinet_platform.config.serving import ServingConfig
from dinet_platform.optimize.modes import OptimizeOptions
from dinet_platform.registry.loading import load_engine
from dinet_platform.registry.versions import alias_holder
from dinet_platform.runtime.dub import dub_video
from dinet_platform.runtime.engine import AvatarFeatures, InferenceEngine, ModelInfo
from dinet_platform.serving.avatars import AvatarCache, AvatarStore, CachedAvatar
from dinet_platform.serving.compute import ForwardGate, LivePriority
from dinet_platform.serving.dub_jobs import JobStore
from dinet_platform.serving.settings import media_limits


def serving_options(serving: ServingConfig) -> OptimizeOptions:
    options = replace(OptimizeOptions.for_mode("all"), compile=False)
    if serving.precision == "fp32":
        return replace(options, static_int8=False, compress_weights=False)
    if serving.precision in ("fp16", "bf16"):
        return replace(options, half_dtype=serving.precision)
    return options


@dataclass
class ServedModel:
    engine: InferenceEngine
    info: ModelInfo
    served_alias: str

    @property
    def version(self) -> int:
        return int(self.info.version or 0)

    @property
    def key(self) -> str:
        return f"{self.info.source}|{self.info.description}"

    def describe(self) -> dict[str, Any]:
        return {**self.info.as_dict(), "alias": self.served_alias,
                "device": str(self.engine.device),
                "data": self.info.config.data.model_dump(mode="json")}


def load_served_model(serving: ServingConfig, client: MlflowClient, version: int
                      ) -> ServedModel:
    """Version ``version`` of ``serving.model_name`` as a serving engine."""
    engine, info = load_engine(
        f"models:/{serving.model_name}/{version}", mode=serving_options(serving),
        client=client, device=serving.device, calibration_shards=serving.calibration_shards,
        compile=False, artifact_as_optimized=True)
    return ServedModel(engine, info, serving.alias)


@dataclass
class FrameJob:
    """One caller's window: output frames ``start ..`` of the avatar with ``audio`` windows
    ``(N, A, W)`` float32; ``paste`` returns full frames instead of face crops."""

    avatar_id: str
    start: int
    audio: np.ndarray
    paste: bool = False


@dataclass
class GeneratedFrames:
    """A window's frames from one batched forward."""

    frames: np.ndarray
    version: int | None
    batch_size: int


@dataclass
class Refusal:
    """Why a replica did not run a window (the ingress answers it with ``status``)."""

    status: int
    field: str
    message: str


class ModelServer:
    """Holds the served model; :meth:`ensure_current` loads a new one beside the old and swaps
    the reference only once it is ready, so requests in flight finish on the model they
    started with and new ones go to the new model."""

    def __init__(self, serving: ServingConfig, client: MlflowClient, store: AvatarStore):
        self.serving = serving
        self.client = client
        self.store = store
        self.cache = AvatarCache(serving.avatar_cache_bytes)
        self.model: ServedModel | None = None
        self._load_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        # torch.fx tracing (static int8 calibration) patches nn.Module.__call__ process-wide:
        # a forward running in another thread meanwhile fails. Loading such a model therefore
        # excludes forwards (they wait, none fail); forwards run concurrently with each other.
        self._gate = ForwardGate()
        self.priority = LivePriority()
        self._counters_lock = threading.Lock()  # forwards may run side by side
        self.batches = 0
        self.batch_sizes: dict[int, int] = {}
        self.frames_generated = 0
        self.max_forward_frames = 0
        self._forwards_now = 0
        self.most_forwards_at_once = 0  # serving.parallel_forwards lets several compute
        self.info_requests = 0
        # wall time inside generate, summed over forwards side by side: its growth / elapsed
        # is the forwards computing on average
        self.compute_seconds = 0.0

    def resolve(self) -> int:
        version = alias_holder(self.client, self.serving.model_name, self.serving.alias)
        if version is None:
            raise LookupError(f"registered model {self.serving.model_name!r} has no alias "
                              f"{self.serving.alias!r} in {self.client.tracking_uri}")
        return version

    def ensure_current(self, force: bool = False) -> bool:
        """Load the alias's version if it is not the one served (or ``force``); True if the
        served model changed. Slow (download, calibration): call it off the event loop."""
        with self._load_lock:
            version = self.resolve()
            current = self.model
            if (not force and current is not None and current.version == version
                    and current.served_alias == self.serving.alias):
                return False
            traces = serving_options(self.serving).static_int8 and self.serving.device == "cpu"
            if traces:
                with self._gate.exclusive():
                    loaded = load_served_model(self.serving, self.client, version)
            else:
                loaded = load_served_model(self.serving, self.client, version)
            self.model = loaded  # the swap
            with self._cache_lock:
                self.cache.clear()
            return True

    def reconfigure(self, serving: ServingConfig) -> None:
        self.serving = serving
        self.cache.max_bytes = serving.avatar_cache_bytes

    def info(self) -> dict[str, Any]:
        model = self.model
        self.info_requests += 1
        return {
            "ready": model is not None,
            "model": model.describe() if model else None,
            "batches": self.batches,
            "batch_sizes": dict(self.batch_sizes),
            "frames_generated": self.frames_generated,
            "max_forward_frames": self.max_forward_frames,
            "most_forwards_at_once": self.most_forwards_at_once,
            "info_requests": self.info_requests,
            "compute_seconds": round(self.compute_seconds, 6),
            "avatar_cache": {"entries": len(self.cache), "bytes": self.cache.nbytes,
                             "max_bytes": self.cache.max_bytes, "hits": self.cache.hits,
                             "misses": self.cache.misses},
        }

    @staticmethod
    def _cache_key(model: ServedModel, avatar_id: str) -> str:
        return f"{model.key}|{avatar_id}"

    def has_avatar(self, model: ServedModel, avatar_id: str) -> bool:
        """Whether :meth:`avatar` would answer from the cache (without loading anything)."""
        with self._cache_lock:
            return self._cache_key(model, avatar_id) in self.cache

    def avatar(self, model: ServedModel, avatar_id: str) -> CachedAvatar:
        """The avatar and its reference features for ``model`` (built on a miss)."""
        key = self._cache_key(model, avatar_id)
        with self._cache_lock:
            entry = self.cache.get(key)
        if entry is None:
            avatar = self.store.load(avatar_id)
            if avatar.mouth_size != model.info.mouth_size:
                raise ValueError(f"avatar {avatar_id} was made for mouth size "
                                 f"{avatar.mouth_size}, the served model (version "
                                 f"{model.version}) uses {model.info.mouth_size}: upload its "
                                 "video again")
            with self._gate.forward():
                features = model.engine.encode_reference(avatar.references())
            entry = CachedAvatar(avatar, features)
            with self._cache_lock:
                self.cache.put(key, entry)
        return entry

    def generate(self, jobs: list[FrameJob]) -> tuple[list[np.ndarray], ServedModel]:
        """Per job: face crops ``(N, H, W, 3)`` float32 in [0, 1], or full frames
        ``(N, h, w, 3)`` uint8 with ``paste``; all jobs in one engine call."""
        model = self.model
        if model is None:
            raise RuntimeError("no model loaded yet")
        began = time.perf_counter()
        sources, audios, features, entries, indices = [], [], [], [], []
        for job in jobs:
            entry = self.avatar(model, job.avatar_id)
            index = [entry.avatar.loop_index(job.start + i) for i in range(len(job.audio))]
            sources.append(entry.avatar.sources(index))
            audios.append(torch.from_numpy(job.audio))
            features.append(entry.features.expand(len(index)))
            entries.append(entry)
            indices.append(index)
        tensors = tuple(torch.cat(parts) for parts in zip(*features, strict=True))
        merged = AvatarFeatures(tensors, encoded=model.engine.cache_reference)
        with self._gate.forward(), self.priority.live_forward(), self._computing():
            faces = model.engine.generate(torch.cat(sources), torch.cat(audios), merged)
        faces = faces.clamp(0.0, 1.0).cpu()
        outputs, offset = [], 0
        for job, entry, index in zip(jobs, entries, indices, strict=True):
            part = faces[offset: offset + len(index)]
            offset += len(index)
            if job.paste:
                outputs.append(np.stack([entry.avatar.paste(i, face)
                                         for i, face in zip(index, part, strict=True)]))
            else:
                outputs.append(part.permute(0, 2, 3, 1).numpy())
        with self._counters_lock:
            self.batches += 1
            self.batch_sizes[len(jobs)] = self.batch_sizes.get(len(jobs), 0) + 1
            self.frames_generated += offset
            self.max_forward_frames = max(self.max_forward_frames, offset)
            self.compute_seconds += time.perf_counter() - began
        return outputs, model

    @contextmanager
    def _computing(self) -> Iterator[None]:
        with self._counters_lock:
            self._forwards_now += 1
            self.most_forwards_at_once = max(self.most_forwards_at_once, self._forwards_now)
        try:
            yield
        finally:
            with self._counters_lock:
                self._forwards_now -= 1

    def dub(self, jobs: JobStore, job_id: str, checkpoint: Callable[[int], None]) -> None:
        """Render dub job ``job_id`` (see :mod:`.dub_jobs`) with the served model, chunk by
        chunk behind live traffic (:class:`PacedEngine`); the outcome goes to the job's
        status. ``checkpoint(frames_done)`` runs between chunks (it stops a cancelled job)."""
        model = self.model
        if model is None:
            jobs.set_status(job_id, "failed", error="no model loaded")
            return
        spec, folder = jobs.spec(job_id), jobs.path(job_id)
        jobs.set_status(job_id, "running", model_version=model.version, started=time.time())
        try:
            reference = None
            if spec.get("avatar_id"):
                entry = self.avatar(model, spec["avatar_id"])
                video: Any = entry.avatar
                reference = entry.features
            else:
                video = folder / spec["video"]
            landmarks = folder / spec["landmarks"] if spec.get("landmarks") else None
            features = (folder / spec["audio_features"] if spec.get("audio_features")
                        else None)
            result = dub_video(PacedEngine(model.engine, self), video, folder / spec["audio"],
                               jobs.output(job_id), model=model.info,
                               batch_size=self.serving.dub_batch_frames, progress=False,
                               landmarks=landmarks, reference=reference,
                               audio_features=features, x264_threads=1,
                               on_batch=checkpoint, limits=media_limits(
                                   self.serving, self.serving.max_avatar_video_frames))
        except (ValueError, KeyError, OSError) as exc:  # DubError, AvatarError, missing avatar
            jobs.set_status(job_id, "failed", error=str(exc))
        else:
            jobs.set_status(job_id, "done", frames=result.frames, fps=result.fps,
                            seconds=round(result.seconds, 3), audio_seconds=result.audio_seconds)


class PacedEngine:
    """A replica's engine as a dub job sees it: every call is one chunk inside the forward
    gate, after live windows (:mod:`.compute`), so neither live traffic nor a hot swap waits
    for more than one chunk of a job."""

    def __init__(self, engine: InferenceEngine, server: ModelServer):
        self._engine, self._server = engine, server

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._server._gate.forward(), self._server.priority.background():
            return self._engine.generate(*args, **kwargs)

    def encode_reference(self, *args: Any, **kwargs: Any) -> AvatarFeatures:
        with self._server._gate.forward(), self._server.priority.background():
            return self._engine.encode_reference(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
