"""Live windows beside long dub jobs, and a hot swap under both (one run, one machine).

    python bench/isolation.py [--out FILE.json] [--seconds 20] [--dubs 4] [--dub-seconds 300]
                              [--concurrency 8] [--frames 5] [--width 0.25] [--quick]

A local Serve app (``bench/stand_in.py``: two stand-in versions, ``production`` on the
first) with the shipped serving settings, except ``max_concurrent_dubs`` (``--dubs``: every
job renders at once, the worst case for live traffic). ``--concurrency`` closed-loop callers
send ``--frames``-frame live windows (5 frames = 200 ms of audio) for ``--seconds`` in each
variant:

- ``idle``: nothing else runs;
- ``dubs``: ``--dubs`` dub jobs of ``--dub-seconds`` of speech each render meanwhile (their
  frames/s is reported: live priority must not starve them);
- ``swap``: the same, and two seconds in the alias moves to the second version and
  ``POST /v1/admin/reload`` swaps it: ``swap_s`` is the time until ``GET /v1/model`` serves
  it; ``errors`` counts failed live requests over the whole window.

Targets: ``dubs`` p99 <= 2x ``idle`` p99, ``swap_s`` <= 60 with 0 errors. The ``swap`` row's
p99 also holds the new model's static int8 calibration, during which the replica's forwards
wait (torch.fx tracing cannot run beside a forward in one process).
``--quick`` checks the path (3 s windows, width 0.125, 2 short dubs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import markdown_table, write_json
from bench.serve import load
from bench.stand_in import AUTH, StandIn, stand_in_serve


def submit_dubs(app: StandIn, count: int, seconds: float) -> list[str]:
    from dinet_platform.serving.api import pcm_wav

    t = np.arange(int(seconds * 16000)) / 16000
    speech = pcm_wav(0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0), 16000)
    jobs = []
    for _ in range(count):
        response = httpx.post(f"{app.url}/v1/dub", data={"avatar_id": app.avatar}, headers=AUTH,
                              files={"audio": ("speech.wav", speech, "audio/wav")}, timeout=300)
        response.raise_for_status()
        jobs.append(response.json()["job_id"])
    return jobs


def dub_frames(app: StandIn, jobs: list[str]) -> int:
    """Frames the jobs rendered so far."""
    total = 0
    for job in jobs:
        status = httpx.get(f"{app.url}/v1/dub/{job}", headers=AUTH, timeout=30).json()
        total += int(status.get("frames") or status.get("frames_done") or 0)
    return total


def served_version(app: StandIn) -> int:
    return httpx.get(f"{app.url}/v1/model", headers=AUTH, timeout=60).json()["model"]["version"]


def swap_after(app: StandIn, delay: float, version: int, outcome: dict) -> threading.Thread:
    """In a thread: after ``delay`` s move the alias to ``version`` and reload; the seconds
    until it is served go to ``outcome["swap_s"]``."""

    def run() -> None:
        time.sleep(delay)
        began = time.perf_counter()
        app.move_alias(version)
        httpx.post(f"{app.url}/v1/admin/reload", headers=AUTH, timeout=600)
        while served_version(app) != version:
            time.sleep(0.1)
        outcome["swap_s"] = time.perf_counter() - began

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dubs", type=int, default=4)
    parser.add_argument("--dub-seconds", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.width, args.dubs, args.dub_seconds = 3.0, 0.125, 2, 20.0

    serving = {"max_concurrent_dubs": args.dubs, "max_queued_dubs": 0,
               "max_dub_audio_s": max(600.0, args.dub_seconds)}
    with stand_in_serve(width=args.width, versions=2, serving=serving) as app:
        rng = np.random.default_rng(0)
        windows = rng.normal(size=(64, args.frames, 29)).astype(np.float32)

        def live(seconds: float):
            return asyncio.run(load(app.url, app.avatar, windows, args.concurrency, seconds))

        live(1.0)  # warm-up
        rows = []
        print(f"idle: {args.concurrency} live callers ...", flush=True)
        rows.append({"variant": "idle", **live(args.seconds).figures()})

        print(f"{args.dubs} dubs of {args.dub_seconds:g} s rendering ...", flush=True)
        jobs = submit_dubs(app, args.dubs, args.dub_seconds)
        time.sleep(2.0)  # every job past its start
        before, began = dub_frames(app, jobs), time.perf_counter()
        tally = live(args.seconds)
        dub_fps = (dub_frames(app, jobs) - before) / (time.perf_counter() - began)
        rows.append({"variant": "dubs", **tally.figures(), "dub_fps": dub_fps})

        print("hot swap under dubs and live load ...", flush=True)
        outcome: dict = {}
        before, began = dub_frames(app, jobs), time.perf_counter()
        swapper = swap_after(app, 2.0, app.versions[1], outcome)
        tally = live(args.seconds)
        swapper.join(timeout=600)
        dub_fps = (dub_frames(app, jobs) - before) / (time.perf_counter() - began)
        rows.append({"variant": "swap", **tally.figures(), "dub_fps": dub_fps,
                     "swap_s": outcome.get("swap_s", float("nan"))})
        for job in jobs:
            httpx.delete(f"{app.url}/v1/dub/{job}", headers=AUTH, timeout=30)

    idle_p99 = rows[0]["ms_p99"]
    for row in rows:
        row["p99_vs_idle"] = row["ms_p99"] / idle_p99 if idle_p99 else float("nan")
    print(f"{args.concurrency} live callers x {args.frames}-frame windows; {args.dubs} dubs of "
          f"{args.dub_seconds:g} s speech; width {args.width}, mouth 64, int8 CPU")
    print(markdown_table(rows, ["variant", "fps", "ms_p50", "ms_p99", "p99_vs_idle", "errors",
                                "requests", "dub_fps", "swap_s"]))
    swap = rows[-1]
    # the swap row's p99 includes the load's exclusive section (static int8 calibration)
    verdict = {"live_p99_within_2x_beside_dubs": rows[1]["p99_vs_idle"] <= 2.0,
               "swap_within_60s": swap.get("swap_s", float("inf")) <= 60.0,
               "no_failed_live_requests": all(r["errors"] == 0 for r in rows)}
    print("targets:", ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in verdict.items()))
    write_json(args.out, {"device": "cpu", "settings": serving, "rows": rows,
                          "targets": verdict, "args": vars(args),
                          "script": Path(__file__).name})


if __name__ == "__main__":
    main()
