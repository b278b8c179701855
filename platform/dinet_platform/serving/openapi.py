"""What the OpenAPI document (``/openapi.json``, ``/docs``) says about request bodies and
error answers that the routes read by hand (multipart, raw video or WAV): so a client
generator -- or a fuzzer such as schemathesis -- knows every field a route takes."""

from __future__ import annotations

from typing import Any

BINARY = {"type": "string", "format": "binary"}
ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["field", "message"],
        "properties": {"field": {"type": "string", "description": "what to fix"},
                       "message": {"type": "string"}}}},
}
_REASONS = {
    400: "Malformed body (e.g. a broken or oversized multipart form)",
    401: "Missing or wrong bearer token",
    404: "Unknown avatar or job id",
    409: "The job is not done",
    413: "Too large: body, frames, pixels, video or audio length",
    415: "Unsupported Content-Type",
    422: "Invalid input; `field` names it",
    429: "Storage quota reached (avatars or dub jobs)",
    503: "No model loaded yet, or overloaded: retry after `Retry-After` seconds",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": reason, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, reason in _REASONS.items()
}

AVATAR_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "video": {**BINARY, "description": "the reference video (MP4, MOV, MKV/WebM, AVI)"},
            "frames": {"type": "array", "items": BINARY, "maxItems": 64,
                       "description": "still images of the face (PNG/JPEG), instead of a video"},
            "landmarks": {**BINARY, "description": "OpenFace CSV, one row per frame"},
        }}},
    "video/mp4": {"schema": BINARY},
}}}

_QUERY = [
    {"name": "start", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
     "description": "first frame index in the avatar's track (raw audio/wav bodies)"},
    {"name": "count", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}},
    {"name": "format", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["png", "npy"]}},
    {"name": "output", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["crops", "frames"]}},
    {"name": "context", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": 10_000},
     "description": "frames of audio before `start` at the beginning of the audio"},
    {"name": "final", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["true", "false"]},
     "description": "the audio ends the speech (default); false: its last lookahead frames "
                    "are left for the next piece"},
]
FRAMES_BODY = {"parameters": _QUERY, "requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object",
        "properties": {
            "features": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                         "description": "per-frame audio features (frames x dim)"},
            "audio_wav": {"type": "string", "format": "byte",
                          "description": "base64 PCM WAV at the model's sample rate"},
            "start": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "count": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
            "format": {"type": "string", "enum": ["png", "npy"]},
            "output": {"type": "string", "enum": ["crops", "frames"]},
            "context": {"type": "integer", "minimum": 0, "maximum": 10_000},
            "final": {"type": "boolean"},
        }}},
    "audio/wav": {"schema": BINARY},
}}}
FRAMES_RESPONSES = {**ERRORS, 200: {"description": "the window's frames", "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "frames": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
    "application/x-npy": {"schema": BINARY},
}}}

DUB_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["audio"],
    "properties": {
        "audio": {**BINARY, "description": "the speech (WAV, FLAC, MP3, AAC/MP4, Ogg)"},
        "avatar_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "video": {**BINARY, "description": "a face video, instead of avatar_id"},
        "landmarks": {**BINARY, "description": "OpenFace CSV for the video"},
        "audio_features": {**BINARY, "description": ".npy (frames, 29): DeepSpeech models"},
    }}}}}}
VIDEO_RESPONSES = {**ERRORS, 200: {"description": "the dubbed H.264 mp4",
                                   "content": {"video/mp4": {"schema": BINARY}}}}
