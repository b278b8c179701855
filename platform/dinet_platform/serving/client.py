"""A small Python client for the lip-sync HTTP API (httpx) and its live streams
(websockets)."""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import cv2
import httpx
import numpy as np


class LipSyncError(RuntimeError):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"HTTP {status}: {field}: {message}")
        self.status, self.field, self.message = status, field, message


class LipSyncClient:
    """``create_avatar`` once, then ``frames`` per audio window. Errors raise
    :class:`LipSyncError` with the status and the field the server named."""

    def __init__(self, url: str, token: str, timeout: float = 120.0):
        self._http = httpx.Client(base_url=url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def __enter__(self) -> LipSyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise LipSyncError(response.status_code, error["field"], error["message"])
            except (ValueError, KeyError):
                raise LipSyncError(response.status_code, "", response.text) from None
        return response

    def ready(self) -> bool:
        """Readiness (no token needed): a model is loaded and serving."""
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError:  # not listening yet
            return False
        return response.status_code == 200 and bool(response.json().get("ready"))

    def model(self) -> dict[str, Any]:
        return self._check(self._http.get("/v1/model")).json()

    def reload(self) -> dict[str, Any]:
        return self._check(self._http.post("/v1/admin/reload")).json()

    def create_avatar(self, video: str | Path | None = None,
                      landmarks: str | Path | None = None, *,
                      photos: Sequence[str | Path] = ()) -> str:
        """An avatar from a reference ``video`` of the face, or from still ``photos`` of it
        (PNG or JPEG, one size; one is enough), with optional OpenFace ``landmarks``."""
        if (video is None) == (not photos):
            raise ValueError("create_avatar needs exactly one of a video or photos")
        files = [("frames", (Path(photo).name, Path(photo).read_bytes(),
                             mimetypes.guess_type(str(photo))[0] or "application/octet-stream"))
                 for photo in photos]
        if video is not None:
            files.append(("video", (Path(video).name, Path(video).read_bytes(), "video/mp4")))
        if landmarks is not None:
            files.append(("landmarks", (Path(landmarks).name, Path(landmarks).read_bytes(),
                                        "text/csv")))
        return self._check(self._http.post("/v1/avatars", files=files)).json()["avatar_id"]

    def delete_avatar(self, avatar_id: str) -> None:
        self._check(self._http.delete(f"/v1/avatars/{avatar_id}"))

    def frames(self, avatar_id: str, audio: bytes | np.ndarray, *, start: int = 0,
               output: str = "crops") -> np.ndarray:
        """Generated frames for ``audio``: WAV bytes, or per-frame features ``(N, A)``.
        ``output="crops"``: float32 face crops in [0, 1]; ``"frames"``: uint8 full frames."""
        url = f"/v1/avatars/{avatar_id}/frames"
        if isinstance(audio, bytes):
            response = self._http.post(url, content=audio, headers={"Content-Type": "audio/wav"},
                                       params={"start": start, "format": "npy",
                                               "output": output})
        else:
            response = self._http.post(url, json={
                "features": np.asarray(audio, dtype=np.float32).tolist(), "start": start,
                "format": "npy", "output": output})
        return np.load(io.BytesIO(self._check(response).content), allow_pickle=False)

    def stream(self, avatar_id: str, audio: Iterable[bytes | np.ndarray], *, start: int = 0,
               output: str = "frames", format: str = "jpeg", sample_rate: int | None = None,
               slow_reader: str = "pause", timeout: float = 60.0) -> LiveStream:
        """A live session: ``audio`` (chunks of mono speech: float arrays in [-1, 1], or 16-bit
        PCM bytes, at ``sample_rate``, default the model's) is sent as it is iterated, from a
        thread; iterating the returned :class:`LiveStream` yields each :class:`StreamFrame`
        as it arrives (acknowledged as yielded). ``slow_reader="pause"`` (the default here)
        gets every frame even if the audio comes faster than it is read; ``"drop"`` keeps a
        live session current instead (its ``dropped`` counts what was skipped)."""
        session = self._check(self._http.post(f"/v1/avatars/{avatar_id}/sessions")).json()
        base = urlsplit(str(self._http.base_url))
        url = urlunsplit(("wss" if base.scheme == "https" else "ws", base.netloc,
                          session["stream_path"], "", ""))
        start_message = {"type": "start", "start": start, "output": output, "format": format,
                         "slow_reader": slow_reader}
        if sample_rate is not None:
            start_message["sample_rate"] = sample_rate
        return LiveStream(url, session["session_token"], start_message, audio, timeout)

    def dub(self, audio: str | Path, out: str | Path, *, avatar_id: str | None = None,
            video: str | Path | None = None, timeout_s: float = 1800.0,
            poll_s: float = 1.0, audio_features: str | Path | None = None) -> Path:
        """Dub ``video`` (or the avatar ``avatar_id``) with the speech in ``audio``: submit the
        job, wait for it, and write the mp4 (audio muxed in) to ``out``. ``audio_features``:
        the speech's DeepSpeech features (``.npy``, ``(frames, 29)``) for a model trained on
        them."""
        if (avatar_id is None) == (video is None):
            raise ValueError("give exactly one of avatar_id or video")
        audio = Path(audio)
        files: dict[str, Any] = {"audio": (audio.name, audio.read_bytes(), "audio/wav")}
        if audio_features is not None:
            features = Path(audio_features)
            files["audio_features"] = (features.name, features.read_bytes(),
                                       "application/octet-stream")
        data = {}
        if avatar_id is not None:
            data["avatar_id"] = avatar_id
        else:
            video = Path(video)
            files["video"] = (video.name, video.read_bytes(), "video/mp4")
        job = self._check(self._http.post("/v1/dub", files=files, data=data)).json()
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._check(self._http.get(job["status_url"])).json()
            if status["state"] == "done":
                break
            if status["state"] == "failed":
                raise LipSyncError(500, "job_id", status.get("error", "dub job failed"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"dub job {job['job_id']} still {status['state']} after "
                                   f"{timeout_s:.0f}s")
            time.sleep(poll_s)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_bytes(self._check(self._http.get(job["video_url"])).content)
        partial.replace(out)  # never leave a truncated mp4 at ``out``
        return out


@dataclass
class StreamFrame:
    index: int
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


FRAME_HEADER = struct.Struct("<IdHH")
"""Before every frame's image in a live stream: frame index, media time (s), height, width
(little-endian; the server, serving/live.py, writes it)."""


@dataclass
class LiveStream:
    """One live session (see :meth:`LipSyncClient.stream`): iterate it for frames; ``ready``,
    ``dropped`` and ``events`` (the server's other messages) are filled in as it runs."""

    url: str
    token: str
    start: dict[str, Any]
    audio: Iterable[bytes | np.ndarray]
    timeout: float
    ready: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def __iter__(self) -> Iterator[StreamFrame]:
        from websockets.exceptions import ConnectionClosedOK
        from websockets.sync.client import connect

        from dinet_platform.serving.session_tokens import SUBPROTOCOL

        # No permessage-deflate: frames are JPEG/PNG already, deflating them only costs CPU
        # at both ends (the server compresses whenever the client offers it).
        with connect(self.url, subprotocols=[SUBPROTOCOL, self.token], max_size=None,
                     compression=None, open_timeout=self.timeout) as socket:
            self.ready = json.loads(socket.recv(timeout=self.timeout))
            socket.send(json.dumps(self.start))
            sender = threading.Thread(target=self._send_audio, args=(socket,), daemon=True)
            sender.start()
            try:
                while True:
                    try:
                        message = socket.recv(timeout=self.timeout)
                    except ConnectionClosedOK:
                        return
                    if isinstance(message, bytes):
                        frame = self._frame(message)
                        with contextlib.suppress(ConnectionClosedOK):  # the last frames
                            socket.send(json.dumps({"type": "ack", "index": frame.index}))
                        yield frame
                        continue
                    event = json.loads(message)
                    self.events.append(event)
                    if event["type"] == "dropped":
                        self.dropped = event["total"]
                    elif event["type"] == "error":
                        raise LipSyncError(0, event["field"], event["message"])
            finally:
                sender.join(timeout=1.0)

    def _send_audio(self, socket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for chunk in self.audio:
                if not isinstance(chunk, bytes):
                    pcm = np.clip(np.asarray(chunk, np.float32).reshape(-1), -1.0, 1.0)
                    chunk = np.rint(pcm * 32767.0).astype("<i2").tobytes()
                socket.send(chunk)
            socket.send(json.dumps({"type": "close"}))
        except ConnectionClosed:  # the receiving side reports why
            pass

    def _frame(self, message: bytes) -> StreamFrame:
        index, time_s, height, width = FRAME_HEADER.unpack_from(message)
        data = np.frombuffer(message, np.uint8, offset=FRAME_HEADER.size)
        if self.start["format"] == "raw":
            image = data.reshape(height, width, 3)
        else:
            image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return StreamFrame(index, time_s, image)
