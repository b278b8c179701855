"""The HTTP API under fuzzing and a hostile corpus, with a live caller beside it.

    python bench/fuzz.py [--out FILE.json] [--examples 200] [--width 0.125] [--quick]

A local Serve app (``bench/stand_in.py``, shipped serving settings). Meanwhile one live
caller sends 5-frame windows in a closed loop and counts its answers, so the report says
whether live traffic kept flowing. Then:

- schemathesis (``st run``, what ``make test`` runs with 15) generates ``--examples`` requests
  per operation from the OpenAPI document with the token, and a tenth of that without;
  every request and answer is read back from its HAR file;
- the hostile corpus: the serving-hardening issue's repros (4K and timestamp-expansion
  videos, a 16000x16000 PNG, an HLS playlist to a server file, a chunked body past the
  limit, numbers past 4,300 digits, JSON nested 50k deep, a 300-character file name, a 3-hour
  FLAC, unauthenticated admin calls), each sent as an attacker would.

Reported: requests, answers by status code (4xx, 5xx: the target is 0), failed checks, the
ingress's and model replica's peak RSS, and the live caller's answers and latency.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinet_platform.serving.api import pcm_wav

from bench.common import markdown_table, median, percentile, write_json
from bench.stand_in import AUTH, TOKEN, StandIn, stand_in_serve
from tests.media_bombs import PeakRss, flac, playlist, png_bomb, solid_video
from tests.support import replica_pid, schemathesis_run


class LiveCaller(threading.Thread):
    """One closed-loop live caller until stopped: its answers by status, and latencies."""

    def __init__(self, app: StandIn):
        super().__init__(daemon=True)
        self.app, self.stop = app, threading.Event()
        self.codes: collections.Counter = collections.Counter()
        self.latencies: list[float] = []

    def run(self) -> None:
        body = {"features": np.zeros((5, 29)).tolist(), "format": "npy"}
        with httpx.Client(base_url=self.app.url, headers=AUTH, timeout=120) as client:
            while not self.stop.is_set():
                began = time.perf_counter()
                try:
                    code = client.post(f"/v1/avatars/{self.app.avatar}/frames",
                                       json=body).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                self.codes[code] += 1
                self.latencies.append(time.perf_counter() - began)


def hostile_corpus(app: StandIn, folder: Path, fuzz_avatar: str) -> list[dict]:
    """The issue's repros, each sent once: name, status."""
    url = app.url
    uhd = solid_video(folder / "uhd.mp4", 3840, 2160, 4).read_bytes()
    spread = solid_video(folder / "spread.mkv", 160, 160, 2, fmt="matroska",
                         seconds_apart=2000.0).read_bytes()
    hls = playlist(folder / "x.m3u8", app.video).read_bytes()
    long_flac = flac(folder / "long.flac", 3 * 3600.0, claim_samples=None).read_bytes()
    frames_url = f"{url}/v1/avatars/{fuzz_avatar}/frames"
    json_type = {**AUTH, "Content-Type": "application/json"}

    def chunked(size: int):
        for _ in range(size // 65536):
            yield b"\0" * 65536

    boundary = "b"
    multipart = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
            f"filename=\"a.wav\"\r\n\r\n").encode()
    cases = {
        "4K mp4 avatar": lambda c: c.post(f"{url}/v1/avatars", headers=AUTH,
                                          files={"video": ("a.mp4", uhd)}),
        "frames 2000 s apart": lambda c: c.post(f"{url}/v1/avatars", headers=AUTH,
                                                files={"video": ("a.mkv", spread)}),
        "16000x16000 PNG": lambda c: c.post(f"{url}/v1/avatars", headers=AUTH, files=[
            ("frames", ("b.png", png_bomb(), "image/png"))]),
        "HLS playlist": lambda c: c.post(f"{url}/v1/avatars", headers=AUTH,
                                         files={"video": ("x.m3u8", hls)}),
        "4K dub video": lambda c: c.post(f"{url}/v1/dub", headers=AUTH, files={
            "audio": ("a.wav", _silence()), "video": ("a.mp4", uhd)}),
        "3 h FLAC dub": lambda c: c.post(f"{url}/v1/dub", headers=AUTH, data={
            "avatar_id": fuzz_avatar}, files={"audio": ("a.flac", long_flac)}),
        "chunked 100 MiB multipart": lambda c: c.post(
            f"{url}/v1/dub", headers=multipart,
            content=(part for chunk in ([head], chunked(100 << 20)) for part in chunk)),
        "4301-digit number": lambda c: c.post(frames_url, headers=json_type,
                                              content=b'{"start": ' + b"9" * 4301 + b"}"),
        "JSON nested 50k deep": lambda c: c.post(
            frames_url, headers=json_type,
            content=b'{"features": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        "300-char file suffix": lambda c: c.post(f"{url}/v1/dub", headers=AUTH, data={
            "avatar_id": fuzz_avatar}, files={"audio": ("x." + "a" * 300, b"RIFF")}),
        "reload without token": lambda c: c.post(f"{url}/v1/admin/reload"),
        "model info without token": lambda c: c.get(f"{url}/v1/model"),
    }
    wav_60mib = pcm_wav(np.zeros((60 << 20) // 2 - 22, np.float32), 16000)
    cases["60 MiB WAV window"] = lambda c: c.post(
        frames_url, headers={**AUTH, "Content-Type": "audio/wav"}, content=wav_60mib)
    rows = []
    with httpx.Client(timeout=300) as client:
        for name, send in cases.items():
            probe = HealthProbe(url)
            probe.start()
            try:
                status = send(client).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            finally:
                probe.stop.set()
                probe.join()
            rows.append({"case": name, "status": status,
                         "healthz_max_ms": round(1000 * max(probe.latencies, default=0), 1)})
            print(f"  {name}: {status}", flush=True)
    return rows


class HealthProbe(threading.Thread):
    """``GET /healthz`` every 20 ms while a case runs: its slowest answer says whether the
    case held up the ingress's event loop."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.latencies = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.wait(0.02):
                began = time.perf_counter()
                client.get("/healthz")
                self.latencies.append(time.perf_counter() - began)


def statuses(har: Path) -> collections.Counter:
    entries = json.loads(har.read_text())["log"]["entries"] if har.is_file() else []
    return collections.Counter(entry["response"]["status"] for entry in entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--examples", type=int, default=200,
                        help="generated requests per operation with the token")
    parser.add_argument("--min-requests", type=int, default=2000,
                        help="generated requests with the token, at least (more seeds)")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.min_requests = 10, 0

    folder = Path(tempfile.mkdtemp(prefix="dinet-bench-fuzz-"))
    with stand_in_serve(width=args.width) as app:
        measuring = ExitStack()  # the replicas' peak RSS from here to measuring.close()
        peaks = {name: measuring.enter_context(PeakRss(replica_pid(name)))
                 for name in ("LipSyncIngress", "LipSyncModel")}
        video = app.video
        own = httpx.post(f"{app.url}/v1/avatars", headers=AUTH, timeout=300, files={
            "video": ("v.mp4", video.read_bytes()),
            "landmarks": ("l.csv", video.with_suffix(".csv").read_bytes())}).json()
        job = httpx.post(f"{app.url}/v1/dub", headers=AUTH, timeout=300,
                         data={"avatar_id": own["avatar_id"]},
                         files={"audio": ("a.wav", _silence())}).json()
        ids = {"avatar_id": own["avatar_id"], "job_id": job["job_id"]}
        live = LiveCaller(app)
        live.start()
        codes: collections.Counter = collections.Counter()
        failed_checks = []
        def fuzz(token: str | None, examples: int, methods: str, seed: int) -> None:
            label = f"{'with' if token else 'without'}-token-{methods}-seed{seed}"
            print(f"schemathesis, {examples} examples per operation, {label} ...", flush=True)
            run = schemathesis_run(app.url, folder / label, examples, token, ids=ids,
                                   methods=methods, seed=seed)
            codes.update(statuses(folder / label / "requests.har"))
            if run.returncode != 0:
                failed_checks.append(run.stdout[-4000:])

        # operations without parameters have few distinct requests: more seeds until the
        # generated requests reach --min-requests
        seed = 0
        while seed == 0 or (sum(codes.values()) < args.min_requests and seed < 20):
            fuzz(TOKEN, args.examples, "no-delete", seed)
            seed += 1
        fuzz(TOKEN, args.examples, "delete", 0)
        fuzz(None, max(1, args.examples // 10), "all", 0)
        generated = sum(codes.values())
        print("hostile corpus ...", flush=True)
        corpus = hostile_corpus(app, folder, app.avatar)
        for row in corpus:
            codes[row["status"]] += 1
        live.stop.set()
        live.join(timeout=120)
        measuring.close()

    requests = sum(codes.values())
    server_errors = sum(n for code, n in codes.items() if isinstance(code, int) and code >= 500)
    summary = {
        "requests": requests,
        "generated_by_schemathesis": generated,
        "by_status": {str(code): n for code, n in sorted(codes.items(), key=str)},
        "4xx": sum(n for code, n in codes.items() if isinstance(code, int) and
                   400 <= code < 500),
        "5xx": server_errors,
        "failed_schemathesis_runs": len(failed_checks),
        "ingress_peak_rss_mb": peaks["LipSyncIngress"].peak / 2**20,
        "model_peak_rss_mb": peaks["LipSyncModel"].peak / 2**20,
        "live_answers": {str(code): n for code, n in live.codes.items()},
        "live_ms_p50": 1000 * median(live.latencies) if live.latencies else None,
        "live_ms_p99": 1000 * percentile(live.latencies, 99) if live.latencies else None,
    }
    print(markdown_table([summary], ["requests", "generated_by_schemathesis", "4xx", "5xx",
                                     "failed_schemathesis_runs", "ingress_peak_rss_mb",
                                     "model_peak_rss_mb", "live_ms_p50", "live_ms_p99"]))
    print("answers by status:", summary["by_status"])
    print("live caller's answers:", summary["live_answers"])
    print(markdown_table(corpus, ["case", "status", "healthz_max_ms"]))
    for text in failed_checks:
        print(text)
    write_json(args.out, {"summary": summary, "corpus": corpus, "args": vars(args)})


def _silence() -> bytes:
    return pcm_wav(np.zeros(8000), 16000)


if __name__ == "__main__":
    main()
