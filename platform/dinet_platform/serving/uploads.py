"""Reading request bodies for the HTTP API: size-limited, every refusal an
:class:`~dinet_platform.serving.api.ApiError` naming its field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from dinet_platform.audio_contract import (
    AudioContractError,
    check_feature_file,
    how_to_provide,
    missing_features,
    npy_shape,
)
from dinet_platform.serving.api import ApiError, invalid, served_features, served_name
from dinet_platform.serving.avatars import AvatarStore

JSON_TYPES = ("application/json", "")
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave")


FEATURES_FILE = "audio_features.npy"


async def receive_dub(request: Request, limit: int, store: AvatarStore, folder: Path,
                      model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dub job's inputs written to ``folder``; its spec. With the served ``model``'s
    description, its audio-feature contract is checked first: a model trained on DeepSpeech
    features needs an ``audio_features`` part (refused, 422, without one or with a wrong
    shape, read from the ``.npy`` header before anything is decoded); a log-mel model refuses
    one."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise ApiError(415, "Content-Type", f"send multipart/form-data, got {kind!r}")
    spec: dict[str, Any] = {}
    async with request.form(max_files=4, max_fields=4, max_part_size=limit) as form:
        audio = form.get("audio")
        if audio is None or isinstance(audio, str):
            raise invalid("audio", "required: the speech as a file part")
        features = form.get("audio_features")
        if model is not None:
            needed = served_features(model)
            name = served_name(model)
            if needed.kind == "deepspeech" and features is None:
                raise invalid("audio_features",
                              missing_features(needed, model=name, loader="serve-dub"))
            if needed.kind != "deepspeech" and features is not None:
                raise invalid("audio_features", f"{name} was trained on {needed.describe()}: "
                                                + how_to_provide(needed, "serve-dub"))
        if features is not None:
            if isinstance(features, str):
                raise invalid("audio_features", "must be a file part (a .npy array)")
            data = await features.read()
            try:
                shape, dtype = npy_shape(data, "audio_features")
                if model is not None:
                    check_feature_file(shape, dtype, served_features(model), "audio_features")
            except AudioContractError as exc:
                raise invalid("audio_features", str(exc)) from None
            spec["audio_features"] = FEATURES_FILE
            (folder / FEATURES_FILE).write_bytes(data)
        avatar_id, video = form.get("avatar_id"), form.get("video")
        if (avatar_id is None) == (video is None):
            raise invalid("avatar_id", "send exactly one of 'avatar_id' or a 'video' file")
        if avatar_id is not None:
            if not isinstance(avatar_id, str) or not store.exists(avatar_id):
                raise ApiError(404, "avatar_id", f"unknown avatar id {str(avatar_id)!r:.80}")
            spec["avatar_id"] = avatar_id
        else:
            if isinstance(video, str):
                raise invalid("video", "must be a file part")
            spec["video"] = "video" + (Path(video.filename or "v.mp4").suffix.lower() or ".mp4")
            (folder / spec["video"]).write_bytes(await video.read())
            landmarks = form.get("landmarks")
            if landmarks is not None and not isinstance(landmarks, str):
                spec["landmarks"] = "landmarks.csv"
                (folder / spec["landmarks"]).write_bytes(await landmarks.read())
        spec["audio"] = "audio" + (Path(audio.filename or "a.wav").suffix.lower() or ".wav")
        (folder / spec["audio"]).write_bytes(await audio.read())
    return spec


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (also without a
    Content-Length header)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        raise ApiError(415, "Content-Type", f"expected application/json, got {kind!r}")
    body = await read_body(request, limit)
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid("body", f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
                      ) from None
    if not isinstance(doc, dict):
        raise invalid("body", "must be a JSON object")
    return doc


async def frames_request(request: Request, limit: int) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in WAV_TYPES:
        doc: dict[str, Any] = {"audio_wav": await read_body(request, limit)}
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
    return await read_json(request, limit)


VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm",
                  "video/x-matroska": ".mkv", "video/avi": ".avi", "video/x-msvideo": ".avi"}


MAX_AVATAR_IMAGES = 64


@dataclass
class AvatarUpload:
    """What ``POST /v1/avatars`` received, written to a folder: a ``video``, or still
    ``frames`` (image files, in upload order); optionally an OpenFace ``landmarks`` CSV."""

    video: Path | None = None
    frames: list[Path] = field(default_factory=list)
    landmarks: Path | None = None


async def receive_avatar(request: Request, limit: int, folder: Path) -> AvatarUpload:
    """The uploaded video or frames (and landmarks CSV) written to ``folder``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("video/"):
        video = folder / ("upload" + VIDEO_SUFFIXES.get(kind, ".mp4"))
        video.write_bytes(await read_body(request, limit))
        return AvatarUpload(video=video)
    if kind != "multipart/form-data":
        raise ApiError(415, "Content-Type", "send multipart/form-data (video or frames, "
                                            f"landmarks) or a raw video/* body, got {kind!r}")
    upload = AvatarUpload()
    async with request.form(max_files=MAX_AVATAR_IMAGES + 2, max_fields=4,
                            max_part_size=limit) as form:
        video, frames = form.get("video"), form.getlist("frames")
        if (video is None) == (not frames):
            raise invalid("video", "required: exactly one of a 'video' file or still images "
                                   "as repeated 'frames' file parts (e.g. five reference photos)")
        if video is not None:
            if isinstance(video, str):
                raise invalid("video", "must be a file part (the reference video)")
            suffix = Path(video.filename or "video.mp4").suffix.lower() or ".mp4"
            upload.video = folder / ("upload" + suffix)
            upload.video.write_bytes(await video.read())
        if len(frames) > MAX_AVATAR_IMAGES:
            raise ApiError(413, "frames", f"{len(frames)} images; at most {MAX_AVATAR_IMAGES}")
        for index, part in enumerate(frames):
            if isinstance(part, str):
                raise invalid("frames", f"part {index} must be an image file, not a text field")
            upload.frames.append(folder / f"frame_{index:03d}")
            upload.frames[-1].write_bytes(await part.read())
        part = form.get("landmarks")
        if part is not None:
            if isinstance(part, str):
                raise invalid("landmarks", "must be a file part (OpenFace CSV)")
            upload.landmarks = folder / "landmarks.csv"
            upload.landmarks.write_bytes(await part.read())
    return upload
