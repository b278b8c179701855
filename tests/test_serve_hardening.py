"""The Serve app against careless and hostile clients: every refusal a 4xx naming its field,
bounded memory, nothing left on disk, dub jobs that neither block live windows nor a hot
swap. Real HTTP against the session's Serve app (mounted below a prefix), plus the job store
and batching rules in process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from dinet_platform.registry.versions import move_alias
from dinet_platform.serving import api
from dinet_platform.serving.dub_jobs import JobStore
from dinet_platform.serving.guard import app_path

from tests.media_bombs import PeakRss, playlist, png_bomb, solid_video
from tests.support import check, features, frames_npy, replica_pid


def jobs_root(served) -> Path:
    return served["root"] / "dub-jobs"


def job_dirs(served) -> set[str]:
    root = jobs_root(served)
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def speech_wav(seconds: float, rate: int = 16000) -> bytes:
    """A tone switched on and off 3 times a second (low rates keep long speech small)."""
    t = np.arange(int(seconds * rate)) / rate
    return api.pcm_wav(0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0),
                       rate)


def wait_state(http, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/v1/dub/{job_id}")
        if status.status_code == 404 or status.json()["state"] in states:
            return {"state": "gone"} if status.status_code == 404 else status.json()
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} never reached {states}")


@pytest.mark.serve
def test_auth_is_denied_by_default_below_a_route_prefix(served):
    """Finding 4: the app is mounted at /dinet; its routes need the token there, and the
    public probes answer without disclosing anything about the model."""
    url = served["url"]
    assert url.endswith("/dinet")
    for method, path in (("GET", "/v1/model"), ("POST", "/v1/admin/reload"),
                         ("GET", "/v1/nonexistent"), ("GET", "/V1/model"), ("GET", "//v1/model"),
                         ("DELETE", "/v1/dub/" + "a" * 32)):
        response = httpx.request(method, url + path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"ready": True}  # nothing else
    assert httpx.get(url + "/openapi.json").status_code == 200


@pytest.mark.serve
def test_readiness_probes_share_cached_model_round_trips(served, http):
    """Finding 8: a burst of /readyz costs the model a handful of ``info`` calls, not one each."""
    before = http.get("/v1/model").json()["info_requests"]

    async def burst():
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as client:
            return await asyncio.gather(*(client.get("/readyz") for _ in range(60)))

    codes = [r.status_code for r in asyncio.run(burst())]
    after = http.get("/v1/model").json()["info_requests"]
    assert codes == [200] * 60
    assert after - before <= 10, (before, after)  # ~1 per 2 s of burst, + the 2 reads here


@pytest.mark.serve
def test_a_chunked_body_past_the_limit_is_cut_off_and_leaves_nothing(served, http, avatar):
    """Finding 3: no Content-Length, 3 MiB against a 1 MiB limit: 413 while it streams, and
    no job directory, spooled file or avatar is kept."""
    boundary = "hardening-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"avatar_id\"\r\n\r\n"
            f"{avatar}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
            f"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(48):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    before = job_dirs(served)
    response = http.post("/v1/dub", content=body(),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    check(response, 413, "body", "limit of 1048576 bytes")
    assert job_dirs(served) == before
    for route in ("/v1/avatars",):
        check(http.post(route, content=body(), headers={"Content-Type": "video/mp4"}),
              413, "body")


@pytest.mark.serve
def test_malformed_input_is_a_4xx_naming_the_field_never_a_500(served, http, avatar):
    """Finding 11: numbers past Python's 4,300-digit limit, JSON nested 50k deep, a 300
    character file name, and an oversized start; every answer carries a request id."""
    url = f"/v1/avatars/{avatar}/frames"
    json_type = {"Content-Type": "application/json"}
    huge = b'{"features": [[' + b"9" * 5000 + b"]]}"
    check(http.post(url, content=huge, headers=json_type), 422, "body", "not valid JSON")
    deep = b'{"features": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    check(http.post(url, content=deep, headers=json_type), 422, "body")
    infinite = b'{"features": [[' + b", ".join([b"Infinity"] * 29) + b"]]}"
    check(http.post(url, content=infinite, headers=json_type), 422, "features", "infinite")
    check(http.post(url, content=b'{"features": [[' + b"1" * 400 + b"]]}", headers=json_type),
          422, "features")
    check(http.post(url, json={"features": [[0] * 29], "start": 10**30}), 422, "start")
    # finding 7: a WAV's frame count comes from its header, before anything is decoded
    too_long = speech_wav(60 * 640 / 16000)
    check(http.post(url, content=too_long, headers={"Content-Type": "audio/wav"}), 413,
          "audio_wav", "more than 48 frames")
    long_name = "x." + "a" * 300
    response = http.post("/v1/dub", data={"avatar_id": avatar},
                         files={"audio": (long_name, speech_wav(0.4), "audio/wav")})
    assert response.status_code == 202, response.text
    assert wait_state(http, response.json()["job_id"], {"done", "failed"})["state"] == "done"
    assert len(response.headers.get_list("x-request-id")) == 1  # what a 500's log names
    assert http.get("/v1/model", headers={"X-Request-Id": "trace-42"}).headers[
        "x-request-id"] == "trace-42"


@pytest.mark.serve
def test_a_window_longer_than_the_forward_budget_is_split_and_still_exact(served, http, avatar):
    """Finding 6: 48 frames against a 32-frame forward budget go through in two forwards; the
    frames equal the same window asked for in budget-sized parts."""
    feats = features(48, 7)
    whole = frames_npy(http, avatar, feats, start=3)
    assert whole.status_code == 200, whole.text
    first = frames_npy(http, avatar, feats[:32], start=3)
    second = frames_npy(http, avatar, feats[32:], start=35)
    got = np.load(io.BytesIO(whole.content))
    parts = [np.load(io.BytesIO(r.content)) for r in (first, second)]
    # the audio windows at the cut see each other's features only in the whole request; int8
    # kernels may round a batch of another size differently in the last bits
    np.testing.assert_allclose(got[1:31], parts[0][1:31], atol=1e-3)
    np.testing.assert_allclose(got[33:47], parts[1][1:15], atol=1e-3)
    assert http.get("/v1/model").json()["max_forward_frames"] <= 32


@pytest.mark.serve
def test_dub_jobs_are_bounded_cancellable_and_leave_live_windows_and_swaps_free(
        served, http, avatar):
    """Finding 1 and 9: one dub renders per replica and one waits; a third is refused (503);
    while the first renders, live windows are answered and a hot swap completes without
    waiting for it; cancelling removes both jobs' files."""
    client, v1, v2 = served["client"], served["v1"], served["v2"]
    long_speech = {"audio": ("long.wav", speech_wav(50.0, 8000), "audio/wav")}
    first = http.post("/v1/dub", data={"avatar_id": avatar}, files=long_speech)
    second = http.post("/v1/dub", data={"avatar_id": avatar}, files=long_speech)
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    third = http.post("/v1/dub", data={"avatar_id": avatar}, files=long_speech)
    check(third, 503, "dub", "retry later")
    assert third.headers["Retry-After"] == "1"
    running = wait_state(http, first.json()["job_id"], {"running", "done", "failed"})
    assert running["state"] == "running", running
    try:
        live = frames_npy(http, avatar, features(5, 3))
        assert live.status_code == 200, live.text
        move_alias(client, "dinet", "production", v2)
        swapped = http.post("/v1/admin/reload")
        assert swapped.status_code == 200 and swapped.json()["changed"] is True
        assert http.get(f"/v1/dub/{first.json()['job_id']}").json()["state"] == "running"
    finally:
        move_alias(client, "dinet", "production", v1)
        http.post("/v1/admin/reload")
    for job in (second, first):
        cancelled = http.delete(f"/v1/dub/{job.json()['job_id']}")
        assert cancelled.json()["state"] == "cancelled", cancelled.text
    for job in (first, second):
        assert wait_state(http, job.json()["job_id"], set(), timeout=60) == {"state": "gone"}
    assert not {first.json()["job_id"], second.json()["job_id"]} & job_dirs(served)


