"""A live session's queue and credit in process: a stand-in socket and model (the real
path over Serve is tests/test_live.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from dinet_platform.config.serving import StreamConfig
from dinet_platform.serving.client import FRAME_HEADER
from dinet_platform.serving.live import LiveSession
from dinet_platform.serving.model import GeneratedFrames

pytestmark = pytest.mark.unit


class Socket:
    def __init__(self):
        self.frames, self.events, self.closed = [], [], None

    async def send_bytes(self, data):
        self.frames.append(FRAME_HEADER.unpack_from(data)[0])

    async def send_json(self, doc):
        self.events.append(doc)

    async def close(self, code=1000, reason=""):
        self.closed = code


class Model:
    def __init__(self):
        self.calls = []

    async def stream_frames(self, avatar_id, start, windows, paste):
        self.calls.append(len(windows))
        return GeneratedFrames(np.zeros((len(windows), 8, 8, 3), np.uint8), 1, 1)

    async def reply_work(self, work):
        return work()


def session_of(config: StreamConfig) -> tuple[LiveSession, Socket, Model]:
    socket, model = Socket(), Model()
    audio = {"sample_rate": 16000, "fps": 25, "dim": 29, "window": 5, "lookahead_frames": 3}
    return LiveSession(socket, model, "a" * 32, {"audio": audio, "version": 1}, config), \
        socket, model


def windows(count: int) -> np.ndarray:
    return np.zeros((count, 29, 5), np.float32)


def test_closing_sends_every_frame_the_credit_covers_across_calls():
    """At ``close`` a drop-mode session drops only what its client's credit cannot cover,
    not what one model call cannot hold."""
    session, socket, model = session_of(StreamConfig(max_unacked_frames=50,
                                                     max_frames_per_call=5))

    async def main():
        session._queue(windows(12))
        session.closing = True
        await session._compute_loop()

    asyncio.run(main())
    assert socket.frames == list(range(12)) and model.calls == [5, 5, 2]
    assert session.dropped == 0 and socket.closed == 1000


def test_frames_that_waited_past_the_lag_bound_are_dropped_but_the_newest():
    """A model slower than real time computes the latest audio, not a backlog: frames
    computable for longer than ``stream.max_lag_s`` are dropped and reported; when all are
    that old, the newest is still computed."""
    session, socket, _ = session_of(StreamConfig(max_lag_s=0.05))

    async def main():
        session._queue(windows(10))
        await asyncio.sleep(0.2)  # the model was busy: these waited past the bound
        session._queue(windows(2))
        batch = await session._take_batch()
        await asyncio.sleep(0.2)
        session._queue(windows(3))
        await asyncio.sleep(0.2)
        return [frame.index for frame in batch], [frame.index for frame in
                                                  await session._take_batch()]

    fresh, newest = asyncio.run(main())
    assert fresh == [10, 11] and newest == [14]
    assert [(e["from"], e["count"]) for e in socket.events] == [(0, 10), (12, 2)]
    assert session.dropped == 12 and "stream.max_lag_s" in socket.events[0]["reason"]
