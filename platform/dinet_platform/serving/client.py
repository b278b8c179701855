"""A small Python client for the lip-sync HTTP API (httpx)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

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

    def create_avatar(self, video: str | Path, landmarks: str | Path | None = None) -> str:
        video = Path(video)
        files = {"video": (video.name, video.read_bytes(), "video/mp4")}
        if landmarks is not None:
            files["landmarks"] = (Path(landmarks).name, Path(landmarks).read_bytes(), "text/csv")
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
