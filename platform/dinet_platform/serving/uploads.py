"""Reading request bodies for the HTTP API; every refusal an
:class:`~dinet_platform.serving.api.ApiError` naming its field.

The body's size is bounded as it arrives (:mod:`.guard`); here uploads are written to files
whose names the server chooses (the client's file name is never used: a long or odd name
cannot fail a write, and nothing from it reaches FFmpeg), copying off the event loop, and
a live window's JSON or WAV is parsed -- also off the loop -- with its frame count checked
from the WAV header or the JSON's length before any audio is decoded or features computed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from starlette.datastructures import QueryParams, UploadFile

from dinet_platform.audio_contract import (
    AudioContractError,
    check_feature_file,
    how_to_provide,
    missing_features,
    npy_shape,
)
from dinet_platform.config.serving import ServingConfig
from dinet_platform.media.images import decode_image
from dinet_platform.media.opening import MediaError, MediaLimitError, MediaLimits
from dinet_platform.runtime.streaming import window_of_features
from dinet_platform.serving import api
from dinet_platform.serving.api import ApiError, invalid, served_features, served_name
from dinet_platform.serving.avatars import AvatarStore

T = TypeVar("T")
Run = Callable[[Callable[[], T]], Awaitable[T]]
"""Runs blocking work off the event loop (``AppState.upload_work``)."""

JSON_TYPES = ("application/json", "")
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave")
FEATURES_FILE = "audio_features.npy"
MAX_AVATAR_IMAGES = 64
MAX_TEXT_FIELD_BYTES = 1024
NPY_HEADER_BYTES = 4096


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def file_part(form: Any, name: str, what: str) -> UploadFile | None:
    part = form.get(name)
    if part is not None and isinstance(part, str):
        raise invalid(name, f"must be a file part ({what})")
    return part


async def store_part(part: UploadFile, path: Path, run: Run) -> Path:
    """Copy an uploaded part (spooled by the multipart parser) to ``path``, off the loop."""

    def copy() -> None:
        part.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(part.file, out, 1 << 20)

    await run(copy)
    return path


async def receive_dub(request: Request, store: AvatarStore, folder: Path,
                      model: dict[str, Any], run: Run) -> dict[str, Any]:
    """The dub job's inputs written to ``folder``; its spec. The served ``model``'s
    audio-feature contract is checked first: a model trained on DeepSpeech features needs an
    ``audio_features`` part (refused, 422, without one or with a wrong shape, read from the
    ``.npy`` header before anything is decoded); a log-mel model refuses one."""
    if content_type(request) != "multipart/form-data":
        raise ApiError(415, "Content-Type", "send multipart/form-data, got "
                                            f"{content_type(request)!r:.80}")
    spec: dict[str, Any] = {}
    async with request.form(max_files=4, max_fields=4,
                            max_part_size=MAX_TEXT_FIELD_BYTES) as form:
        audio = file_part(form, "audio", "the speech")
        if audio is None:
            raise invalid("audio", "required: the speech as a file part")
        features = file_part(form, "audio_features", "a .npy array")
        needed, name = served_features(model), served_name(model)
        if needed.kind == "deepspeech" and features is None:
            raise invalid("audio_features",
                          missing_features(needed, model=name, loader="serve-dub"))
        if needed.kind != "deepspeech" and features is not None:
            raise invalid("audio_features", f"{name} was trained on {needed.describe()}: "
                                            + how_to_provide(needed, "serve-dub"))
        if features is not None:
            await check_npy_header(features, needed, run)
            spec["audio_features"] = FEATURES_FILE
            await store_part(features, folder / FEATURES_FILE, run)
        avatar_id, video = form.get("avatar_id"), file_part(form, "video", "the face video")
        if (avatar_id is None) == (video is None):
            raise invalid("avatar_id", "send exactly one of 'avatar_id' or a 'video' file")
        if avatar_id is not None:
            if not isinstance(avatar_id, str) or not store.exists(avatar_id):
                raise ApiError(404, "avatar_id", f"unknown avatar id {str(avatar_id)!r:.80}")
            spec["avatar_id"] = avatar_id
        else:
            spec["video"] = (await store_part(video, folder / "video", run)).name
            landmarks = file_part(form, "landmarks", "an OpenFace CSV")
            if landmarks is not None:
                spec["landmarks"] = (await store_part(landmarks, folder / "landmarks.csv",
                                                      run)).name
        spec["audio"] = (await store_part(audio, folder / "audio", run)).name
    return spec


async def check_npy_header(part: UploadFile, needed: Any, run: Run) -> None:
    def check() -> None:
        part.file.seek(0)
        head = part.file.read(NPY_HEADER_BYTES)
        try:
            shape, dtype = npy_shape(head, "audio_features")
            check_feature_file(shape, dtype, needed, "audio_features")
        except AudioContractError as exc:
            raise invalid("audio_features", str(exc)) from None

    await run(check)


@dataclass
class AvatarUpload:
    """What ``POST /v1/avatars`` received, written to a folder: a ``video``, or still
    ``frames`` (image files, in upload order); optionally an OpenFace ``landmarks`` CSV."""

    video: Path | None = None
    frames: list[Path] = field(default_factory=list)
    landmarks: Path | None = None


async def receive_avatar(request: Request, folder: Path, run: Run) -> AvatarUpload:
    """The uploaded video or frames (and landmarks CSV) written to ``folder``."""
    kind = content_type(request)
    if kind.startswith("video/"):
        video = folder / "video"
        with video.open("wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        return AvatarUpload(video=video)
    if kind != "multipart/form-data":
        raise ApiError(415, "Content-Type", "send multipart/form-data (video or frames, "
                                            f"landmarks) or a raw video/* body, got {kind!r:.80}")
    upload = AvatarUpload()
    async with request.form(max_files=MAX_AVATAR_IMAGES + 2, max_fields=4,
                            max_part_size=MAX_TEXT_FIELD_BYTES) as form:
        video, frames = file_part(form, "video", "the reference video"), form.getlist("frames")
        if (video is None) == (not frames):
            raise invalid("video", "required: exactly one of a 'video' file or still images "
                                   "as repeated 'frames' file parts (e.g. five reference photos)")
        if video is not None:
            upload.video = await store_part(video, folder / "video", run)
        if len(frames) > MAX_AVATAR_IMAGES:
            raise ApiError(413, "frames", f"{len(frames)} images; at most {MAX_AVATAR_IMAGES}")
        for index, part in enumerate(frames):
            if isinstance(part, str):
                raise invalid("frames", f"part {index} must be an image file, not a text field")
            upload.frames.append(await store_part(part, folder / f"frame_{index:03d}", run))
        landmarks = file_part(form, "landmarks", "an OpenFace CSV")
        if landmarks is not None:
            upload.landmarks = await store_part(landmarks, folder / "landmarks.csv", run)
    return upload


def decode_images(paths: list[Path], limits: MediaLimits) -> list[np.ndarray]:
    """The uploaded still frames, each refused by its header's size before decoding."""
    images = []
    for index, path in enumerate(paths):
        try:
            images.append(decode_image(path.read_bytes(), f"frames part {index}",
                                       limits=limits))
        except MediaLimitError as exc:
            raise ApiError(413, "frames", str(exc)) from None
        except MediaError as exc:
            raise invalid("frames", str(exc)) from None
    return images


