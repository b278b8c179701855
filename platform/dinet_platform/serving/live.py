"""A live session: speech in over a WebSocket, the avatar's frames out as soon as they are
computable (``/v1/avatars/{id}/stream``).

The protocol (JSON text messages; audio and frames in binary messages):

client -> server
  ``{"type": "start", "start": 0, "format": "jpeg", "output": "frames", "sample_rate": 16000,
  "slow_reader": "drop"}``
      Optional, before the first audio. ``start``: the avatar frame the session's frame 0
      shows; ``format``: ``jpeg`` | ``png`` | ``raw`` (RGB bytes); ``output``: ``frames`` (the
      avatar's full frames) | ``crops`` (the generated face crops); ``sample_rate``: of the
      audio sent (resampled to the model's); ``slow_reader``: ``drop`` | ``pause`` (below).
  binary
      Mono 16-bit little-endian PCM, any number of samples per message.
  ``{"type": "ack", "index": i}``
      The client has frames up to ``i``. Send it as frames arrive (below).
  ``{"type": "end"}``
      End of speech: the last frames are computed (their audio is padded as offline). More
      audio then starts a new utterance whose frames continue the numbering.
  ``{"type": "close"}``
      End, then the server closes the connection (1000) once the last frame is sent.

server -> client
  ``{"type": "ready", ...}``: the session's settings, ``lookahead_frames`` and limits.
  binary: a frame, ``client.FRAME_HEADER`` (index, media time in s, height, width) then the
  image.
  ``{"type": "dropped", "from": i, "count": n, ...}``: frames never computed (slow reader).
  ``{"type": "paused" | "resumed", ...}``: the slow-reader pause began or ended.
  ``{"type": "end", "frames": n, ...}``: every frame of the utterance was sent.
  ``{"type": "error", "field": ..., "message": ...}``, then a close: what was wrong.

A frame leaves once ``lookahead_frames`` more frames of audio are in (120 ms at 25 fps), with
the audio context of the whole speech: the frames equal an offline dub of the same audio
(:class:`~dinet_platform.runtime.streaming.AudioStream`). The frame count comes from the
sample count, so audio and video cannot drift.

Slow readers: a replica cannot count on the connection pushing back. Behind Ray's Python proxy
a WebSocket that is not read does not slow the sender at all (measured: 400 MB went out, in
0.4 s, to a client that read nothing), and what HAProxy or a load balancer in front buffers is
theirs to decide. The session counts instead: at most ``stream.max_unacked_frames`` frames
(2 s at 25 fps) are sent and not yet acknowledged; frames wait for credit, computed only when
they can be sent. Then

- ``drop`` (default, live speech: the freshest frames matter): a backlog never grows past
  ``max_unacked_frames``, and a frame computable for longer than ``stream.max_lag_s``
  (0.5 s) is not computed any more (but the newest one): the oldest frames are dropped, and
  the client is told how many with ``dropped``. A client or a model slower than real time
  sees the latest audio (a backlog of 2 s of frames took a model at 10 frames/s 5 s to
  compute); at ``close`` what has no credit is dropped;
- ``pause`` (a file fed faster than real time, every frame wanted): computing waits for acks
  (``paused`` / ``resumed``) and the audio waits, up to ``stream.max_buffered_s``; beyond,
  the session is closed (1008) saying so.

A client that never acks gets ``max_unacked_frames`` frames.

The windows of all sessions that are ready together go to the model replica in one call
(``AppState.stream_frames``), where each enters the replica's batching queue: sessions of many
users share forwards, and pay one Serve round trip per forward rather than one each.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from dinet_platform.config.serving import StreamConfig
from dinet_platform.media.io import AudioResampler
from dinet_platform.runtime.streaming import AudioStream
from dinet_platform.serving.api import ApiError, encode_frame
from dinet_platform.serving.client import FRAME_HEADER
from dinet_platform.serving.state import AppState

FORMATS = ("jpeg", "png", "raw")
OUTPUTS = ("frames", "crops")
SLOW_READER = ("drop", "pause")
MAX_SAMPLE_RATE = 192_000


class SessionError(Exception):
    """Ends a session: the client is told ``field`` and ``message``, then it is closed."""

    def __init__(self, field: str, message: str, code: int = 1008):
        super().__init__(message)
        self.field, self.message, self.code = field, message, code


@dataclass
class StreamOptions:
    start: int = 0
    format: str = "jpeg"
    output: str = "frames"
    sample_rate: int = 16000
    slow_reader: str = "drop"

    @classmethod
    def parse(cls, doc: dict[str, Any], model_rate: int) -> StreamOptions:
        options = cls(sample_rate=model_rate)
        for key, allowed in (("format", FORMATS), ("output", OUTPUTS),
                             ("slow_reader", SLOW_READER)):
            if key in doc:
                if doc[key] not in allowed:
                    raise SessionError(key, f"must be one of {', '.join(allowed)}, got "
                                            f"{doc[key]!r:.40}")
                setattr(options, key, doc[key])
        for key, low, high in (("start", 0, 2**31 - 1),
                               ("sample_rate", 8000, MAX_SAMPLE_RATE)):
            if key in doc:
                value = doc[key]
                if not isinstance(value, int) or isinstance(value, bool) or not (
                        low <= value <= high):
                    raise SessionError(key, f"must be an integer in [{low}, {high}], got "
                                            f"{value!r:.40}")
                setattr(options, key, value)
        return options


@dataclass
class _Frame:
    index: int
    window: np.ndarray
    computable_at: float  # the event loop's clock when its audio was in


class LiveSession:
    """One client's stream: the receive loop feeds audio into an :class:`AudioStream`; the
    compute loop sends the frames that became computable, one model call at a time (what
    arrives meanwhile goes into the next call)."""

    def __init__(self, socket: WebSocket, st: AppState, avatar_id: str, model: dict[str, Any],
                 config: StreamConfig):
        self.socket, self.st, self.avatar_id, self.config = socket, st, avatar_id, config
        audio = model["audio"]
        self.audio_spec = {"sample_rate": audio["sample_rate"], "fps": audio["fps"],
                           "n_mels": audio["dim"], "window": audio["window"]}
        self.fps = audio["fps"]
        self.model_version = model["version"]
        self.lookahead_frames = audio["lookahead_frames"]
        self.options = StreamOptions(sample_rate=audio["sample_rate"])
        self.audio: AudioStream | None = None  # the utterance in progress
        self.resampler: AudioResampler | None = None
        self.frames = 0  # frames of the session so far (finished utterances + this one)
        self.pending: deque[_Frame] = deque()  # computable, not sent (nor dropped) yet
        self.ends: deque[int] = deque()  # frame counts at which an utterance ended
        self.acked = -1
        self.unacked: deque[int] = deque()  # indices sent and not acknowledged yet
        self.dropped = 0
        self._dropped_from: int | None = None  # drops not reported to the client yet
        self._dropped_now = 0
        self.closing = False
        self.paused = False
        self._wake = asyncio.Event()

    def ready_message(self) -> dict[str, Any]:
        return {"type": "ready", "avatar_id": self.avatar_id, "model_version":
                self.model_version, "fps": self.fps,
                "model_sample_rate": self.audio_spec["sample_rate"],
                "lookahead_frames": self.lookahead_frames,
                "max_unacked_frames": self.config.max_unacked_frames,
                "max_message_bytes": self.config.max_message_bytes,
                "header": "<IdHH: index, media time s, height, width"}

    async def run(self) -> None:
        await self.socket.send_json(self.ready_message())
        compute = asyncio.create_task(self._compute_loop())
        try:
            await self._receive_loop(compute)
        except SessionError as exc:
            await self._fail(exc)
        except WebSocketDisconnect:
            pass
        finally:
            compute.cancel()

    async def _fail(self, exc: SessionError) -> None:
        try:
            await self.socket.send_json({"type": "error", "field": exc.field,
                                         "message": exc.message})
            await self.socket.close(exc.code, exc.message[:120])
        except (WebSocketDisconnect, RuntimeError):  # the client is gone already
            pass

    # -- from the client ---------------------------------------------------------------------

    async def _receive_loop(self, compute: asyncio.Task) -> None:
        """Until the compute loop is done (after ``close``, or failed) or the client goes."""
        while True:
            receive = asyncio.ensure_future(self.socket.receive())
            done, _ = await asyncio.wait({receive, compute}, timeout=self.config.idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if compute in done:
                receive.cancel()
                compute.result()  # raises the compute loop's SessionError
                return
            if not done:
                receive.cancel()
                raise SessionError("session", f"no message for {self.config.idle_timeout_s:g} "
                                              "s (stream.idle_timeout_s)", 1001)
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                self._audio(message["bytes"])
            elif message.get("text") is not None:
                self._control(message["text"])

    def _audio(self, data: bytes) -> None:
        limit = self.config.max_message_bytes
        if len(data) > limit:
            raise SessionError("audio", f"a message of {len(data)} bytes exceeds "
                                        f"stream.max_message_bytes ({limit})", 1009)
        if len(data) % 2:
            raise SessionError("audio", f"{len(data)} bytes is not whole 16-bit samples")
        if self.closing:
            raise SessionError("audio", "audio after 'close'")
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        if self.audio is None:
            self.audio = AudioStream(**self.audio_spec)
            if self.options.sample_rate != self.audio_spec["sample_rate"]:
                self.resampler = AudioResampler(self.options.sample_rate,
                                                self.audio_spec["sample_rate"])
        if self.resampler is not None:
            samples = self.resampler.push(samples)
        self._queue(self.audio.push(samples))
        self._check_buffer()

    def _control(self, text: str) -> None:
        if len(text) > 4096:
            raise SessionError("message", "a control message over 4096 characters")
        try:
            doc = json.loads(text)
        except ValueError:
            raise SessionError("message", "control messages are JSON objects") from None
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "start":
            if self.frames or self.audio is not None:
                raise SessionError("start", "'start' must come before the first audio")
            self.options = StreamOptions.parse(doc, self.audio_spec["sample_rate"])
        elif kind == "ack":
            index = doc.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                raise SessionError("index", f"ack needs an integer index, got {index!r:.40}")
            self.acked = max(self.acked, index)
            while self.unacked and self.unacked[0] <= index:
                self.unacked.popleft()
            self._wake.set()
        elif kind in ("end", "close"):
            self._end_utterance()
            if kind == "close":  # the compute loop closes once the last frame is out
                self.closing = True
                self._wake.set()
        else:
            raise SessionError("type", f"unknown message type {kind!r:.40} (start, ack, end, "
                                       "close)")

    def _end_utterance(self) -> None:
        if self.audio is None:
            return
        if self.resampler is not None:
            self._queue(self.audio.push(self.resampler.flush()))
            self.resampler = None
        self._queue(self.audio.end())
        self.ends.append(self.frames)
        self.audio = None
        self._wake.set()

    def _queue(self, windows: np.ndarray) -> None:
        now = asyncio.get_running_loop().time()
        for window in windows:
            self.pending.append(_Frame(self.frames, window, now))
            self.frames += 1
        if len(windows):
            self._trim_backlog()
            self._wake.set()

    def _check_buffer(self) -> None:
        waiting_s = len(self.pending) / self.fps
        if waiting_s > self.config.max_buffered_s:
            raise SessionError("session", f"{waiting_s:.1f} s of audio wait for a "
                                          "client that reads too slowly "
                                          f"(stream.max_buffered_s {self.config.max_buffered_s:g})")

    # -- to the client -----------------------------------------------------------------------

    @property
    def credit(self) -> int:
        """Frames that may be sent before the client acknowledges more."""
        return self.config.max_unacked_frames - len(self.unacked)

    async def _compute_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                batch = await self._take_batch() if self.pending else []
                if batch:
                    await self._send_frames(batch)
                await self._send_ended()
                if not batch:
                    break  # nothing computable, or waiting for credit: an ack wakes us
            if self.closing and not self.pending:
                await self.socket.close(1000)
                return

    async def _send_ended(self) -> None:
        """``end`` for every utterance whose frames are all sent or dropped."""
        while self.ends and (not self.pending or self.pending[0].index >= self.ends[0]):
            await self.socket.send_json({"type": "end", "frames": self.ends.popleft(),
                                         "dropped": self.dropped})

    async def _take_batch(self) -> list[_Frame]:
        """The next frames to compute: as many as the client's credit allows (at ``close``,
        in ``drop``, what has no credit is dropped)."""
        pause = self.options.slow_reader == "pause"
        if pause and self.credit <= 0 and not self.paused:
            self.paused = True
            await self.socket.send_json({"type": "paused", "at": self.pending[0].index,
                                         "acked": self.acked})
        elif pause and self.credit > 0 and self.paused:
            self.paused = False
            await self.socket.send_json({"type": "resumed", "at": self.pending[0].index})
        self._trim_backlog()  # what waited past stream.max_lag_s meanwhile
        take = min(self.credit, self.config.max_frames_per_call, len(self.pending))
        batch = [self.pending.popleft() for _ in range(max(0, take))]
        if self.closing and not pause:  # no more audio: what the credit cannot cover goes
            keep = max(0, self.credit - len(batch))
            unsendable = list(self.pending)[keep:]
            for frame in unsendable:
                self._drop(frame.index)
            for _ in unsendable:
                self.pending.pop()
        await self._report_drops()
        return batch

    def _trim_backlog(self) -> None:
        """``drop``: never more frames waiting than ``max_unacked_frames``, nor any computable
        for longer than ``stream.max_lag_s`` but the newest (a model slower than real time
        computes the latest audio, not a backlog); the oldest go."""
        if self.options.slow_reader != "drop":
            return
        oldest_kept = asyncio.get_running_loop().time() - self.config.max_lag_s
        while len(self.pending) > self.config.max_unacked_frames or (
                len(self.pending) > 1 and self.pending[0].computable_at < oldest_kept):
            self._drop(self.pending.popleft().index)

    def _drop(self, index: int) -> None:
        if self._dropped_from is None:
            self._dropped_from = index
        self._dropped_now += 1

    async def _report_drops(self) -> None:
        if not self._dropped_now:
            return
        self.dropped += self._dropped_now
        message = {"type": "dropped", "from": self._dropped_from, "count": self._dropped_now,
                   "total": self.dropped, "reason": "more than stream.max_unacked_frames "
                   f"({self.config.max_unacked_frames}) frames or stream.max_lag_s "
                   f"({self.config.max_lag_s:g} s) behind: the client acknowledged frame "
                   f"{self.acked}, {self.frames} are due"}
        self._dropped_from, self._dropped_now = None, 0
        await self.socket.send_json(message)

    async def _send_frames(self, batch: list[_Frame]) -> None:
        first = batch[0].index
        windows = np.stack([frame.window for frame in batch])
        try:
            result = await self.st.stream_frames(self.avatar_id, self.options.start + first,
                                                 windows, paste=self.options.output == "frames")
        except ApiError as exc:
            raise SessionError(exc.field, exc.message, 1013 if exc.status == 503 else 1011
                               ) from None
        quality = self.config.jpeg_quality
        images = await self.st.reply_work(lambda: [
            encode_frame(image, self.options.format, quality) for image in result.frames])
        for frame, image, data in zip(batch, result.frames, images, strict=True):
            header = FRAME_HEADER.pack(frame.index, frame.index / self.fps, *image.shape[:2])
            await self.socket.send_bytes(header + data)
            self.unacked.append(frame.index)
