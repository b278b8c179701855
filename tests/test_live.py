"""Live sessions on the real Serve app: a WebSocket per session, speech in, frames out.

Against the session's Serve app (conftest ``served``: stream.max_sessions 3,
stream.max_unacked_frames 20) over real HTTP and WebSocket connections."""

from __future__ import annotations

import io
import json
import threading
import time
import wave

import httpx
import numpy as np
import pytest
import torch
from dinet_platform.config.schema import DataConfig
from dinet_platform.runtime.dub import load_speech, render_frames
from dinet_platform.runtime.streaming import offline_windows
from dinet_platform.serving import api
from dinet_platform.serving.avatars import AvatarStore
from dinet_platform.serving.client import FRAME_HEADER, LipSyncClient, LipSyncError
from dinet_platform.serving.model import load_served_model
from dinet_platform.serving.session_tokens import SUBPROTOCOL, SessionTokens
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support import SERVE_TOKEN, auth, speech_like

pytestmark = pytest.mark.serve
HOP = 640


def pcm(samples: np.ndarray) -> bytes:
    """The 16-bit PCM a WAV of ``samples`` holds (api.pcm_wav's quantisation)."""
    with wave.open(io.BytesIO(api.pcm_wav(samples, 16000))) as wav:
        return wav.readframes(wav.getnframes())


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        out.append(data[at:at + 2 * size])
        at += 2 * size
    return [*out, data[at:]]


def session(served, avatar: str) -> dict:
    response = httpx.post(f"{served['url']}/v1/avatars/{avatar}/sessions", headers=auth())
    assert response.status_code == 201, response.text
    return response.json()


def ws_url(served, path: str) -> str:
    return "ws://" + served["url"].split("://", 1)[1].split("/", 1)[0] + path


def open_stream(served, avatar: str, token: str | None = None):
    info = session(served, avatar)
    return connect(ws_url(served, info["stream_path"]), max_size=None, open_timeout=60,
                   subprotocols=[SUBPROTOCOL, token or info["session_token"]])


def refusal(served, path: str, subprotocols=None, headers=None) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as caught:
        connect(ws_url(served, path), subprotocols=subprotocols, additional_headers=headers,
                open_timeout=60)
    response = caught.value.response
    return response.status_code, json.loads(response.body)["error"]


def test_a_stream_gives_the_frames_of_an_offline_dub_of_its_speech(served, avatar, tmp_path):
    """Irregular chunks in, frame for frame the dub's frames out, numbered and timed by the
    audio, through the Python client."""
    speech = speech_like(2.37, seed=3)
    data = pcm(speech)
    rng = np.random.default_rng(0)
    pieces = chunks(data, [int(n) for n in rng.integers(1, 2500, 14)])
    with LipSyncClient(served["url"], SERVE_TOKEN) as client:
        live = client.stream(avatar, pieces, format="raw", output="frames")
        frames = list(live)
    assert live.ready["fps"] == 25 and live.ready["lookahead_frames"] == 3
    count = round(len(speech) / HOP)
    assert [f.index for f in frames] == list(range(count)), live.events
    assert [f.time_s for f in frames] == [i / 25 for i in range(count)]
    assert live.dropped == 0 and live.events[-1] == {"type": "end", "frames": count,
                                                     "dropped": 0}

    wav = tmp_path / "speech.wav"
    wav.write_bytes(api.pcm_wav(speech, 16000))
    model = load_served_model(served["settings"].serving, served["client"], served["v1"])
    avatar_data = AvatarStore(served["root"] / "avatars").load(avatar)
    features = load_speech(wav, DataConfig.model_validate(model.describe()["data"])).features
    offline = [frame for _, frame in render_frames(model.engine, avatar_data, features, 5,
                                                   batch_size=8)]
    streamed = np.stack([f.image for f in frames]).astype(np.int16)
    difference = np.abs(streamed - np.stack(offline).astype(np.int16))
    assert difference.max() <= 6 and difference.mean() < 0.05, (difference.max(),
                                                                 difference.mean())


