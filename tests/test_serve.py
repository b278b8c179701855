"""Ray Serve: real HTTP against a real local Serve app serving a tiny model registered in a
real MLflow (SQLite) registry: batching, parity with the offline engine, hot swap, bad input,
auth. One Serve app per module (it takes a while to start on 2 cores)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from dinet_platform.config.loader import ConfigError
from dinet_platform.geometry import crop_geometry
from dinet_platform.media.audio_features import audio_windows
from dinet_platform.media.io import probe_video
from dinet_platform.registry.versions import move_alias
from dinet_platform.serving import api
from dinet_platform.serving.avatars import AvatarNotFound, AvatarStore
from dinet_platform.serving.client import LipSyncClient, LipSyncError
from dinet_platform.serving.model import load_served_model
from dinet_platform.serving.settings import ServeAppConfig, validate_args

from tests.support import (
    MOUTH,
    auth,
    check,
    features,
    frames_npy,
    upload,
)
from tests.support import (
    SERVE_TOKEN as TOKEN,
)


@pytest.mark.serve
def test_avatar_from_five_frames_and_landmarks(served, http, synth_dir):
    video = sorted(synth_dir.glob("*.mp4"))[0]
    decoded = probe_video(video).frames
    picks = [0, 8, 16, 24, 32]
    rows = video.with_suffix(".csv").read_text().splitlines()
    csv = "\n".join([rows[0]] + [rows[1 + i] for i in picks]).encode()

    def png(frame: np.ndarray) -> bytes:
        return cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()

    files = [("frames", (f"f{i}.png", png(decoded[i]), "image/png")) for i in picks]
    response = http.post("/v1/avatars", files=[*files, ("landmarks", ("l.csv", csv, "text/csv"))])
    assert response.status_code == 201, response.text
    avatar_id = response.json()["avatar_id"]
    assert response.json()["frames"] == len(picks)
    stored = AvatarStore(served["root"] / "avatars").load(avatar_id)
    for index, pick in enumerate(picks):  # kept losslessly, each frame its own reference
        np.testing.assert_array_equal(stored.frames[index], decoded[pick])
    assert sorted(stored.reference_indices.tolist()) == list(range(len(picks)))
    generated = frames_npy(http, avatar_id, features(3, 1), start=4)
    assert generated.status_code == 200, generated.text
    assert np.load(io.BytesIO(generated.content)).shape == (3, 104, 80, 3)

    check(http.post("/v1/avatars", files=[*files[:2], ("frames", ("x.png", b"nope", "image/png"))]),
          422, "frames", "frames part 2: not a PNG or JPEG image")
    check(http.post("/v1/avatars", files=[("video", (video.name, video.read_bytes(), "video/mp4")),
                                          *files]), 422, "video", "exactly one")


@pytest.mark.serve
def test_health_readiness_and_model_info(served, http):
    assert httpx.get(served["url"] + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(served["url"] + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = http.get("/v1/model").json()
    assert info["model"]["version"] == served["v1"]
    assert info["model"]["alias"] == "production"
    assert "static_int8" in info["model"]["mode"]
    assert httpx.get(served["url"] + "/docs").status_code == 200


@pytest.mark.serve
def test_http_goes_through_haproxy_straight_to_the_ingress_replica(served, http):
    """The embedded Ray runs Serve in its throughput mode: HAProxy in front, no Python proxy on
    the request path (the ingress replica listens itself), and the ingress calls the model over
    gRPC, although the test process that deployed the app is not in that mode itself."""
    import ray
    from ray.util.state import list_actors

    # this session's Ray by its address: other Rays on the machine must not confuse the lookup
    alive = {actor.class_name for actor in list_actors(
        address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
        limit=1000)}
    assert "HAProxyManager" in alive, alive
    info = http.get("/v1/model")
    assert info.status_code == 200
    assert info.json()["transport"] == "grpc"


@pytest.mark.unit
def test_serve_mode_is_left_to_an_environment_that_chooses(monkeypatch):
    from dinet_platform.ray_runtime import serve_throughput_env

    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    env = serve_throughput_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = [value for key, value in env.items() if key.endswith("_PORT")]
    assert int(env["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) > 4 << 20
    assert len(set(ports)) == len(ports) == 4  # free ports, not Ray's fixed 8404/9101/8500/9500
    assert not any(value.startswith("/tmp/haproxy-serve") for value in env.values())
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert serve_throughput_env() == {}


@pytest.mark.serve
def test_frames_match_the_offline_engine(served, http, avatar):
    feats = features(6, 0)
    response = frames_npy(http, avatar, feats, start=2)
    assert response.status_code == 200, response.text
    assert response.headers["X-Dinet-Model-Version"] == str(served["v1"])
    served_frames = np.load(io.BytesIO(response.content))
    assert served_frames.shape == (6, 104, 80, 3)

    # The same inputs through the same loader in-process.
    model = load_served_model(served["settings"].serving, served["client"], served["v1"])
    stored = AvatarStore(served["root"] / "avatars").load(avatar)
    features_ref = model.engine.encode_reference(stored.references())
    audio = torch.from_numpy(audio_windows(feats, 5))
    offline = model.engine.generate(stored.sources(list(range(2, 8))), audio, features_ref)
    offline = offline.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(served_frames, offline, atol=2e-2)
    assert np.abs(served_frames - offline).mean() < 1e-3

    pasted = http.post(f"/v1/avatars/{avatar}/frames", json={
        "features": feats.tolist(), "start": 2, "format": "npy", "output": "frames"})
    assert pasted.status_code == 200, pasted.text
    full = np.load(io.BytesIO(pasted.content))
    assert full.shape == (6, 160, 160, 3) and full.dtype == np.uint8
    assert (full[0] != stored.frames[2]).any()
    assert (full[0][:20] == stored.frames[2][:20]).all()  # far from the mouth: untouched

    # 48 float32 crops are 4.8 MB: over gRPC's default 4 MB message limit between replicas
    many = frames_npy(http, avatar, features(48, 1), start=0)
    assert many.status_code == 200, many.text
    assert np.load(io.BytesIO(many.content)).shape == (48, 104, 80, 3)

    png = http.post(f"/v1/avatars/{avatar}/frames", json={"features": feats.tolist(),
                                                          "start": 2})
    assert png.status_code == 200
    body = png.json()
    assert body["count"] == 6 and len(body["frames"]) == 6
    assert base64.b64decode(body["frames"][0])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.serve
def test_concurrent_callers_are_batched(served, avatar):
    async def call(client, i):
        response = await client.post(f"/v1/avatars/{avatar}/frames",
                                     json={"features": features(2, i).tolist(),
                                           "format": "npy"})
        assert response.status_code == 200, response.text
        return int(response.headers["X-Dinet-Batch-Size"])

    async def main():
        async with httpx.AsyncClient(base_url=served["url"], headers=auth(),
                                     timeout=120) as client:
            return await asyncio.gather(*(call(client, i) for i in range(12)))

    sizes = asyncio.run(main())
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 4
    before = stats = httpx.get(served["url"] + "/v1/model", headers=auth()).json()
    assert any(int(size) > 1 for size in stats["batch_sizes"]), stats["batch_sizes"]
    asyncio.run(main())
    after = httpx.get(served["url"] + "/v1/model", headers=auth()).json()
    assert after["frames_generated"] - before["frames_generated"] == 12 * 2
    assert after["compute_seconds"] > before["compute_seconds"]
    # serving.parallel_forwards 2: a full queue is shared by two forwards computing at once
    assert after["most_forwards_at_once"] == 2


@pytest.mark.serve
def test_overload_is_503_with_retry_after_never_an_unbounded_queue(served, avatar):
    """16 queued + 8 in flight is all the model deployment accepts; the rest is refused."""
    payload = {"features": features(16, 1).tolist(), "format": "npy"}

    async def main():
        async with httpx.AsyncClient(base_url=served["url"], headers=auth(), timeout=300,
                                     limits=httpx.Limits(max_connections=80)) as client:
            return await asyncio.gather(*(
                client.post(f"/v1/avatars/{avatar}/frames", json=payload) for _ in range(48)))

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert refused and codes.count(200) >= 8, codes
    assert refused[0].headers["Retry-After"] == "1"
    assert refused[0].json()["error"]["field"] == "server"


@pytest.mark.serve
def test_auth_is_required_on_every_v1_route(served, avatar):
    routes = [("GET", "/v1/model"), ("POST", "/v1/admin/reload"), ("POST", "/v1/avatars"),
              ("GET", f"/v1/avatars/{avatar}"), ("DELETE", f"/v1/avatars/{avatar}"),
              ("POST", f"/v1/avatars/{avatar}/frames"), ("POST", "/v1/dub"),
              ("GET", "/v1/dub/" + "a" * 32), ("GET", "/v1/dub/" + "a" * 32 + "/video")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = httpx.request(method, served["url"] + path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert TOKEN not in response.text
            assert response.json()["error"]["field"] == "Authorization"
    assert httpx.get(served["url"] + "/healthz").status_code == 200


@pytest.mark.serve
def test_bad_inputs_get_their_status_and_field(served, http, avatar, synth_dir, tmp_path):
    url = f"/v1/avatars/{avatar}/frames"
    check(http.post("/v1/avatars/" + "0" * 32 + "/frames", json={"features": [[0] * 29]}),
          404, "avatar_id")
    for bad in ("..%2F..%2Fetc", "..", "%2E%2E", "a" * 31, "A" * 32):
        response = http.post(f"/v1/avatars/{bad}/frames", json={"features": [[0] * 29]})
        assert response.status_code == 404, (bad, response.text)
    check(http.post(url, json={"features": [[0] * 28]}), 422, "features", "(frames, 29)")
    check(http.post(url, json={"features": [[0] * 29] * 3, "count": 4}), 422, "count",
          "count is 4")
    check(http.post(url, json={"features": [[0] * 29], "final": "yes"}), 422, "final")
    check(http.post(url, json={"features": [[0] * 29] * 2, "context": 2}), 422, "features",
          "no frame is complete")
    check(http.post(url, json={"features": [[0] * 29], "start": -1}), 422, "start")
    check(http.post(url, json={"features": [[0] * 29], "format": "gif"}), 422, "format")
    check(http.post(url, json={"features": [[0] * 29], "output": "gif"}), 422, "output")
    check(http.post(url, json={}), 422, "features")
    check(http.post(url, json={"features": [[0] * 29] * 49}), 413, "features", "limit is 48")
    check(http.post(url, content=b"{nope", headers={"Content-Type": "application/json"}),
          422, "body")
    wav8k = api.pcm_wav(np.zeros(8000), 8000)
    check(http.post(url, content=wav8k, headers={"Content-Type": "audio/wav"}), 422,
          "audio_wav", "sample rate 8000 Hz")
    check(http.post(url, content=b"RIFFjunk", headers={"Content-Type": "audio/wav"}), 422,
          "audio_wav", "not a PCM WAV")
    wav = api.pcm_wav(np.zeros(640 * 3), 16000)
    check(http.post(url + "?count=5", content=wav, headers={"Content-Type": "audio/wav"}), 422,
          "count", "count is 5")
    ok = http.post(url + "?format=npy", content=wav, headers={"Content-Type": "audio/wav"})
    assert ok.status_code == 200 and ok.headers["X-Dinet-Count"] == "3", ok.text
    with LipSyncClient(served["url"], TOKEN) as client:
        assert client.frames(avatar, wav, start=1).shape == (3, 104, 80, 3)
        with pytest.raises(LipSyncError, match="sample rate 8000 Hz") as caught:
            client.frames(avatar, wav8k)
        assert (caught.value.status, caught.value.field) == (422, "audio_wav")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    check(upload(http, junk, None), 422, "video")
    video = sorted(synth_dir.glob("*.mp4"))[0]
    short_csv = tmp_path / "short.csv"
    short_csv.write_text("\n".join(video.with_suffix(".csv").read_text().splitlines()[:10]))
    check(upload(http, video, short_csv), 422, "landmarks", "frames")
    check(http.post("/v1/avatars", files={"landmarks": ("a.csv", b"x", "text/csv")}), 422,
          "video", "required")
    check(http.post("/v1/avatars", json={}), 415, "Content-Type")
    check(http.post(url, content=b"x" * ((1 << 20) + 1),
                    headers={"Content-Type": "application/json"}), 413, "body")


@pytest.mark.unit
def test_avatar_ids_cannot_escape_the_store(tmp_path):
    store = AvatarStore(tmp_path / "avatars")
    (tmp_path / "secret").mkdir()
    for bad in ("../secret", "..", "/etc/passwd", "a" * 32 + "/..", "", "A" * 32):
        with pytest.raises(AvatarNotFound):
            store.path(bad)
        assert not store.exists(bad)


@pytest.mark.unit
def test_bad_settings_are_refused_naming_the_field(monkeypatch):
    with pytest.raises(ConfigError, match=r"serving: max_ongoing_requests \(4\)"):
        validate_args({"serving": {"max_batch_size": 16, "max_ongoing_requests": 4}})
    with pytest.raises(ConfigError, match=r"serving\.precision"):
        validate_args({"serving": {"precision": "int4"}})
    with pytest.raises(ConfigError, match="needs device 'cuda'"):
        validate_args({"serving": {"precision": "bf16"}})
    assert isinstance(validate_args({}), ServeAppConfig)
    from dinet_platform.serving.auth import AuthConfigError, load_token

    with pytest.raises(AuthConfigError, match="no API token"):
        load_token({})
    with pytest.raises(AuthConfigError, match="too short"):
        load_token({"DINET_API_TOKEN": "short"})


@pytest.mark.serve
def test_hot_swap_under_load_fails_no_request(served, http, avatar):
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop():
        with httpx.Client(base_url=served["url"], headers=auth(), timeout=120) as client:
            while not stop.is_set():
                response = frames_npy(client, avatar, features(2, 7))
                results.append((response.status_code,
                                response.headers.get("X-Dinet-Model-Version", "")))

    workers = [threading.Thread(target=loop) for _ in range(3)]
    for worker in workers:
        worker.start()
    def served_by(version: int) -> int:
        return sum(v == str(version) for _, v in results)

    def wait_until(condition, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        wait_until(lambda: served_by(served["v1"]) >= 3)  # the clients are looping
        move_alias(served["client"], "dinet", "production", served["v2"])
        reload = http.post("/v1/admin/reload")
        assert reload.status_code == 200, reload.text
        assert reload.json()["changed"] is True
        wait_until(lambda: served_by(served["v2"]) >= 6)  # and keep going on the new model
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert results and all(status == 200 for status, _ in results), \
        [r for r in results if r[0] != 200][:5]
    versions = [v for _, v in results]
    assert str(served["v1"]) in versions and versions[-1] == str(served["v2"])
    info = http.get("/v1/model").json()
    assert info["model"]["version"] == served["v2"]
    crop = crop_geometry(MOUTH)
    assert info["model"]["mouth_size"] == crop.mouth_size


@pytest.mark.serve
def test_reapplying_the_config_serves_the_moved_alias(served, http):
    """The other swap path: move the alias, deploy the same config again (a fresh
    user_config stamp makes Serve call reconfigure, which re-resolves the alias)."""
    from dinet_platform.serving.deployment import build_app
    from ray import serve

    current = http.get("/v1/model").json()["model"]["version"]
    target = served["v1"] if current == served["v2"] else served["v2"]
    move_alias(served["client"], "dinet", "production", target)
    serve.run(build_app(served["args"]), name="dinet", route_prefix=served["prefix"],
              blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if http.get("/v1/model").json()["model"]["version"] == target:
            break
        time.sleep(0.5)
    assert http.get("/v1/model").json()["model"]["version"] == target

@pytest.mark.unit
def test_dinet_serve_refuses_bad_settings_and_a_missing_token(tmp_path, monkeypatch):
    from dinet_platform.cli import app
    from typer.testing import CliRunner

    config = tmp_path / "serve.yaml"
    config.write_text(Path("configs/serve.yaml").read_text().replace(
        "max_queued_requests: 64", "max_queued_requests: -1"))
    monkeypatch.setenv("DINET_API_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2 and "serving.max_queued_requests" in result.output
    monkeypatch.delenv("DINET_API_TOKEN")
    monkeypatch.delenv("DINET_API_TOKEN_FILE", raising=False)
    result = CliRunner().invoke(app, ["serve", "--config", "configs/serve.yaml"])
    assert result.exit_code == 2 and "no API token" in result.output


@pytest.mark.serve
def test_dub_job_renders_an_mp4_with_the_speech(served, http, avatar, tmp_path):
    import av

    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    files = {"audio": ("speech.wav", api.pcm_wav(speech, 16000), "audio/wav")}
    response = http.post("/v1/dub", data={"avatar_id": avatar}, files=files)
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = http.get(job["status_url"]).json()
        if status["state"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert status["state"] == "done", status.get("error")
    video = http.get(job["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    out = tmp_path / "dub.mp4"
    out.write_bytes(video.content)
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert container.streams.audio, "speech is muxed in"
    assert frames == 25 == status["frames"]

    # The Python client does the same round trip (submit, poll, fetch) in one call.
    from dinet_platform.serving.client import LipSyncClient

    wav = tmp_path / "speech.wav"
    wav.write_bytes(api.pcm_wav(speech, 16000))
    with LipSyncClient(served["url"], TOKEN) as lipsync:
        written = lipsync.dub(wav, tmp_path / "client" / "dub.mp4", avatar_id=avatar)
    with av.open(str(written)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 25 and container.streams.audio

    check = {"avatar_id": "0" * 32}
    assert http.post("/v1/dub", data=check, files=files).status_code == 404
    missing = http.post("/v1/dub", data={"avatar_id": avatar},
                        files={"other": ("x", b"x", "text/plain")})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "audio"
    assert http.get("/v1/dub/" + "f" * 32).status_code == 404
    assert http.get("/v1/dub/../../etc/passwd").status_code == 404


@pytest.mark.serve
def test_served_log_mel_model_states_its_features_and_refuses_deepspeech_ones(
        served, http, avatar):
    """The audio-feature contract on the real app (a DeepSpeech model's side runs in process
    in tests/test_audio_contract.py): /v1/model says what the model takes, and /v1/dub refuses
    features a log-mel model computes itself, before any job exists."""
    audio = http.get("/v1/model").json()["model"]["audio"]
    assert audio["features"] == "logmel" and audio["normalization"].startswith("(log(mel")
    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((25, 29), np.float32))
    files = {"audio": ("speech.wav", api.pcm_wav(speech, 16000), "audio/wav"),
             "audio_features": ("speech.npy", buffer.getvalue(), "application/octet-stream")}
    refused = http.post("/v1/dub", data={"avatar_id": avatar}, files=files)
    check(refused, 422, "audio_features", "was trained on log-mel features (29 bands")
    assert "send only 'audio'" in refused.json()["error"]["message"]


@pytest.mark.serve
def test_a_real_photo_avatar_changes_only_pixels_around_its_mouth(served, http, tmp_path):
    """A real photo (scikit-image's astronaut, Eileen Collins) as a still avatar (made with
    the Python client), driven by real speech (espeak-ng) over HTTP: the mouth changes, and
    every pixel outside the blended mouth box is the photo's, bit for bit. The mouth centre
    and face width are dlib's on this photo (tests/test_landmarks_real.py); the server finds
    the face itself."""
    from dinet_platform.synth.speech import SpeechVoice, speak_fresh

    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    mouth_x, mouth_y, face_width = 222.8, 145.2, 93.0
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    with LipSyncClient(served["url"], TOKEN) as client:
        with pytest.raises(ValueError, match="exactly one of a video or photos"):
            client.create_avatar()
        avatar_id = client.create_avatar(photos=[tmp_path / "astronaut.png"])

    (spoken,) = speak_fresh(["Hello, how are you today?"],
                            SpeechVoice("en-gb-scotland", "m4", 50, 50, 160))
    speech = spoken.samples(16000)[4000:4000 + 8 * 640]
    response = http.post(f"/v1/avatars/{avatar_id}/frames", params={
        "format": "npy", "output": "frames"}, content=api.pcm_wav(speech, 16000),
        headers={"Content-Type": "audio/wav"})
    assert response.status_code == 200, response.text
    frames = np.load(io.BytesIO(response.content))
    assert frames.shape == (8, *photo.shape) and frames.dtype == np.uint8

    changed = (frames != photo[None]).any(axis=(0, 3))
    assert changed.sum() > 100
    # the blend's promise: only pixels under its feathered mouth mask may differ
    avatar = AvatarStore(served["root"] / "avatars").load(avatar_id)
    blended = np.zeros(photo.shape[:2], bool)
    top, left = int(avatar.track.top[0]), int(avatar.track.left[0])
    blended[top:top + avatar.mask.shape[0], left:left + avatar.mask.shape[1]] = avatar.mask > 0
    assert not (changed & ~blended).any()
    np.testing.assert_array_equal(frames[:, ~blended], np.broadcast_to(
        photo[~blended], (len(frames), int((~blended).sum()), 3)))
    # ... and that mask sits on the mouth dlib finds, not beside the head or on the neck
    rows, cols = np.flatnonzero(blended.any(axis=1)), np.flatnonzero(blended.any(axis=0))
    centre_x, centre_y = (cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2
    assert abs(centre_x - mouth_x) < 0.15 * face_width, (centre_x, centre_y)
    assert abs(centre_y - mouth_y) < 0.15 * face_width, (centre_x, centre_y)
    assert cols[-1] - cols[0] < face_width and rows[-1] - rows[0] < face_width
