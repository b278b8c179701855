"""The HTTP API (FastAPI; OpenAPI at ``/docs``), served by the Serve ingress deployment.

Routes talk to the model deployment through ``state.model``, a Serve handle with the
methods of ``deployment.LipSyncModel`` (``info``, ``reload``, ``frames``).
Every ``/v1`` route requires the bearer token; request bodies over
``serving.max_request_bytes`` are refused with 413 before they are read in full; a full model
queue (Serve's ``max_queued_requests``) answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray.serve.exceptions import BackPressureError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from dinet_platform.config.schema import DataConfig
from dinet_platform.media.io import MediaError, decode_image
from dinet_platform.runtime.avatar import Avatar, AvatarError
from dinet_platform.runtime.dub import DubError, load_speech
from dinet_platform.serving import api
from dinet_platform.serving.api import ApiError, invalid
from dinet_platform.serving.auth import check_bearer
from dinet_platform.serving.avatars import AvatarNotFound, AvatarStore
from dinet_platform.serving.dub_jobs import JobNotFound, JobStore
from dinet_platform.serving.model import GeneratedFrames, Refusal
from dinet_platform.serving.settings import ServeAppConfig
from dinet_platform.serving.uploads import (
    frames_request,
    receive_avatar,
    receive_dub,
)

INFO_TTL_S = 2.0


@dataclass
class AppState:
    settings: ServeAppConfig
    token: str
    store: AvatarStore
    model: Any  # the model deployment's handle
    jobs: JobStore
    _info: dict[str, Any] | None = None
    _info_at: float = 0.0
    model_transport: str | None = None  # how calls reach the model replicas (see ``_call``)

    tasks: set[asyncio.Task] = field(default_factory=set)

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
            raise ApiError(503, "server", "overloaded: the model queue is full, retry shortly",
                           {"Retry-After": self.retry_after}) from None

    @property
    def retry_after(self) -> str:
        return str(self.settings.serving.retry_after_s)

    async def model_info(self, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._info is None or time.monotonic() - self._info_at > INFO_TTL_S:
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
            raise ApiError(result.status, result.field, result.message,
                           {"Retry-After": self.retry_after} if result.status == 503 else None)
        return result

    async def dub(self, job_id: str) -> None:
        await self._call(lambda: self.model.dub.remote(job_id))

    async def served(self) -> dict[str, Any]:
        """The served model's contract, or 503 while none is loaded."""
        info = await self.model_info()
        if not info["ready"]:
            info = await self.model_info(fresh=True)
        if not info["ready"]:
            raise ApiError(503, "model", "no model loaded yet: " + (info.get("error") or
                                                                     "loading"),
                           {"Retry-After": self.retry_after})
        return info["model"]


