"""The HTTP API (FastAPI; OpenAPI at ``/docs``), served by the Serve ingress deployment.

Routes talk to the model deployment through ``state.model``, a Serve handle with the
methods of ``serve_deployments.lipsync.LipSyncModel`` (``info``, ``reload``, ``frames``).
Every ``/v1`` route requires the bearer token; request bodies over
``serving.max_request_bytes`` are refused with 413 before they are read in full; a full model
queue (Serve's ``max_queued_requests``) answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray.serve.exceptions import BackPressureError

from dinet_platform.config.schema import DataConfig
from dinet_platform.inference.avatar import Avatar, AvatarError
from dinet_platform.serving import api
from dinet_platform.serving.api import ApiError, invalid
from dinet_platform.serving.auth import check_bearer
from dinet_platform.serving.avatars import AvatarNotFound, AvatarStore
from dinet_platform.serving.settings import ServeAppConfig

INFO_TTL_S = 2.0
JSON_TYPES = ("application/json", "")
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave")


@dataclass
class AppState:
    settings: ServeAppConfig
    token: str
    store: AvatarStore
    model: Any  # the model deployment's handle
    _info: dict[str, Any] | None = None
    _info_at: float = 0.0

    async def call(self, method: str, *args: Any) -> Any:
        """A model deployment method; a full model queue becomes 503 + Retry-After."""
        try:
            return await getattr(self.model, method).remote(*args)
        except BackPressureError:
            raise ApiError(503, "server", "overloaded: the model queue is full, retry shortly",
                           {"Retry-After": str(self.settings.serving.retry_after_s)}) from None

    async def model_info(self, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._info is None or time.monotonic() - self._info_at > INFO_TTL_S:
            self._info = await self.call("info")
            self._info_at = time.monotonic()
        return self._info

    async def served(self) -> dict[str, Any]:
        """The served model's contract, or 503 while none is loaded."""
        info = await self.model_info()
        if not info["ready"]:
            info = await self.model_info(fresh=True)
        if not info["ready"]:
            raise ApiError(503, "model", "no model loaded yet: " + (info.get("error") or
                                                                     "loading"),
                           {"Retry-After": str(self.settings.serving.retry_after_s)})
        return info["model"]