@pytest.mark.serve
def test_quotas_refuse_new_avatars_and_over_long_speech(served, http, avatar, synth_dir):
    """Finding 9: at ``max_avatars`` stored, a new one is refused (429) until some go; speech
    longer than ``max_dub_audio_s`` is refused from its header (413)."""
    store_root = served["root"] / "avatars"
    quota = served["settings"].serving.max_avatars
    stored = sum(1 for p in store_root.iterdir() if (p / "avatar.json").is_file())
    fillers = [store_root / f"{i:032x}" for i in range(quota - stored)]
    try:
        for folder in fillers:
            folder.mkdir()
            (folder / "avatar.json").write_text("{}")
        video = sorted(synth_dir.glob("*.mp4"))[0]
        check(http.post("/v1/avatars", files={"video": ("v.mp4", video.read_bytes())}),
              429, "avatars", "quota")
    finally:
        for folder in fillers:
            (folder / "avatar.json").unlink()
            folder.rmdir()
    limit = served["settings"].serving.max_dub_audio_s
    before = job_dirs(served)
    too_long = http.post("/v1/dub", data={"avatar_id": avatar},
                         files={"audio": ("long.wav", speech_wav(limit + 5, 4000), "audio/wav")})
    check(too_long, 413, "audio")
    assert job_dirs(served) == before


