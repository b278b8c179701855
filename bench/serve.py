"""Serve vs in-process: the frames route under load, and the same frames through the model.

    python bench/serve.py [--out FILE.json] [--concurrency 1 8 32] [--seconds 20]
                          [--rounds 3] [--frames-per-request 1 5] [--width 0.25] [--mouth 64]
                          [--cpus-per-replica 1] [--python-proxy] [--quick]

Starts a local Ray + Serve app (``dinet_platform.serving.deployment``) the way ``dinet serve`` does
(``start_local_ray``: Serve's throughput mode, HAProxy in front of the ingress replicas;
``--python-proxy`` measures Ray's Python HTTP proxy instead) serving a stand-in model (a random
initialisation registered in a private MLflow SQLite registry, int8 calibrated on a synthetic
video's shards), uploads that video as an avatar, then for each window size (frames per
request; a live avatar streams audio in windows, 5 frames = 200 ms at 25 fps):

- ``serve``: an asyncio aiohttp client keeps ``concurrency`` requests in flight on
  ``POST /v1/avatars/{id}/frames`` (``npy`` output) for ``--seconds``: frames/s, latency
  p50/p99, errors, the load generator's own CPU per request (``client_cpu_ms``: it shares the
  machine), the mean Serve batch size the responses report, and from the replica's
  counters (``GET /v1/model``) how ``busy`` its model was and its ``compute_fps`` (frames per
  second of forward time): an overhead with ``busy`` near 1 and ``compute_fps`` below
  ``in_process`` is the forward slowed by the CPU Serve takes beside it, not batching;
- ``in_process``: what the replica runs per batch (``ModelServer.generate``: the same
  engine, avatar and audio windows), with as many torch threads as the replica has CPUs
  (``--cpus-per-replica``, default the shipped ``configs/serve.yaml``'s), called directly on
  ``min(concurrency, max_batch_size)`` requests at a time: the batch Serve can form at that
  concurrency at best;
- ``in_process_all_cores``: the same on every core of the machine, when the replica has fewer
  (what this machine could do with no server at all);
- ``echo``: Serve's own floor on this machine. The same shape of application (a FastAPI
  ingress on 0.1 CPU forwarding to a deployment with the replica's CPUs that batches callers
  with the same ``BatchQueue``, batch size and wait) with no model: the deployment returns as
  many bytes as the frames route's answer. Its requests/s (as frames/s) is the most the
  frames route could reach here if the model took no time at all.

``serve`` and ``in_process`` alternate in ``--rounds`` windows (the VM's speed drifts by 20 %
within minutes); ``overhead`` = 1 - serve fps / in-process fps pooled over the rounds (same
concurrency, same CPUs for the model), ``overhead_range`` the rounds' spread;
``batching_gain`` = serve fps / serve fps at concurrency 1. Timings from a busy machine are
not worth reporting; ``--quick`` just checks the whole path runs (a few seconds per level,
width 0.125).
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from bench.common import markdown_table, median, percentile, write_json
from bench.stand_in import TOKEN, stand_in_serve


@dataclass
class Tally:
    """What one or more measuring windows saw; rounds of the same variant are pooled."""

    frames: int = 0
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    compute_seconds: float = 0.0  # the replica's forward time meanwhile (Serve only)
    computed_frames: int = 0
    client_cpu_seconds: float = 0.0  # the load generator's CPU (this process) meanwhile

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def add(self, other: "Tally") -> "Tally":
        self.frames += other.frames
        self.requests += other.requests
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.errors += other.errors
        self.batch_sizes += other.batch_sizes
        self.compute_seconds += other.compute_seconds
        self.computed_frames += other.computed_frames
        self.client_cpu_seconds += other.client_cpu_seconds
        return self

    def figures(self) -> dict:
        out = {"fps": self.fps, "ms_p50": 1000 * median(self.latencies) if self.latencies else 0.0,
               "ms_p99": 1000 * percentile(self.latencies, 99) if self.latencies else 0.0,
               "errors": self.errors, "requests": self.requests}
        if self.batch_sizes:
            out["mean_batch"] = float(np.mean(self.batch_sizes))
        if self.client_cpu_seconds:
            out["client_cpu_ms"] = 1000 * self.client_cpu_seconds / self.requests
        if self.compute_seconds:
            out["busy"] = self.compute_seconds / self.seconds
            out["compute_fps"] = self.computed_frames / self.compute_seconds
        return out


async def load(url: str, avatar: str, windows: np.ndarray, concurrency: int, seconds: float
               ) -> Tally:
    """``concurrency`` closed-loop callers for ``seconds``. The load generator shares the
    machine with Serve, so it spends as little CPU as it can: request bodies are encoded up
    front, and the client is aiohttp (measured against a plain uvicorn app returning 100 KB:
    0.3 ms of client CPU per request, httpx 2.3-2.7 ms; at 50 requests/s httpx alone took
    0.15 of the 2 cores the model competes for)."""
    import aiohttp

    tally = Tally()
    bodies = [json.dumps({"features": window.tolist(), "start": i % 25, "format": "npy"}
                         ).encode() for i, window in enumerate(windows)]
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, seed: int) -> None:
        step = seed
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            tally.requests += 1
            batch = None
            try:
                async with session.post(f"/v1/avatars/{avatar}/frames",
                                        data=bodies[step % len(bodies)]) as response:
                    await response.read()
                    if response.status == 200:
                        batch = int(response.headers["X-Dinet-Batch-Size"])
            except (aiohttp.ClientError, TimeoutError):
                pass
            if batch is not None:
                tally.latencies.append(time.perf_counter() - start)
                tally.batch_sizes.append(batch)
                tally.frames += windows.shape[1]
            else:
                tally.errors += 1
            step += 1

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
            base_url=url, headers=headers, timeout=aiohttp.ClientTimeout(total=120),
            connector=aiohttp.TCPConnector(limit=concurrency + 4)) as session:
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))
        tally.seconds = time.perf_counter() - began
        tally.client_cpu_seconds = time.process_time() - cpu
    return tally


def replica_counters(url: str) -> dict | None:
    """The model replica's running totals (``GET /v1/model``; None for the echo app)."""
    import httpx

    response = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30)
    return response.json() if response.status_code == 200 else None