class Guard:
    """Refusals that need no route: 503 until the app state is attached, then on ``/v1``
    401 without the bearer token and 413 for a declared body over the limit.

    Plain ASGI: ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``) runs every
    request through an extra task group and memory streams, a measurable share of the
    ingress's CPU per live-avatar request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def refusal(scope: Scope) -> JSONResponse | None:
        st: AppState | None = getattr(scope["app"].state, "dinet", None)
        if st is None:
            return JSONResponse({"error": {"field": "server", "message": "starting"}}, 503)
        if not scope["path"].startswith("/v1"):
            return None
        headers = Headers(scope=scope)
        reason = check_bearer(headers.get("authorization"), st.token)
        if reason:
            return JSONResponse({"error": {"field": "Authorization", "message": reason}},
                                401, headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        limit = st.settings.serving.max_request_bytes
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"error": {"field": "body", "message":
                                 f"request body of {length} bytes exceeds the limit of "
                                 f"{limit} bytes"}}, 413)
        return None


def create_app() -> FastAPI:
    app = FastAPI(title="DINet lip-sync", version="1",
                  description="Live avatars frame by frame; bearer token on every /v1 route.")

    def state(request: Request) -> AppState:
        return request.app.state.dinet

    app.add_middleware(Guard)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the HTTP server answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: true only once a model is loaded."""
        try:
            info = await asyncio.wait_for(state(request).model_info(fresh=True), 10.0)
        except (TimeoutError, ApiError):
            return JSONResponse({"ready": False, "reason": "model deployment busy"}, 503)
        body = {"ready": info["ready"], "model": info["model"]}
        return JSONResponse(body, 200 if info["ready"] else 503)

    @app.get("/v1/model")
    async def model_info(request: Request) -> dict[str, Any]:
        """Which model version, alias and mode is serving, batching statistics, and how the
        ingress reaches the model replicas (``transport``: ``grpc`` in Serve's throughput
        mode)."""
        st = state(request)
        return {**await st.model_info(fresh=True), "transport": st.model_transport}

    @app.post("/v1/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        """Re-resolve the alias and swap the model if it moved (in-flight requests finish on
        the old one)."""
        return await state(request).reload()

    @app.post("/v1/avatars", status_code=201)
    async def create_avatar(request: Request) -> dict[str, Any]:
        """An avatar from a reference video of the face: ``multipart/form-data`` with a
        ``video`` file, or still images of the face as repeated ``frames`` file parts (PNG or
        JPEG, one size; typically its five reference photos), and optionally ``landmarks`` (an
        OpenFace CSV, one row per video frame or image; without it faces are detected); or
        the raw video as the body (``Content-Type: video/mp4``). Returns the ``avatar_id``
        for ``/frames``."""
        st = state(request)
        model = await st.served()
        with tempfile.TemporaryDirectory(prefix="dinet-avatar-") as tmp:
            upload = await receive_avatar(request, body_limit(st), Path(tmp))
            data = DataConfig.model_validate(model["data"])
            serving = st.settings.serving
            source = "video" if upload.video else "frames"

            def build() -> tuple[str, int]:
                if upload.video:
                    avatar = Avatar.from_video(upload.video, mouth_size=model["mouth_size"],
                                               data=data, landmarks=upload.landmarks,
                                               max_bytes=serving.max_request_bytes * 64)
                else:
                    try:
                        images = [decode_image(path.read_bytes(), f"frames part {i}")
                                  for i, path in enumerate(upload.frames)]
                    except MediaError as exc:
                        raise invalid("frames", str(exc)) from None
                    avatar = Avatar.from_images(images, tmp, mouth_size=model["mouth_size"],
                                                data=data, landmarks=upload.landmarks)
                if avatar.num_frames > serving.max_avatar_video_frames:
                    raise ApiError(413, source, f"{avatar.num_frames} frames; avatars are "
                                   f"limited to {serving.max_avatar_video_frames}")
                return st.store.save(avatar), avatar.num_frames

            try:
                avatar_id, frames = await asyncio.to_thread(build)
            except AvatarError as exc:
                field = "landmarks" if "landmarks" in str(exc) and upload.landmarks else source
                raise invalid(field, str(exc)) from None
        return {"avatar_id": avatar_id, "frames": frames, "mouth_size": model["mouth_size"],
                "model_version": model["version"]}

    @app.get("/v1/avatars/{avatar_id}")
    async def get_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        st = state(request)
        try:
            return {"avatar_id": avatar_id, **st.store.meta(avatar_id)}
        except AvatarNotFound as exc:
            raise ApiError(404, "avatar_id", str(exc)) from None

    @app.delete("/v1/avatars/{avatar_id}")
    async def delete_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        st = state(request)
        try:
            deleted = st.store.delete(avatar_id)
        except AvatarNotFound as exc:
            raise ApiError(404, "avatar_id", str(exc)) from None
        if not deleted:
            raise ApiError(404, "avatar_id", f"unknown avatar id {avatar_id!r}")
        return {"deleted": avatar_id}

    @app.post("/v1/avatars/{avatar_id}/frames")
    async def frames(avatar_id: str, request: Request) -> Response:
        """Generated face crops for a window of audio, batched with other callers.

        JSON body: ``{"features": [[...] x A] x N}`` (per-frame audio features; the only way
        for a model trained on DeepSpeech features) or ``{"audio_wav": b64 PCM WAV}`` (log-mel
        models: the features are computed as in training), plus ``start`` (first frame index
        in the avatar's source track, default 0), ``count`` (optional, checked against the
        audio) and ``format`` (``png``: base64 PNGs in JSON; ``npy``: one float32
        ``(N, H, W, 3)`` array).
        ``output``: ``crops`` (face crops, float32 in npy) or ``frames`` (the avatar's full
        frames with the mouth blended in, uint8 in npy). Or a raw ``audio/wav`` body with
        ``?start=&count=&format=&output=`` in the query."""
        st = state(request)
        if not st.store.exists(avatar_id):
            raise ApiError(404, "avatar_id", f"unknown avatar id {avatar_id!r:.80}")
        model = await st.served()
        doc = await frames_request(request, body_limit(st))
        count = doc.get("count")
        if count is not None:
            count = api.optional_int(doc, "count", 1, minimum=1)
        start = api.optional_int(doc, "start", 0)
        output = doc.get("format", "png")
        if output not in ("png", "npy"):
            raise invalid("format", f"must be 'png' or 'npy', got {output!r:.40}")
        what = doc.get("output", "crops")
        if what not in ("crops", "frames"):
            raise invalid("output", f"must be 'crops' or 'frames', got {what!r:.40}")
        if ("features" in doc) == ("audio_wav" in doc):
            raise invalid("features", "send exactly one of 'features' or 'audio_wav'")
        if "features" in doc:
            features = api.features_from_json(doc["features"], "features", model, count)
        else:
            wav = doc["audio_wav"]
            data = wav if isinstance(wav, bytes) else api.decode_base64(wav, "audio_wav")
            samples = api.decode_wav(data, "audio_wav", model["audio"]["sample_rate"])
            features = api.features_from_wav(samples, "audio_wav", model, count)
        limit = st.settings.serving.max_frames_per_request
        if len(features) > limit:
            raise ApiError(413, "features" if "features" in doc else "audio_wav",
                           f"{len(features)} frames in one request; the limit is {limit}")
        windows = api.audio_windows(features, model["audio"]["window"])
        result = await st.frames(avatar_id, start, windows, paste=what == "frames")
        faces = result.frames
        meta = {"model_version": result.version, "batch_size": result.batch_size,
                "start": start, "count": len(faces)}
        if output == "npy":
            buffer = io.BytesIO()
            np.save(buffer, faces, allow_pickle=False)
            headers = {f"X-Dinet-{k.replace('_', '-').title()}": str(v) for k, v in
                       meta.items()}
            return Response(buffer.getvalue(), media_type="application/x-npy",
                            headers=headers)
        pngs = await asyncio.to_thread(lambda: [api.encode_png(f) for f in faces])
        return JSONResponse({**meta, "frames": pngs})

    @app.post("/v1/dub", status_code=202)
    async def dub(request: Request) -> dict[str, Any]:
        """Dub a video: ``multipart/form-data`` with ``audio`` (speech, any audio file) and
        either ``avatar_id`` or a ``video`` file (+ optional ``landmarks`` CSV); for a model
        trained on DeepSpeech features (``GET /v1/model``: ``audio.features``) also
        ``audio_features``, a ``.npy`` of shape ``(frames, 29)``, one row per video frame of
        the speech (422 without it). Rendered in
        batches on a model replica; poll ``status_url``, then fetch ``video_url`` (an H.264
        mp4 with the speech muxed in)."""
        st = state(request)
        model = await st.served()
        job_id, folder = st.jobs.create()
        try:
            spec = await receive_dub(request, body_limit(st), st.store, folder, model)
            if spec.get("audio_features"):  # their length against the speech's, now
                data = DataConfig.model_validate(model["data"])
                try:
                    await asyncio.to_thread(load_speech, folder / spec["audio"], data,
                                            folder / spec["audio_features"],
                                            model=api.served_name(model))
                except DubError as exc:
                    field = "audio" if str(exc).startswith("audio ") else "audio_features"
                    raise invalid(field, str(exc)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        st.jobs.submit(job_id, spec)
        task = asyncio.get_running_loop().create_task(run_dub(st, job_id))
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
        return {"job_id": job_id, "state": "queued", "status_url": f"/v1/dub/{job_id}",
                "video_url": f"/v1/dub/{job_id}/video"}

    @app.get("/v1/dub/{job_id}")
    async def dub_status(job_id: str, request: Request) -> dict[str, Any]:
        try:
            return {"job_id": job_id, **state(request).jobs.status(job_id)}
        except JobNotFound as exc:
            raise ApiError(404, "job_id", str(exc)) from None

    @app.get("/v1/dub/{job_id}/video")
    async def dub_video_file(job_id: str, request: Request) -> Response:
        st = state(request)
        try:
            status = st.jobs.status(job_id)
        except JobNotFound as exc:
            raise ApiError(404, "job_id", str(exc)) from None
        if status["state"] != "done":
            raise ApiError(409, "job_id", f"job is {status['state']}"
                           + (f": {status['error']}" if status.get("error") else ""))
        return FileResponse(st.jobs.output(job_id), media_type="video/mp4",
                            filename=f"dub-{job_id}.mp4")

    return app


async def run_dub(st: AppState, job_id: str) -> None:
    try:
        await st.dub(job_id)
    except ApiError as exc:  # the model queue was full
        st.jobs.set_status(job_id, "failed", error=exc.message)
    except Exception as exc:  # the replica died: say so instead of "queued" forever
        st.jobs.set_status(job_id, "failed", error=f"{type(exc).__name__}: {exc}")


def body_limit(st: AppState) -> int:
    return st.settings.serving.max_request_bytes