def create_app() -> FastAPI:
    app = FastAPI(title="DINet lip-sync", version="1",
                  description="Live avatars frame by frame; bearer token on every /v1 route.")

    def state(request: Request) -> AppState:
        return request.app.state.dinet

    @app.middleware("http")
    async def guard(request: Request, call_next):
        st: AppState | None = getattr(request.app.state, "dinet", None)
        if st is None:
            return JSONResponse({"error": {"field": "server", "message": "starting"}}, 503)
        if request.url.path.startswith("/v1"):
            reason = check_bearer(request.headers.get("authorization"), st.token)
            if reason:
                return JSONResponse({"error": {"field": "Authorization", "message": reason}},
                                    401, headers={"WWW-Authenticate": "Bearer"})
            length = request.headers.get("content-length")
            limit = st.settings.serving.max_request_bytes
            if length and length.isdigit() and int(length) > limit:
                return JSONResponse({"error": {"field": "body", "message":
                                     f"request body of {length} bytes exceeds the limit of "
                                     f"{limit} bytes"}}, 413)
        try:
            return await call_next(request)
        except ApiError as exc:  # raised while reading the body stream
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)

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
        """Which model version, alias and mode is serving, and batching statistics."""
        return await state(request).model_info(fresh=True)

    @app.post("/v1/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        """Re-resolve the alias and swap the model if it moved (in-flight requests finish on
        the old one)."""
        st = state(request)
        result = await st.call("reload")
        st._info = None
        return result

    @app.post("/v1/avatars", status_code=201)
    async def create_avatar(request: Request) -> dict[str, Any]:
        """An avatar from a reference video of the face: ``multipart/form-data`` with a
        ``video`` file and optionally ``landmarks`` (an OpenFace CSV, one row per video
        frame; without it faces are detected), or the raw video as the body
        (``Content-Type: video/mp4``). Returns the ``avatar_id`` for ``/frames``."""
        st = state(request)
        model = await st.served()
        with tempfile.TemporaryDirectory(prefix="dinet-avatar-") as tmp:
            video, landmarks = await receive_video(request, st, Path(tmp))
            data = DataConfig.model_validate(model["data"])
            serving = st.settings.serving

            def build() -> tuple[str, int]:
                avatar = Avatar.from_video(video, mouth_size=model["mouth_size"], data=data,
                                           landmarks=landmarks,
                                           max_bytes=serving.max_request_bytes * 64)
                if avatar.num_frames > serving.max_avatar_video_frames:
                    raise ApiError(413, "video", f"{avatar.num_frames} frames; avatars are "
                                   f"limited to {serving.max_avatar_video_frames}")
                return st.store.save(avatar), avatar.num_frames

            try:
                avatar_id, frames = await asyncio.to_thread(build)
            except AvatarError as exc:
                field = "landmarks" if "landmarks" in str(exc) and landmarks else "video"
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

        JSON body: ``{"features": [[...] x A] x N}`` (per-frame audio features) or
        ``{"audio_wav": b64 PCM WAV}``, plus ``start`` (first frame index in the avatar's
        source track, default 0), ``count`` (optional, checked against the audio) and
        ``format`` (``png``: base64 PNGs in JSON; ``npy``: one float32 ``(N, H, W, 3)`` array).
        ``output``: ``crops`` (face crops, float32 in npy) or ``frames`` (the avatar's full
        frames with the mouth blended in, uint8 in npy). Or a raw ``audio/wav`` body with
        ``?start=&count=&format=&output=`` in the query."""
        st = state(request)
        if not st.store.exists(avatar_id):
            raise ApiError(404, "avatar_id", f"unknown avatar id {avatar_id!r:.80}")
        model = await st.served()
        doc = await frames_request(request, st)
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
        result = await st.call("frames", avatar_id, start, windows, what == "frames")
        if "error" in result:
            error = result["error"]
            raise ApiError(error["status"], error["field"], error["message"],
                           {"Retry-After": str(st.settings.serving.retry_after_s)}
                           if error["status"] == 503 else None)
        faces: np.ndarray = result["frames"]
        meta = {"model_version": result["version"], "batch_size": result["batch_size"],
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

    return app


async def read_body(request: Request, st: AppState) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (also without a
    Content-Length header)."""
    limit = st.settings.serving.max_request_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, st: AppState) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        raise ApiError(415, "Content-Type", f"expected application/json, got {kind!r}")
    body = await read_body(request, st)
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("body", f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
                      ) from None
    if not isinstance(doc, dict):
        raise invalid("body", "must be a JSON object")
    return doc


async def frames_request(request: Request, st: AppState) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in WAV_TYPES:
        doc: dict[str, Any] = {"audio_wav": await read_body(request, st)}
        for key in ("start", "count"):
            if key in request.query_params:
                text = request.query_params[key]
                if not text.isdigit():
                    raise invalid(key, f"must be a non-negative integer, got {text!r:.40}")
                doc[key] = int(text)
        for key in ("format", "output"):
            if key in request.query_params:
                doc[key] = request.query_params[key]
        return doc
    return await read_json(request, st)


VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm",
                  "video/x-matroska": ".mkv", "video/avi": ".avi", "video/x-msvideo": ".avi"}


async def receive_video(request: Request, st: AppState, folder: Path
                        ) -> tuple[Path, Path | None]:
    """The uploaded video (and landmarks CSV) written to ``folder``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("video/"):
        video = folder / ("upload" + VIDEO_SUFFIXES.get(kind, ".mp4"))
        video.write_bytes(await read_body(request, st))
        return video, None
    if kind != "multipart/form-data":
        raise ApiError(415, "Content-Type", "send multipart/form-data (video, landmarks) or a "
                                            f"raw video/* body, got {kind!r}")
    limit = st.settings.serving.max_request_bytes
    async with request.form(max_files=2, max_fields=4, max_part_size=limit) as form:
        upload = form.get("video")
        if upload is None or isinstance(upload, str):
            raise invalid("video", "required: the reference video as a file part")
        suffix = Path(upload.filename or "video.mp4").suffix.lower() or ".mp4"
        video = folder / ("upload" + suffix)
        video.write_bytes(await upload.read())
        landmarks = None
        part = form.get("landmarks")
        if part is not None:
            if isinstance(part, str):
                raise invalid("landmarks", "must be a file part (OpenFace CSV)")
            landmarks = folder / "landmarks.csv"
            landmarks.write_bytes(await part.read())
    return video, landmarks