def measure(url: str, avatar: str, windows: np.ndarray, concurrency: int, seconds: float
            ) -> Tally:
    """``load`` after a short warm-up at the same concurrency, and what the replica's forwards
    took meanwhile: ``busy`` (the fraction of the time it computed) and ``compute_fps`` (frames
    per second of forward time: below ``in_process``, the replica computed slower than alone)."""
    asyncio.run(load(url, avatar, windows, concurrency, min(1.0, seconds)))
    before = replica_counters(url)
    tally = asyncio.run(load(url, avatar, windows, concurrency, seconds))
    after = replica_counters(url)
    if before and after:
        tally.compute_seconds = after["compute_seconds"] - before["compute_seconds"]
        tally.computed_frames = after["frames_generated"] - before["frames_generated"]
    return tally


def echo_app(settings: dict, frame_bytes: int):
    """Serve alone: the lip-sync app's two-deployment shape with the model taken out.

    (This file has no ``from __future__ import annotations``: FastAPI reads the route's
    annotations in the replica, where a string ``"Request"`` would not resolve.)"""
    from dinet_platform.serving.batching import BatchQueue
    from dinet_platform.serving.deployment import ingress_max_ongoing, replica_handle
    from ray import serve

    serving = settings["serving"]
    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": serving["cpus_per_replica"]},
                      max_ongoing_requests=serving["max_ongoing_requests"])
    class Echo:
        def __init__(self):
            self.batches = BatchQueue(self.answer, serving["max_batch_size"],
                                      serving["batch_wait_timeout_s"])

        @staticmethod
        def answer(frames: list[int]) -> list[tuple[bytes, int]]:
            return [(bytes(frame_bytes * n), len(frames)) for n in frames]

        async def __call__(self, frames: int) -> tuple[bytes, int]:
            return await self.batches.submit(frames)

    @serve.deployment(ray_actor_options={"num_cpus": 0.1},  # as build_app's ingress
                      max_ongoing_requests=ingress_max_ongoing(serving["max_ongoing_requests"]))
    @serve.ingress(app)
    class Ingress:
        def __init__(self, echo):
            self.echo = replica_handle(echo)

        @app.post("/v1/avatars/{avatar}/frames")
        async def frames(self, avatar: str, request: Request) -> Response:
            count = len(json.loads(await request.body())["features"])
            body, batch = await self.echo.remote(count)
            return Response(body, media_type="application/x-npy",
                            headers={"X-Dinet-Batch-Size": str(batch)})

    return Ingress.bind(Echo.bind())


def in_process(server, avatar: str, windows: np.ndarray, batch: int, seconds: float,
               threads: int) -> Tally:
    """The replica's own work without Serve: ``ModelServer.generate`` on ``batch`` jobs at a
    time, built as the ingress builds them, on ``threads`` torch threads."""
    from dinet_platform.media.audio_features import audio_windows
    from dinet_platform.serving.model import FrameJob

    torch.set_num_threads(threads)

    width = server.model.info.audio_window
    jobs = [FrameJob(avatar, i % 25, audio_windows(windows[i % len(windows)], width), False)
            for i in range(batch)]
    tally = Tally()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not tally.latencies:
        start = time.perf_counter()
        outputs, _ = server.generate(jobs)
        tally.latencies.append(time.perf_counter() - start)
        tally.frames += sum(len(out) for out in outputs)
        tally.requests += batch
    tally.seconds = sum(tally.latencies)
    return tally


