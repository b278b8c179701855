"""Live sessions: N concurrent WebSocket streams fed in real time, and the same frames
computed in-process.

    python bench/stream.py [--out FILE.json] [--sessions 1 2 4 6 8] [--seconds 20]
                           [--widths 0.125 1.0] [--mouth 96] [--drift-minutes 10]
                           [--cpus-per-replica C] [--parallel-forwards P] [--quick]

For each model width a stand-in model is served as ``dinet serve`` would (bench/stand_in.py:
the embedded Ray, int8 calibrated, a synthetic video as the avatar), then for each N:

- ``serve``: N independent asyncio clients each open a session (``POST .../sessions``, then
  the WebSocket), send JPEG-frames ``start``, and feed speech-like audio in 40 ms chunks on a
  real-time schedule for ``--seconds``, acknowledging every frame. Per session: sustained
  fps (frames / time between the first and the last frame), gaps between consecutive frames
  (p50/p99 over all sessions), time to first frame (from the start of the recording: its
  first 160 ms of audio are needed before frame 0 can be computed), latency (from
  the send of the audio that made a frame computable to its arrival), dropped frames; and from
  the replica's counters the mean batch (windows of how many sessions shared a forward).
  ``real_time`` = every session >= 24 fps, p99 gap <= 80 ms, nothing dropped.
- ``in_process``: the replica's own work for the same frames without Serve: the model server's
  ``generate`` on N one-frame jobs at a time (full frames pasted, as the stream asks) plus the
  JPEG encoding, on the replica's threads (with ``--parallel-forwards P``: the N jobs split
  into P forwards computing at once, as the replica's queue splits them): ``capacity_fps``.
  ``headroom`` = capacity / (25 N) (> 1: the model alone could carry these sessions),
  ``path_ratio`` = the sessions' delivered fps / capacity (the share of the model's own speed
  the session path delivers; it only means a cost when the sessions cannot hold real time).

Then the largest N such that every level up to it held real time (a p99 over 20 s of gaps
is the 10th-worst gap of 2 sessions; ``--seconds 60`` gives a steadier one), and drift: one
session fed ``--drift-minutes`` of audio in irregular chunks as fast as it goes (``drop``:
most frames are never computed), its last frame index against the sample count.

Compare only within one run (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dinet_platform.serving.client import FRAME_HEADER

from bench.common import markdown_table, percentile, write_json
from bench.stand_in import AUTH, StandIn, stand_in_serve
from tests.support import speech_like

FPS, RATE, HOP = 25, 16000, 640


def pcm(samples: np.ndarray) -> bytes:
    return np.rint(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class SessionTally:
    arrivals: dict[int, float] = field(default_factory=dict)
    sent: list[tuple[int, float]] = field(default_factory=list)  # (samples so far, time)
    first_audio: float = 0.0
    dropped: int = 0
    frames_total: int = 0
    lookahead: int = 3

    def latencies(self) -> list[float]:
        out, chunks = [], self.sent
        for index, arrived in self.arrivals.items():
            needed = (index + 1 + self.lookahead) * HOP
            sent = next((t for samples, t in chunks if samples >= needed), chunks[-1][1])
            out.append(arrived - sent)
        return out


async def run_session(app: StandIn, seconds: float, seed: int, chunk_ms: int = 40,
                      fast: bool = False) -> SessionTally:
    import httpx
    import websockets

    async with httpx.AsyncClient(base_url=app.url, headers=AUTH, timeout=60) as http:
        minted = (await http.post(f"/v1/avatars/{app.avatar}/sessions")).json()
    url = app.url.replace("http://", "ws://", 1).split("/", 3)
    url = f"{url[0]}//{url[2]}{minted['stream_path']}"
    tally = SessionTally()
    audio = pcm(speech_like(seconds, seed))
    step = RATE * chunk_ms // 1000
    rng = np.random.default_rng(seed)
    async with websockets.connect(url, subprotocols=["dinet-stream", minted["session_token"]],
                                  max_size=None, compression=None) as socket:  # as the client
        ready = json.loads(await socket.recv())
        tally.lookahead = ready["lookahead_frames"]
        await socket.send(json.dumps({"type": "start", "format": "jpeg", "output": "frames"}))

        async def feed() -> None:
            at, began = 0, time.perf_counter()
            tally.first_audio = began
            while at < len(audio) // 2:
                size = int(rng.integers(1, 4 * step)) if fast else step
                if not fast:  # a microphone has a chunk once it is recorded
                    await asyncio.sleep(max(0.0, began + (at + size) / RATE
                                            - time.perf_counter()))
                await socket.send(audio[2 * at:2 * (at + size)])
                at += size
                tally.sent.append((at, time.perf_counter()))
            await socket.send(json.dumps({"type": "close"}))

        feeder = asyncio.create_task(feed())
        async for message in socket:
            if isinstance(message, bytes):
                index = FRAME_HEADER.unpack_from(message)[0]
                tally.arrivals[index] = time.perf_counter()
                with contextlib.suppress(websockets.ConnectionClosedOK):  # after the last
                    await socket.send(json.dumps({"type": "ack", "index": index}))
                continue
            event = json.loads(message)
            if event["type"] == "dropped":
                tally.dropped = event["total"]
            elif event["type"] == "end":
                tally.frames_total = event["frames"]
            elif event["type"] == "error":
                raise RuntimeError(f"session {seed}: {event}")
        await feeder
    return tally


def batch_counters(app: StandIn) -> tuple[dict[str, int], int]:
    import httpx

    info = httpx.get(f"{app.url}/v1/model", headers=AUTH, timeout=60).json()
    return info["batch_sizes"], info["frames_generated"]


def serve_level(app: StandIn, sessions: int, seconds: float) -> dict:
    sizes_before, frames_before = batch_counters(app)

    async def main():
        return await asyncio.gather(*(run_session(app, seconds, seed)
                                      for seed in range(sessions)))

    tallies = asyncio.run(main())
    sizes_after, frames_after = batch_counters(app)
    batches = {int(k): v - sizes_before.get(k, 0) for k, v in sizes_after.items()}
    forwards = sum(batches.values())
    fps, gaps, ttff, latency = [], [], [], []
    for tally in tallies:
        times = [tally.arrivals[i] for i in sorted(tally.arrivals)]
        if len(times) > 1:
            fps.append((len(times) - 1) / (times[-1] - times[0]))
            gaps += list(np.diff(times))
        ttff.append(times[0] - tally.first_audio if times else float("nan"))
        latency += tally.latencies()
    dropped = sum(t.dropped for t in tallies)
    row = {"variant": "serve", "sessions": sessions, "fps_min": min(fps), "fps_mean":
           float(np.mean(fps)), "gap_p50_ms": 1e3 * percentile(gaps, 50),
           "gap_p99_ms": 1e3 * percentile(gaps, 99), "ttff_ms": 1e3 * max(ttff),
           "ttff_p50_ms": 1e3 * float(np.median(ttff)),
           "latency_p50_ms": 1e3 * percentile(latency, 50),
           "latency_p99_ms": 1e3 * percentile(latency, 99), "dropped": dropped,
           "delivered_fps": sum(len(t.arrivals) for t in tallies) / seconds,
           "mean_batch": sum(k * v for k, v in batches.items()) / max(1, forwards),
           "frames_computed": frames_after - frames_before}
    row["real_time"] = bool(row["fps_min"] >= 24.0 and row["gap_p99_ms"] <= 80.0
                            and dropped == 0)
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}


def in_process_level(app: StandIn, sessions: int, seconds: float) -> dict:
    """The replica's work for N one-frame windows per forward, without Serve."""
    from dinet_platform.runtime.streaming import offline_windows
    from dinet_platform.serving.api import encode_frame
    from dinet_platform.serving.avatars import AvatarStore
    from dinet_platform.serving.model import FrameJob, ModelServer
    from dinet_platform.serving.settings import validate_args

    typed = validate_args(app.settings)
    server = ModelServer(typed.serving, app.client, AvatarStore(app.root / "avatars"))
    server.ensure_current()
    torch.set_num_threads(typed.serving.forward_threads)  # before the pool's first forward
    windows = offline_windows(speech_like(4.0, 0), sample_rate=RATE, fps=FPS, n_mels=29,
                              window=5)
    server.avatar(server.model, app.avatar)
    parallel = typed.serving.parallel_forwards
    share = -(-sessions // parallel)  # the replica's queue splits them so

    def forward(jobs: list[FrameJob]) -> None:
        outputs, _ = server.generate(jobs)
        for out in outputs:
            encode_frame(out[0], "jpeg", typed.serving.stream.jpeg_quality)

    frames, began, step = 0, time.perf_counter(), 0
    with ThreadPoolExecutor(parallel) as pool:
        while time.perf_counter() - began < seconds:
            jobs = [FrameJob(app.avatar, step + s, windows[(step + s) % len(windows)][None],
                             True) for s in range(sessions)]
            list(pool.map(forward, [jobs[i: i + share] for i in range(0, sessions, share)]))
            frames += len(jobs)
            step += 1
    capacity = frames / (time.perf_counter() - began)
    return {"variant": "in_process", "sessions": sessions, "capacity_fps": float(capacity),
            "headroom": float(capacity / (FPS * sessions))}


def drift(app: StandIn, minutes: float) -> dict:
    tally = asyncio.run(run_session(app, minutes * 60, seed=11, fast=True))
    samples = int(minutes * 60 * RATE)
    expected = max(1, (samples + HOP // 2) // HOP)
    last = max(tally.arrivals) if tally.arrivals else -1
    return {"audio_s": samples / RATE, "frames": tally.frames_total, "expected": expected,
            "last_index": last, "drift_ms": 1e3 * (tally.frames_total / FPS - samples / RATE),
            "dropped_fast_feed": tally.dropped}


def largest_real_time(rows: list[dict]) -> int:
    """The largest N such that every run with at most N sessions held real time (a level
    measured twice must hold both times: one lucky run does not count)."""
    served = [r for r in rows if r["variant"] == "serve"]
    failed = [r["sessions"] for r in served if not r["real_time"]]
    return max((r["sessions"] for r in served
                if r["real_time"] and all(n > r["sessions"] for n in failed)), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    parser.add_argument("--mouth", type=int, default=96)
    parser.add_argument("--drift-minutes", type=float, default=10.0)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0,
                        help="the model replica's CPUs (torch threads: rounded up)")
    parser.add_argument("--parallel-forwards", type=int, default=1,
                        help="forwards a replica computes at once (threads: CPUs shared)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="model replicas (the ingress keeps as many calls out)")
    parser.add_argument("--batch-wait", type=float, default=0.02,
                        help="stream.batch_wait_s: how long the ingress waits for sessions")
    parser.add_argument("--max-lag", type=float, default=0.5,
                        help="stream.max_lag_s: drop frames computable longer ago than this")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds, args.widths, args.drift_minutes = [1, 2], 4.0, [0.125], 0.5

    results = []
    for width in args.widths:
        serving = {"max_batch_size": 16, "max_ongoing_requests": 32,
                   "cpus_per_replica": args.cpus_per_replica, "num_replicas": args.replicas,
                   "parallel_forwards": args.parallel_forwards,
                   "stream": {"max_sessions": max(args.sessions) + 1,
                              "calls_in_flight": args.replicas,
                              "batch_wait_s": args.batch_wait, "max_lag_s": args.max_lag}}
        with stand_in_serve(width=width, mouth=args.mouth, serving=serving) as app:
            asyncio.run(run_session(app, 2.0, seed=99))  # warm-up: avatar cache, first forward
            rows = []
            for sessions in args.sessions:
                print(f"width {width}: {sessions} sessions for {args.seconds:g} s ...",
                      flush=True)
                served = serve_level(app, sessions, args.seconds)
                local = in_process_level(app, sessions, min(args.seconds, 8.0))
                served["path_ratio"] = served["delivered_fps"] / local["capacity_fps"]
                rows += [served, local]
            results.append({"width": width, "mouth_size": args.mouth, "rows": rows,
                            "max_real_time_sessions": largest_real_time(rows)})
            print(f"\nwidth {width}, mouth {args.mouth}, int8 CPU, {os.cpu_count()} cores, "
                  f"{args.replicas} model replica(s) of {args.cpus_per_replica:g} CPU, "
                  f"{args.parallel_forwards} forward(s) at once")
            print(markdown_table([r for r in rows if r["variant"] == "serve"], [
                "sessions", "fps_min", "fps_mean", "gap_p50_ms", "gap_p99_ms", "ttff_ms",
                "latency_p50_ms", "latency_p99_ms", "dropped", "mean_batch", "delivered_fps",
                "path_ratio", "real_time"]))
            print(markdown_table([r for r in rows if r["variant"] == "in_process"],
                                 ["sessions", "capacity_fps", "headroom"]))
            print(f"largest N holding real time: {results[-1]['max_real_time_sessions']}",
                  flush=True)
            write_json(args.out, {"device": "cpu", "results": results, "args": vars(args),
                                  "script": Path(__file__).name})
            print(f"drift: {args.drift_minutes:g} min of audio ...", flush=True)
            measured = results[-1]["drift"] = drift(app, args.drift_minutes)
        print(f"drift after {measured['audio_s']:g} s of audio: {measured['drift_ms']:.1f} ms "
              f"({measured['frames']} frames, {measured['expected']} expected, last frame "
              f"{measured['last_index']})\n", flush=True)
    write_json(args.out, {"device": "cpu", "results": results, "args": vars(args),
                          "script": Path(__file__).name})


if __name__ == "__main__":
    main()