@pytest.mark.serve
def test_media_bombs_are_refused_from_their_headers_on_every_path(served, http, avatar,
                                                                  synth_dir, tmp_path):
    """Findings 2 and 5: a 4K video, two frames 2,000 s apart, a 16000x16000 PNG, the same
    4K video as a dub's face, and an HLS playlist pointing at a file on the server: each is
    refused naming the limit (or the format), the ingress's peak RSS barely moves, and no
    avatar or job is left behind."""
    uhd = solid_video(tmp_path / "uhd.mp4", 3840, 2160, 4).read_bytes()
    spread = solid_video(tmp_path / "spread.mkv", 160, 160, 2, fmt="matroska",
                         seconds_apart=2000.0).read_bytes()
    server_file = sorted(synth_dir.glob("*.mp4"))[0]
    hls = playlist(tmp_path / "x.m3u8", server_file).read_bytes()
    avatars = served["root"] / "avatars"
    stored, jobs = sorted(avatars.iterdir()), job_dirs(served)
    speech = ("speech.wav", speech_wav(1.0), "audio/wav")
    with PeakRss(replica_pid("LipSyncIngress")) as ingress:
        check(http.post("/v1/avatars", files={"video": ("a.mp4", uhd)}), 413, "video",
              "over the limit of 2.1 MP")
        check(http.post("/v1/avatars", content=uhd, headers={"Content-Type": "video/mp4"}),
              413, "video", "over the limit of 2.1 MP")
        check(http.post("/v1/avatars", files={"video": ("a.mkv", spread)}), 413, "video",
              "frames")
        check(http.post("/v1/avatars", files=[("frames", ("b.png", png_bomb(), "image/png"))]),
              413, "frames", "over the limit of 2.1 MP")
        check(http.post("/v1/dub", files={"audio": speech, "video": ("a.mp4", uhd)}), 413,
              "video", "over the limit of 2.1 MP")
        check(http.post("/v1/avatars", files={"video": ("x.m3u8", hls)}), 422, "video")
    assert ingress.growth < 100 * 2**20, ingress.growth
    assert sorted(avatars.iterdir()) == stored and job_dirs(served) == jobs


# ------------------------------------------------------------------------------ in process


@pytest.mark.unit
def test_app_path_strips_only_the_mount_prefix():
    assert app_path({"path": "/dinet/v1/model", "root_path": "/dinet"}) == "/v1/model"
    assert app_path({"path": "/dinet", "root_path": "/dinet"}) == "/"
    assert app_path({"path": "/dinetx/healthz", "root_path": "/dinet"}) == "/dinetx/healthz"
    assert app_path({"path": "/healthz", "root_path": ""}) == "/healthz"


@pytest.mark.unit
def test_jobs_whose_runner_died_fail_and_old_ones_are_swept(tmp_path):
    """Finding 9: a job whose replica (or submitting ingress) died reads as failed with the
    reason; finished jobs past their TTL, abandoned uploads and a killed writer's temporary
    files are removed."""
    jobs = JobStore(tmp_path / "jobs", stale_after_s=30)
    orphan, _ = jobs.create()
    jobs.submit(orphan, {"audio": "audio"})
    status = json.loads((tmp_path / "jobs" / orphan / "status.json").read_text())
    status["heartbeat"] = time.time() - 31
    (tmp_path / "jobs" / orphan / "status.json").write_text(json.dumps(status))
    failed = jobs.status(orphan)
    assert failed["state"] == "failed" and "no heartbeat" in failed["error"]

    done, folder = jobs.create()
    jobs.submit(done, {"audio": "audio"})
    jobs.set_status(done, "done")
    (folder / ".tmp-out.1234abcd.mp4").write_bytes(b"partial")
    _, upload_folder = jobs.create()  # its request died before submit
    report = jobs.sweep(ttl_s=3600)
    assert report.temp_files == 1 and not (folder / ".tmp-out.1234abcd.mp4").exists()
    assert upload_folder.exists()  # within the upload grace period
    old = time.time() - 7200
    os.utime(upload_folder, (old, old))
    status = json.loads((folder / "status.json").read_text())
    status["updated"] = old
    (folder / "status.json").write_text(json.dumps(status))
    report = jobs.sweep(ttl_s=3600)
    assert report.expired == 1 and report.abandoned_uploads == 1
    assert jobs.jobs() == [orphan] and not upload_folder.exists()  # failed just now: kept