def main() -> None:
    from dinet_platform.config.serving import ServingConfig

    shipped = ServingConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frames-per-request", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rounds", type=int, default=3,
                        help="Serve and in-process windows alternate this many times per level "
                             "(each seconds/rounds long); figures pool the rounds")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--mouth", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=shipped.max_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="batch_wait_timeout_s in ms (configs/serve.yaml: 10)")
    parser.add_argument("--cpus-per-replica", type=float,
                        default=shipped.cpus_per_replica,
                        help="the model replica's CPUs (its torch threads: rounded up); "
                             "default the serving config's")
    parser.add_argument("--python-proxy", action="store_true",
                        help="Ray's Python HTTP proxy instead of HAProxy + direct ingress")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.width, args.rounds = 3.0, 0.125, 1
    window_s = args.seconds / max(1, args.rounds)

    if args.python_proxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"  # start_local_ray leaves Serve's default
    http = "python proxy" if args.python_proxy else "haproxy"

    from dinet_platform.serving.avatars import AvatarStore
    from dinet_platform.serving.model import ModelServer
    from dinet_platform.serving.settings import validate_args
    from ray import serve

    max_batch = args.max_batch_size
    serving = {"max_batch_size": max_batch, "max_ongoing_requests": max(max_batch, 4 * max_batch),
               "max_queued_requests": 4 * max(args.concurrency),
               "batch_wait_timeout_s": args.batch_wait_ms / 1000,
               "cpus_per_replica": args.cpus_per_replica}
    rng = np.random.default_rng(0)
    windows = {n: rng.normal(size=(64, n, 29)).astype(np.float32)
               for n in args.frames_per_request}
    replica_threads = max(1, math.ceil(args.cpus_per_replica))  # as the replica computes
    all_cores = os.cpu_count() or 1

    rows = []
    with stand_in_serve(width=args.width, mouth=args.mouth, serving=serving) as app:
        url, avatar, client, settings = app.url, app.avatar, app.client, app.settings
        version = app.versions[0]
        typed = validate_args(settings)
        server = ModelServer(typed.serving, client, AvatarStore(app.root / "avatars"))
        server.ensure_current()
        assert server.model is not None and server.model.version == version
        entry = server.avatar(server.model, avatar)  # built once, as in a warm replica
        mode = server.model.info.description

        def row(variant: str, frames: int, concurrency: int, **figures) -> dict:
            return {"variant": variant, "concurrency": concurrency,
                    "frames_per_request": frames, "width": args.width,
                    "mouth_size": args.mouth, "mode": "no model" if variant == "echo" else mode,
                    "http": http, "cpus_per_replica": args.cpus_per_replica, **figures}

        levels = list(itertools.product(args.frames_per_request, args.concurrency))
        for frames, concurrency in levels:
            print(f"{frames} frame(s) per request, concurrency {concurrency} ...", flush=True)
            batch = min(concurrency, max_batch)
            served, local, overheads = Tally(), Tally(), []
            for _ in range(args.rounds):  # alternating: a drifting machine hits both alike
                this_serve = measure(url, avatar, windows[frames], concurrency, window_s)
                this_local = in_process(server, avatar, windows[frames], batch, window_s,
                                        replica_threads)
                overheads.append(1.0 - this_serve.fps / this_local.fps)
                served.add(this_serve)
                local.add(this_local)
            rows.append(row("serve", frames, concurrency, **served.figures(),
                            overhead=1.0 - served.fps / local.fps, overhead_rounds=overheads,
                            overhead_range=f"{min(overheads):.3f}..{max(overheads):.3f}"))
            rows.append(row("in_process", frames, concurrency, threads=replica_threads,
                            **local.figures()))
            if all_cores > replica_threads:
                local = in_process(server, avatar, windows[frames], batch, window_s,
                                   all_cores)
                rows.append(row("in_process_all_cores", frames, concurrency,
                                threads=all_cores, **local.figures()))
        serve.delete("dinet")  # free its CPUs for Serve alone
        frame_bytes = math.prod(entry.avatar.sources([0]).shape) * 4  # float32 npy crop
        serve.run(echo_app(settings, frame_bytes), name="echo", route_prefix="/",
                  blocking=False)
        for frames, concurrency in levels:
            print(f"Serve alone, {frames} frame(s) per request, concurrency {concurrency} ...",
                  flush=True)
            echo = measure(url, avatar, windows[frames], concurrency, args.seconds)
            rows.append(row("echo", frames, concurrency, **echo.figures()))

    order = ["serve", "in_process", "in_process_all_cores", "echo"]
    fps = {(r["variant"], r["frames_per_request"], r["concurrency"]): r["fps"] for r in rows}
    for served in (r for r in rows if r["variant"] == "serve"):
        frames, concurrency = served["frames_per_request"], served["concurrency"]
        served["batching_gain"] = served["fps"] / fps["serve", frames, args.concurrency[0]]
    rows.sort(key=lambda r: (r["frames_per_request"], r["concurrency"], order.index(r["variant"])))
    print(f"HTTP: {http}; model replica: {args.cpus_per_replica} CPUs ({replica_threads} "
          f"torch threads) of {all_cores}; {mode}, width {args.width}, mouth {args.mouth}")
    print(markdown_table(rows, ["variant", "frames_per_request", "concurrency", "fps", "ms_p50",
                                "ms_p99", "errors", "requests", "client_cpu_ms", "mean_batch",
                                "busy", "compute_fps", "overhead", "overhead_range",
                                "batching_gain"]))
    write_json(args.out, {"device": "cpu", "http": http, "rows": rows})


if __name__ == "__main__":
    main()
