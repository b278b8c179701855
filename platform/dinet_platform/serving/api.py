"""Request parsing for the HTTP API: every refusal is an :class:`ApiError` with the HTTP
status and the field it is about, so a caller reads what to fix
(``{"error": {"field": "audio_wav", "message": "sample rate 8000 Hz, ..."}}``).
"""

from __future__ import annotations

import base64
import binascii
import io
import wave
from typing import Any

import cv2
import numpy as np

from dinet_platform.audio_contract import AudioFeatureSpec, missing_features
from dinet_platform.runtime.streaming import window_of_speech


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, field, message)


def require(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in doc:
        raise invalid(key, f"required ({what})")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise invalid(key, f"must be {what}, got {type(value).__name__}")
    return value


def optional_int(doc: dict[str, Any], key: str, default: int, minimum: int = 0,
                 maximum: int = 2**31 - 1) -> int:
    value = doc.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, int)
            or not minimum <= value <= maximum):
        shown = f"{value!r:.40}" if not isinstance(value, int) or value.bit_length() < 64 else (
            "a larger number")
        raise invalid(key, f"must be an integer in [{minimum}, {maximum}], got {shown}")
    return value


def decode_base64(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        raise invalid(field, "must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "not valid base64") from None


def encode_png(frame: np.ndarray) -> str:
    """Base64 PNG of an RGB float [0, 1] or uint8 image."""
    return base64.b64encode(encode_frame(frame, "png")).decode()


def encode_frame(frame: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    """An RGB float [0, 1] or uint8 image as ``png``, ``jpeg`` or ``raw`` (RGB bytes)."""
    if frame.dtype != np.uint8:
        frame = np.rint(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
    if fmt == "raw":
        return np.ascontiguousarray(frame).tobytes()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png",
                            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    assert ok
    return data.tobytes()


def decode_wav(data: bytes, field: str, sample_rate: int, max_samples: int | None = None
               ) -> np.ndarray | None:
    """Mono float32 samples of a PCM WAV file at exactly ``sample_rate``; None (nothing
    decoded) when its header says it holds more than ``max_samples``."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            if rate != sample_rate:
                raise invalid(field, f"sample rate {rate} Hz, the model needs {sample_rate} Hz")
            if width not in (2, 4):
                raise invalid(field, f"{8 * width}-bit samples; send 16- or 32-bit PCM")
            declared = min(wav.getnframes(), len(data) // max(1, channels * width))
            if max_samples is not None and declared > max_samples:
                return None
            raw = wav.readframes(declared)
    except (wave.Error, EOFError, ValueError) as exc:
        raise invalid(field, f"not a PCM WAV file ({exc})") from None
    ints = np.frombuffer(raw, dtype=np.int16 if width == 2 else np.int32)
    samples = ints.astype(np.float32) / float(np.iinfo(ints.dtype).max)
    return samples.reshape(-1, channels).mean(axis=1)


def pcm_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV bytes (for clients and tests)."""
    ints = np.clip(np.rint(np.asarray(samples) * 32767.0), -32768, 32767).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(ints.tobytes())
    return out.getvalue()


def windows_from_wav(samples: np.ndarray, field: str, model: dict[str, Any], context: int,
                     final: bool) -> np.ndarray:
    """Audio windows ``(N, A, W)`` of a piece of speech: as a stream of the whole speech
    computes them, for the frames after its ``context`` frames (all of them with ``final``,
    else those whose lookahead audio is in)."""
    audio = model["audio"]
    if audio["features"] != "logmel":
        raise invalid(field, missing_features(served_features(model),
                                              model=served_name(model), loader="serve-frames"))
    if len(samples) < audio["sample_rate"] // audio["fps"]:
        raise invalid(field, f"{len(samples)} samples: shorter than one frame")
    return window_of_speech(samples, context=context, final=final,
                            sample_rate=audio["sample_rate"], fps=audio["fps"],
                            n_mels=audio["dim"], window=audio["window"])


def features_from_json(values: Any, field: str, model: dict[str, Any]) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise invalid(field, "must be a list of per-frame feature vectors (numbers)") from None
    channels = model["audio"]["dim"]
    if array.ndim != 2 or array.shape[1] != channels or len(array) == 0:
        needed = served_features(model)
        raise invalid(field, f"must have shape (frames, {channels}), got {array.shape}: "
                             f"{served_name(model)} takes {needed.describe()}")
    if not np.isfinite(array).all():
        raise invalid(field, "contains NaN or infinite values")
    return array


def served_features(model: dict[str, Any]) -> AudioFeatureSpec:
    """The audio features of the served model (``GET /v1/model``'s ``audio``)."""
    audio = model["audio"]
    deepspeech = audio["features"] == "deepspeech"
    return AudioFeatureSpec(kind=audio["features"], dim=audio["dim"], fps=audio["fps"],
                            window=audio["window"],
                            sample_rate=None if deepspeech else audio["sample_rate"],
                            normalization=audio.get("normalization"))


def served_name(model: dict[str, Any]) -> str:
    return f"model version {model.get('version')}" if model.get("version") else (
        f"model {model.get('source', '')}".strip())