def test_windowed_frames_with_their_audio_context_equal_offline(served, http, avatar):
    """/frames pieces that carry ``context`` frames of the audio before them (and leave the
    last lookahead frames to the next piece) give the crops of the whole speech."""
    speech = speech_like(3.0, seed=4)
    windows = offline_windows(speech, sample_rate=16000, fps=25, n_mels=29, window=5)
    model = load_served_model(served["settings"].serving, served["client"], served["v1"])
    stored = AvatarStore(served["root"] / "avatars").load(avatar)
    reference = model.engine.encode_reference(stored.references())
    offline = model.engine.generate(stored.sources([stored.loop_index(i) for i in range(75)]),
                                    torch.from_numpy(windows), reference)
    offline = offline.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    info = http.get("/v1/model").json()["model"]["audio"]
    context, lookahead = info["context_frames"], info["lookahead_frames"]
    assert (context, lookahead) == (3, 3)

    got, start = [], 0
    for end in (17, 40, 75):
        first = max(0, start - context)
        final = end == 75
        piece = speech[first * HOP:(end if final else end + lookahead) * HOP]
        response = http.post(f"/v1/avatars/{avatar}/frames", content=api.pcm_wav(piece, 16000),
                             headers={"Content-Type": "audio/wav"},
                             params={"start": start, "context": start - first,
                                     "final": str(final).lower(), "format": "npy"})
        assert response.status_code == 200, response.text
        assert int(response.headers["X-Dinet-Start"]) == start
        crops = np.load(io.BytesIO(response.content))
        assert len(crops) == end - start, (start, end, len(crops))
        got.append(crops)
        start = end
    np.testing.assert_allclose(np.concatenate(got), offline, atol=2e-2)


def test_sessions_need_a_fresh_token_for_their_avatar(served, avatar):
    path = session(served, avatar)["stream_path"]
    status, error = refusal(served, path)
    assert (status, error["field"]) == (401, "session_token")
    assert "missing session token" in error["message"]
    # the API token is no session token, in a header or a URL
    status, error = refusal(served, path, headers={"Authorization": f"Bearer {SERVE_TOKEN}"})
    assert status == 401
    status, error = refusal(served, f"{path}?token={SERVE_TOKEN}")
    assert status == 401 and error["message"] == "invalid session token"
    tokens = SessionTokens(SERVE_TOKEN, 60.0)
    expired, _ = tokens.mint(avatar, now=time.time() - 61)
    status, error = refusal(served, path, [SUBPROTOCOL, expired])
    assert status == 401 and "expired" in error["message"]
    other = "0" * 32
    token = session(served, avatar)["session_token"]
    status, error = refusal(served, path.replace(avatar, other), [SUBPROTOCOL, token])
    assert status == 401 and "another avatar" in error["message"]
    with open_stream(served, avatar, token) as socket:  # once ...
        assert json.loads(socket.recv(timeout=30))["type"] == "ready"
    status, error = refusal(served, path, [SUBPROTOCOL, token])  # ... only
    assert status == 401 and "already used" in error["message"]
    status, error = refusal(served, path.replace("/stream", "/other"))
    assert status == 404
    unknown = httpx.post(f"{served['url']}/v1/avatars/{other}/sessions", headers=auth())
    assert unknown.status_code == 404
    assert httpx.post(f"{served['url']}/v1/avatars/{avatar}/sessions").status_code == 401


def test_the_session_limit_is_refused_by_name(served, avatar):
    sockets = [open_stream(served, avatar) for _ in range(3)]
    try:
        for socket in sockets:
            assert json.loads(socket.recv(timeout=30))["type"] == "ready"
        info = session(served, avatar)
        status, error = refusal(served, info["stream_path"], [SUBPROTOCOL,
                                                              info["session_token"]])
        assert (status, error["field"]) == (503, "stream.max_sessions")
    finally:
        for socket in sockets:
            socket.close()
    deadline = time.monotonic() + 10
    while True:  # the server counts a session closed once its handler returns
        try:
            with open_stream(served, avatar) as socket:
                assert json.loads(socket.recv(timeout=30))["type"] == "ready"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "closed sessions still count"
            time.sleep(0.2)


def read_until_end(socket, ack: bool) -> tuple[list[int], list[dict]]:
    frames, events = [], []
    while True:
        message = socket.recv(timeout=60)
        if isinstance(message, bytes):
            index = FRAME_HEADER.unpack_from(message)[0]
            frames.append(index)
            if ack:
                socket.send(json.dumps({"type": "ack", "index": index}))
            continue
        events.append(json.loads(message))
        if events[-1]["type"] in ("end", "error"):
            return frames, events