async def frames_request(request: Request) -> tuple[bytes, str]:
    """A live window's body (bounded by the guard) and its content type."""
    kind = content_type(request)
    if kind not in WAV_TYPES and kind not in JSON_TYPES:
        raise ApiError(415, "Content-Type", "send application/json or audio/wav, got "
                                            f"{kind!r:.80}")
    return await request.body(), kind


@dataclass
class FrameWindow:
    start: int
    windows: np.ndarray
    """``(N, A, W)`` audio windows, one per frame."""
    format: str
    output: str


def parse_frames(body: bytes, kind: str, query: QueryParams, model: dict[str, Any],
                 serving: ServingConfig) -> FrameWindow:
    """A live window's request as audio windows (blocking: run it off the event loop)."""
    doc = wav_document(body, query) if kind in WAV_TYPES else json_document(body)
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
    context = api.optional_int(doc, "context", 0, maximum=10_000)
    final = doc.get("final", True)
    if not isinstance(final, bool):
        raise invalid("final", f"must be true or false, got {final!r:.40}")
    limit = serving.max_frames_per_request
    source = "features" if "features" in doc else "audio_wav"
    audio = model["audio"]
    if "features" in doc:
        if isinstance(doc["features"], list) and len(doc["features"]) > limit + context:
            raise too_many_frames(source, len(doc["features"]), limit)
        features = api.features_from_json(doc["features"], source, model)
        windows = window_of_features(features, context=context, final=final,
                                     window=audio["window"])
    else:
        wav = doc["audio_wav"]
        data = wav if isinstance(wav, bytes) else api.decode_base64(wav, source)
        rate = audio["sample_rate"]
        samples = api.decode_wav(data, source, rate,
                                 max_samples=(limit + context + audio["lookahead_frames"] + 1)
                                 * rate // audio["fps"])
        if samples is None:
            raise too_many_frames(source, None, limit)
        windows = api.windows_from_wav(samples, source, model, context, final)
    if len(windows) > limit:
        raise too_many_frames(source, len(windows), limit)
    if len(windows) == 0:
        raise invalid(source, f"no frame is complete: the audio covers only its {context} "
                              "context frames (and the lookahead of the next)")
    if count is not None and count != len(windows):
        raise invalid("count", f"the audio gives {len(windows)} frames, but count is {count}")
    return FrameWindow(start, windows, output, what)


def too_many_frames(field: str, frames: int | None, limit: int) -> ApiError:
    return ApiError(413, field, f"{'more than ' + str(limit) if frames is None else frames} "
                                f"frames in one request; the limit is {limit}")


def wav_document(body: bytes, query: QueryParams) -> dict[str, Any]:
    doc: dict[str, Any] = {"audio_wav": body}
    for key in ("start", "count", "context"):
        if key in query:
            text = query[key]
            if not (text.isdigit() and len(text) <= 10):
                raise invalid(key, f"must be a non-negative integer, got {text!r:.40}")
            doc[key] = int(text)
    for key in ("format", "output"):
        if key in query:
            doc[key] = query[key]
    if "final" in query:
        if query["final"] not in ("true", "false"):
            raise invalid("final", f"must be true or false, got {query['final']!r:.40}")
        doc["final"] = query["final"] == "true"
    return doc


def json_document(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # incl. decode errors, 4300+ digit numbers
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else (
            "nested too deeply" if isinstance(exc, RecursionError) else str(exc))
        raise invalid("body", f"not valid JSON ({reason:.200})") from None
    if not isinstance(doc, dict):
        raise invalid("body", "must be a JSON object")
    return doc
