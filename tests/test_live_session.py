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


def test_closing_sends_every_frame_the_credit_covers_across_calls():
    """At ``close`` a drop-mode session drops only what its client's credit cannot cover,
    not what one model call cannot hold (in process: a stand-in socket and model)."""
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

    socket, model = Socket(), Model()
    audio = {"sample_rate": 16000, "fps": 25, "dim": 29, "window": 5, "lookahead_frames": 3}
    session = LiveSession(socket, model, "a" * 32, {"audio": audio, "version": 1},
                          StreamConfig(max_unacked_frames=50, max_frames_per_call=5))
    session._queue(np.zeros((12, 29, 5), np.float32))
    session.closing = True
    asyncio.run(session._compute_loop())
    assert socket.frames == list(range(12)) and model.calls == [5, 5, 2]
    assert session.dropped == 0 and socket.closed == 1000