def test_a_reader_that_never_acks_gets_the_documented_policy(served, avatar):
    """drop: of 4 s of audio sent at once, the freshest 20 frames (the unacknowledged limit)
    come, the older ones are dropped uncomputed and the client is told; pause: computing
    waits for acks, then every frame comes."""
    data = pcm(speech_like(4.0, seed=5))  # 100 frames, sent at once
    with open_stream(served, avatar) as socket:
        assert json.loads(socket.recv(timeout=30))["max_unacked_frames"] == 20
        socket.send(data)
        socket.send(json.dumps({"type": "close"}))  # what has no credit then is dropped
        frames, events = read_until_end(socket, ack=False)
    dropped = [e for e in events if e["type"] == "dropped"]
    assert len(frames) == 20 and frames == list(range(frames[0], frames[0] + 20))
    assert frames[0] >= 60, frames  # the freshest: a backlog keeps at most 20 frames
    assert sum(e["count"] for e in dropped) == 80 == events[-1]["dropped"]
    assert dropped[0]["from"] == 0 and "max_unacked_frames" in dropped[0]["reason"]
    assert events[-1]["frames"] == 100

    with open_stream(served, avatar) as socket:
        socket.recv(timeout=30)
        socket.send(json.dumps({"type": "start", "slow_reader": "pause"}))
        socket.send(data)
        socket.send(json.dumps({"type": "end"}))
        first = [FRAME_HEADER.unpack_from(socket.recv(timeout=60))[0] for _ in range(20)]
        assert json.loads(socket.recv(timeout=60))["type"] == "paused"
        socket.send(json.dumps({"type": "ack", "index": 19}))
        frames, events = read_until_end(socket, ack=True)
    assert first + frames == list(range(100))
    assert events[0]["type"] == "resumed" and events[-1]["dropped"] == 0


def test_concurrent_sessions_share_forwards(served, avatar):
    """Three sessions fed in real time: the replica's batches hold windows of several."""
    before = httpx.get(f"{served['url']}/v1/model", headers=auth()).json()["batch_sizes"]
    data = pcm(speech_like(3.0, seed=6))
    results: list[list[int]] = []

    def run() -> None:
        def paced():
            for piece in chunks(data, [HOP * 2] * 37):
                time.sleep(0.08)
                yield piece

        with LipSyncClient(served["url"], SERVE_TOKEN) as client:
            # pause (the client's default): on a loaded machine drop may rightly skip a
            # frame that waited past stream.max_lag_s; this test counts forwards, not drops
            results.append([f.index for f in client.stream(avatar, paced())])

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [len(r) for r in results] == [75, 75, 75]
    after = httpx.get(f"{served['url']}/v1/model", headers=auth()).json()["batch_sizes"]
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert any(int(size) > 1 and n > 0 for size, n in grown.items()), grown


def test_a_declared_sample_rate_is_resampled_and_still_counts_every_frame(served, avatar):
    """A browser records at 48 kHz: the session resamples, chunk by chunk, and the frame count
    is that of the speech."""
    from dinet_platform.media.io import resample_audio

    speech = resample_audio(speech_like(2.0, seed=8), 16000, 48000)
    pieces = [speech[at:at + 1920] for at in range(0, len(speech), 1920)]
    with LipSyncClient(served["url"], SERVE_TOKEN) as client:
        frames = list(client.stream(avatar, pieces, sample_rate=48000, output="crops"))
    assert [f.index for f in frames] == list(range(50))
    assert frames[0].image.shape == (104, 80, 3)


def test_bad_messages_end_the_session_with_a_reason(served, avatar):
    for message, field in ((b"\x00" * 3, "audio"), ('{"type": "jump"}', "type"),
                           ('{"type": "start", "format": "gif"}', "format"),
                           ('{"type": "start", "sample_rate": 3}', "sample_rate"),
                           ("not json", "message")):
        with open_stream(served, avatar) as socket:
            socket.recv(timeout=30)
            socket.send(message)
            error = json.loads(socket.recv(timeout=30))
            assert (error["type"], error["field"]) == ("error", field), error
    with LipSyncClient(served["url"], SERVE_TOKEN) as client, pytest.raises(
            LipSyncError, match="format"):
        list(client.stream(avatar, [b"\x00\x00" * 640], format="gif"))

