"""The HTTP API (FastAPI; OpenAPI at ``/docs``), served by the Serve ingress deployment.

Every route but :data:`~dinet_platform.serving.guard.PUBLIC_PATHS` requires the bearer token,
wherever the app is mounted; request bodies over ``serving.max_request_bytes`` are refused
with 413 as they arrive (:mod:`.guard`); a full model queue answers 503 with ``Retry-After``.
Every refusal names the field to fix; an unexpected failure answers 500 with the request id
its log line carries.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dinet_platform.config.schema import DataConfig
from dinet_platform.media.io import check_video_header
from dinet_platform.media.opening import MediaError
from dinet_platform.runtime.avatar import Avatar, AvatarError
from dinet_platform.runtime.dub import DubError, load_speech
from dinet_platform.serving import api, openapi
from dinet_platform.serving.api import ApiError
from dinet_platform.serving.avatars import AvatarNotFound
from dinet_platform.serving.dub_jobs import JobNotFound
from dinet_platform.serving.guard import Guard
from dinet_platform.serving.live_routes import router as live_router
from dinet_platform.serving.settings import media_limits
from dinet_platform.serving.state import AppState
from dinet_platform.serving.uploads import (
    decode_images,
    frames_request,
    parse_frames,
    receive_avatar,
    receive_dub,
)

logger = logging.getLogger("ray.serve")


def create_app() -> FastAPI:
    app = FastAPI(title="DINet lip-sync", version="1",
                  description="Live avatars (a WebSocket stream, or frame by frame), and dubbed "
                              "videos. Every route except /healthz, /readyz, the docs and the "
                              "page at /app needs `Authorization: Bearer <token>`.")

    def state(request: Request) -> AppState:
        return request.app.state.dinet

    app.add_middleware(Guard, state=lambda scope: getattr(scope["app"].state, "dinet", None))

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own refusals (a malformed multipart body, an unknown route) in the
        # API's error shape
        field = "body" if exc.status_code == 400 else "path"
        return JSONResponse({"error": {"field": field, "message": str(exc.detail)}},
                            exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "-")
        logger.error("request %s: %s %s failed", request_id, request.method,
                     request.url.path, exc_info=exc)
        return JSONResponse({"error": {"field": "server", "message":
                             f"internal error (request id {request_id})"}}, 500)

    @app.get("/healthz", responses=openapi.ERRORS)
    async def healthz() -> dict[str, str]:
        """Liveness: the HTTP server answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses=openapi.ERRORS)
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: true once a model is loaded (cached for a couple of seconds; nothing
        about the model or its configuration: that is ``GET /v1/model``, with the token)."""
        try:
            info = await state(request).model_info()
        except ApiError:
            return JSONResponse({"ready": False}, 503)
        return JSONResponse({"ready": info["ready"]}, 200 if info["ready"] else 503)

    @app.get("/v1/model", responses=openapi.ERRORS)
    async def model_info(request: Request) -> dict[str, Any]:
        """Which model version, alias and mode is serving, batching statistics, and how the
        ingress reaches the model replicas (``transport``: ``grpc`` in Serve's throughput
        mode)."""
        st = state(request)
        return {**await st.model_info(max_age_s=0.0), "transport": st.model_transport}

    @app.post("/v1/admin/reload", responses=openapi.ERRORS)
    async def reload(request: Request) -> dict[str, Any]:
        """Re-resolve the alias and swap the model if it moved (in-flight requests finish on
        the old one)."""
        return await state(request).reload()

    @app.post("/v1/avatars", status_code=201, responses=openapi.ERRORS,
              openapi_extra=openapi.AVATAR_BODY)
    async def create_avatar(request: Request) -> dict[str, Any]:
        """An avatar from a reference video of the face: ``multipart/form-data`` with a
        ``video`` file, or still images of the face as repeated ``frames`` file parts (PNG or
        JPEG, one size; typically its five reference photos), and optionally ``landmarks`` (an
        OpenFace CSV, one row per video frame or image; without it faces are detected); or
        the raw video as the body (``Content-Type: video/mp4``). Returns the ``avatar_id``
        for ``/frames``."""
        st = state(request)
        serving = st.settings.serving
        if st.store.count() >= serving.max_avatars:
            raise ApiError(429, "avatars", f"{serving.max_avatars} avatars are stored, the "
                                           "quota: delete some first")
        model = await st.served()
        limits = media_limits(serving, max_frames=serving.max_avatar_video_frames)
        with tempfile.TemporaryDirectory(prefix="dinet-avatar-") as tmp:
            upload = await receive_avatar(request, Path(tmp), st.upload_work)
            data = DataConfig.model_validate(model["data"])
            source = "video" if upload.video else "frames"

            def build() -> tuple[str, int]:
                if upload.video:
                    avatar = Avatar.from_video(upload.video, mouth_size=model["mouth_size"],
                                               data=data, landmarks=upload.landmarks,
                                               limits=limits)
                else:
                    images = decode_images(upload.frames, limits)
                    avatar = Avatar.from_images(images, tmp, mouth_size=model["mouth_size"],
                                                data=data, landmarks=upload.landmarks,
                                                limits=limits)
                return st.store.save(avatar), avatar.num_frames

            try:
                avatar_id, frames = await st.upload_work(build)
            except AvatarError as exc:
                field = "landmarks" if "landmarks" in str(exc) and upload.landmarks else source
                raise ApiError(refusal_status(exc), field, str(exc)) from None
        return {"avatar_id": avatar_id, "frames": frames, "mouth_size": model["mouth_size"],
                "model_version": model["version"]}

    @app.get("/v1/avatars", responses=openapi.ERRORS)
    async def list_avatars(request: Request) -> dict[str, Any]:
        """The avatars stored, oldest first."""
        st = state(request)
        avatars = []
        for avatar_id in st.store.ids():
            try:
                avatars.append({"avatar_id": avatar_id, **st.store.meta(avatar_id)})
            except AvatarNotFound:  # deleted meanwhile
                continue
        return {"avatars": avatars}

    @app.get("/v1/avatars/{avatar_id}", responses=openapi.ERRORS)
    async def get_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        st = state(request)
        try:
            return {"avatar_id": avatar_id, **st.store.meta(avatar_id)}
        except AvatarNotFound as exc:
            raise ApiError(404, "avatar_id", str(exc)) from None

    @app.delete("/v1/avatars/{avatar_id}", responses=openapi.ERRORS)
    async def delete_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        st = state(request)
        if not st.store.delete(avatar_id):
            raise ApiError(404, "avatar_id", f"unknown avatar id {avatar_id!r:.80}")
        return {"deleted": avatar_id}

    @app.post("/v1/avatars/{avatar_id}/frames", responses=openapi.FRAMES_RESPONSES,
              openapi_extra=openapi.FRAMES_BODY)
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
        body, kind = await frames_request(request)
        window = await st.reply_work(lambda: parse_frames(
            body, kind, request.query_params, model, st.settings.serving))
        result = await st.frames(avatar_id, window.start, window.windows,
                                 paste=window.output == "frames")
        faces = result.frames
        meta = {"model_version": result.version, "batch_size": result.batch_size,
                "start": window.start, "count": len(faces)}
        if window.format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, faces, allow_pickle=False)
            headers = {f"X-Dinet-{k.replace('_', '-').title()}": str(v) for k, v in
                       meta.items()}
            return Response(buffer.getvalue(), media_type="application/x-npy",
                            headers=headers)
        pngs = await st.reply_work(lambda: [api.encode_png(f) for f in faces])
        return JSONResponse({**meta, "frames": pngs})

    @app.post("/v1/dub", status_code=202, responses=openapi.ERRORS,
              openapi_extra=openapi.DUB_BODY)
    async def dub(request: Request) -> dict[str, Any]:
        """Dub a video: ``multipart/form-data`` with ``audio`` (speech, any audio file, at
        most ``max_dub_audio_s``) and either ``avatar_id`` or a ``video`` file (+ optional
        ``landmarks`` CSV); for a model trained on DeepSpeech features (``GET /v1/model``:
        ``audio.features``) also ``audio_features``, a ``.npy`` of shape ``(frames, 29)``,
        one row per video frame of the speech (422 without it). Queued on a model replica
        and rendered there in chunks behind live traffic; poll ``status_url``, then fetch
        ``video_url`` (an H.264 mp4 with the speech muxed in); ``DELETE`` the job to cancel
        it or to delete its files (finished jobs are deleted after ``dub_job_ttl_s``)."""
        st = state(request)
        serving = st.settings.serving
        if len(st.jobs.jobs()) >= serving.max_dub_jobs:
            raise ApiError(429, "dub", f"{serving.max_dub_jobs} dub jobs are stored, the "
                                       "quota: delete finished ones first")
        model = await st.served()
        job_id, folder = st.jobs.create()
        try:
            spec = await receive_dub(request, st.store, folder, model, st.upload_work)
            data = DataConfig.model_validate(model["data"])
            limits = media_limits(serving, max_frames=serving.max_avatar_video_frames)
            try:  # the speech (length, features) and the video's headers, now
                await st.upload_work(lambda: load_speech(
                    folder / spec["audio"], data,
                    folder / spec["audio_features"] if spec.get("audio_features") else None,
                    model=api.served_name(model), limits=limits))
                if spec.get("video"):
                    await st.upload_work(lambda: check_video_header(folder / spec["video"],
                                                                    limits, data.fps))
            except DubError as exc:
                field = "audio" if str(exc).startswith("audio ") else "audio_features"
                raise ApiError(refusal_status(exc), field, str(exc)) from None
            except MediaError as exc:
                raise ApiError(refusal_status(exc), "video", str(exc)) from None
            st.jobs.submit(job_id, spec)
            await st.dub(job_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return {"job_id": job_id, "state": "queued", "status_url": f"/v1/dub/{job_id}",
                "video_url": f"/v1/dub/{job_id}/video"}

    @app.get("/v1/dub/{job_id}", responses=openapi.ERRORS)
    async def dub_status(job_id: str, request: Request) -> dict[str, Any]:
        try:
            return {"job_id": job_id, **state(request).jobs.status(job_id)}
        except JobNotFound as exc:
            raise ApiError(404, "job_id", str(exc)) from None

    @app.delete("/v1/dub/{job_id}", responses=openapi.ERRORS)
    async def cancel_dub(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued or rendering job (it stops at its next chunk and its files are
        removed), or delete a finished one with its video."""
        try:
            return {"job_id": job_id, "state": state(request).jobs.cancel(job_id)}
        except JobNotFound as exc:
            raise ApiError(404, "job_id", str(exc)) from None

    @app.get("/v1/dub/{job_id}/video", responses=openapi.VIDEO_RESPONSES)
    async def dub_video_file(job_id: str, request: Request) -> Response:
        st = state(request)
        try:
            status = st.jobs.status(job_id)
        except JobNotFound as exc:
            raise ApiError(404, "job_id", str(exc)) from None
        if status["state"] != "done":
            raise ApiError(409, "job_id", f"job is {status['state']}"
                           + (f": {status['error']}" if status.get("error") else ""))
        try:  # an open file is served even if the job is deleted meanwhile
            video = st.jobs.output(job_id).open("rb")
        except (JobNotFound, FileNotFoundError):
            raise ApiError(404, "job_id", f"job {job_id} was deleted") from None
        return StreamingResponse(iter_file(video), media_type="video/mp4", headers={
            "Content-Disposition": f'attachment; filename="dub-{job_id}.mp4"',
            "Content-Length": str(os.fstat(video.fileno()).st_size)})

    app.include_router(live_router)
    return app


def iter_file(handle: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    with handle:
        while data := handle.read(chunk):
            yield data


def refusal_status(exc: Exception) -> int:
    """413 for input over a media limit (its error names the limit), else 422."""
    return 413 if hasattr(exc, "limit") else 422
