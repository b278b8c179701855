"""The ingress's state: settings, stores, the model deployment's handle, and the threads that
keep blocking work off the event loop.

Routes talk to the model deployment through ``model``, a Serve handle with the methods of
``deployment.LipSyncModel`` (``info``, ``reload``, ``frames``, ``dub``). Two executors keep
the event loop free: ``uploads`` (bounded: decoding videos and images, reading dub inputs) and
``replies`` (parsing and encoding live windows), so slow uploads never queue in front of a
live window's PNGs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from ray.serve.exceptions import BackPressureError

from dinet_platform.serving.api import ApiError
from dinet_platform.serving.avatars import AvatarStore
from dinet_platform.serving.batching import BatchQueue
from dinet_platform.serving.dub_jobs import JobStore
from dinet_platform.serving.model import FrameJob, GeneratedFrames, Refusal
from dinet_platform.serving.session_tokens import SessionTokens
from dinet_platform.serving.settings import ServeAppConfig

INFO_TTL_S = 2.0
T = TypeVar("T")


@dataclass
class AppState:
    settings: ServeAppConfig
    token: str
    store: AvatarStore
    model: Any  # the model deployment's handle
    jobs: JobStore
    model_transport: str | None = None  # how calls reach the model replicas (see ``_call``)
    _info: dict[str, Any] | None = None
    _info_at: float = 0.0
    _info_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _uploads: ThreadPoolExecutor | None = None
    _replies: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="replies"))
    _pending_uploads: int = 0
    live_sessions: int = 0  # open WebSocket streams on this ingress replica
    _stream_batches: BatchQueue | None = None
    session_tokens: SessionTokens = field(init=False)

    def __post_init__(self) -> None:
        self._uploads = ThreadPoolExecutor(max_workers=self.settings.serving.upload_workers,
                                           thread_name_prefix="uploads")
        self.session_tokens = SessionTokens(self.token, self.settings.serving.stream.token_ttl_s)

    @property
    def retry_after(self) -> str:
        return str(self.settings.serving.retry_after_s)

    def overloaded(self, what: str, message: str) -> ApiError:
        return ApiError(503, what, message, {"Retry-After": self.retry_after})

    async def upload_work(self, work: Callable[[], T]) -> T:
        """``work()`` on the upload threads; 503 when ``max_pending_uploads`` are already
        being decoded or waiting."""
        if self._pending_uploads >= self.settings.serving.max_pending_uploads:
            raise self.overloaded("server", f"{self._pending_uploads} uploads are being "
                                            "processed: retry shortly")
        self._pending_uploads += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._uploads, work)
        finally:
            self._pending_uploads -= 1

    async def reply_work(self, work: Callable[[], T]) -> T:
        """``work()`` (parsing or encoding a live window) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._replies, work)

    async def _call(self, request: Callable[[], Any]) -> Any:
        """Await one call of the model deployment (``request`` makes it); a full model queue
        becomes 503 + Retry-After."""
        try:
            response = request()
            # gRPC in Serve's throughput mode; a Ray actor call sends replies over 100 KB
            # through the object store, which cost the live route ~20 % on 2 cores
            self.model_transport = "ray actor call" if response.by_reference else "grpc"
            return await response
        except BackPressureError:
            raise self.overloaded("server", "overloaded: the model queue is full, retry "
                                            "shortly") from None

    async def model_info(self, max_age_s: float = INFO_TTL_S) -> dict[str, Any]:
        """The model deployment's ``info``, at most ``max_age_s`` old: concurrent callers
        share one round trip (readiness probes never pile onto the model's queue)."""
        async with self._info_lock:
            if self._info is None or time.monotonic() - self._info_at > max_age_s:
                self._info = await self._call(lambda: self.model.info.remote())
                self._info_at = time.monotonic()
            return self._info

    async def reload(self) -> dict[str, Any]:
        result = await self._call(lambda: self.model.reload.remote())
        self._info = None
        return result

    async def frames(self, avatar_id: str, start: int, windows: np.ndarray,
                     paste: bool) -> GeneratedFrames:
        """One window through the replica's batching queue; a refusal becomes its error."""
        result = await self._call(
            lambda: self.model.frames.remote(avatar_id, start, windows, paste))
        if isinstance(result, Refusal):
            raise refusal_error(result, self.retry_after)
        return result

    async def stream_frames(self, avatar_id: str, start: int, windows: np.ndarray,
                            paste: bool) -> GeneratedFrames:
        """A live session's window: the windows of every session that are ready together go
        to the model in one call (:meth:`_frames_many`), one Serve round trip instead of one
        per session, and into one forward."""
        if self._stream_batches is None:
            stream = self.settings.serving.stream
            self._stream_batches = BatchQueue(self._frames_many, stream.max_sessions,
                                              stream.batch_wait_s,
                                              in_flight=stream.calls_in_flight)
        result = await self._stream_batches.submit(FrameJob(avatar_id, start, windows, paste))
        if isinstance(result, Refusal):
            raise refusal_error(result, self.retry_after)
        return result

    async def _frames_many(self, jobs: list[FrameJob]) -> list[GeneratedFrames | Refusal]:
        return await self._call(lambda: self.model.frames_many.remote(jobs))

    async def dub(self, job_id: str) -> None:
        """Hand a stored job to a replica's dub queue (returns once it is queued)."""
        refusal = await self._call(lambda: self.model.dub.remote(job_id))
        if isinstance(refusal, Refusal):
            raise refusal_error(refusal, self.retry_after)

    async def served(self) -> dict[str, Any]:
        """The served model's contract, or 503 while none is loaded."""
        info = await self.model_info()
        if not info["ready"]:
            info = await self.model_info(max_age_s=0.0)
        if not info["ready"]:
            raise self.overloaded("model", "no model loaded yet: "
                                  + (info.get("error") or "loading"))
        return info["model"]

    def close(self) -> None:
        for pool in (self._uploads, self._replies):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def refusal_error(refusal: Refusal, retry_after: str) -> ApiError:
    return ApiError(refusal.status, refusal.field, refusal.message,
                    {"Retry-After": retry_after} if refusal.status == 503 else None)
