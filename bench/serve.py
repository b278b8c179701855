"""Serve vs in-process: the frames route under load, and the same frames through the model.

    python bench/serve.py [--out FILE.json] [--concurrency 1 8 32] [--seconds 20]
                          [--frames-per-request 1] [--width 0.25] [--mouth 64] [--quick]

Starts a local Ray + Serve app (``serve_deployments.lipsync``) serving a stand-in model (a
random initialisation registered in a private MLflow SQLite registry, int8 calibrated on a
synthetic video's shards), uploads that video as an avatar, then:

- ``serve``: an asyncio httpx client keeps ``concurrency`` requests in flight on
  ``POST /v1/avatars/{id}/frames`` (``npy`` output) for ``--seconds``: frames/s, latency
  p50/p99, errors, and the mean Serve batch size the responses report;
- ``in_process``: the same engine (``load_served_model``), same avatar and audio windows,
  with as many torch threads as the replica has CPUs (``--cpus-per-replica``), called
  directly at batch ``min(concurrency, max_batch_size) x frames-per-request``, the
  batch Serve can form at that concurrency at best.

``overhead`` = 1 - serve fps / in-process fps at the same concurrency; ``batching_gain`` =
serve fps / serve fps at concurrency 1. Timings from a busy machine are not worth reporting;
``--quick`` just checks the whole path runs (a few seconds per level, width 0.125).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from bench.common import markdown_table, median, percentile, write_json

TOKEN = "bench-token-0123456789abcdef"


def register_stand_in(client, config, mouth: int, folder: Path) -> int:
    from dinet_platform.models.factory import build_generator
    from dinet_platform.registry.store import move_alias, register_model
    from dinet_platform.training.checkpoint import save_checkpoint
    from dinet_platform.training.stage import start_stage_run

    torch.manual_seed(0)
    state = {"generator": build_generator(config.model).state_dict(), "discriminators": None,
             "optimizers": None, "epoch": 0, "mouth_size": mouth, "metrics": {},
             "config": config.model_dump(mode="json")}
    run_id = start_stage_run(client, config, mouth)
    save_checkpoint(folder, state)
    client.log_artifacts(run_id, str(folder), "checkpoint")
    client.set_terminated(run_id, "FINISHED")
    version = register_model(config, client, run_id, evaluate=False).version
    move_alias(client, config.tracking.registered_model, "production", version)
    return version


async def load(url: str, avatar: str, windows: np.ndarray, concurrency: int, seconds: float
               ) -> dict:
    import httpx

    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    frames = 0
    body = {"features": None, "format": "npy"}
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, seed: int) -> None:
        nonlocal errors, frames
        step = seed
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            payload = {**body, "features": windows[step % len(windows)].tolist(),
                       "start": step % 25}
            try:
                response = await client.post(f"/v1/avatars/{avatar}/frames", json=payload)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
                sizes.append(int(response.headers["X-Dinet-Batch-Size"]))
                frames += len(payload["features"])
            else:
                errors += 1
            step += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"fps": frames / elapsed, "ms_p50": 1000 * median(latencies) if latencies else 0.0,
            "ms_p99": 1000 * percentile(latencies, 99) if latencies else 0.0,
            "errors": errors, "requests": len(latencies) + errors,
            "mean_batch": float(np.mean(sizes)) if sizes else 0.0}


def in_process(model, entry, windows: np.ndarray, batch: int, seconds: float) -> dict:
    from dinet_platform.inference.engine import AvatarFeatures

    per = windows.shape[1]
    latencies, frames = [], 0
    from dinet_platform.serving.api import audio_windows

    width = model.info.audio_window  # the windows the ingress builds from these features
    audio = torch.from_numpy(np.concatenate(
        [audio_windows(windows[i % len(windows)], width) for i in range(batch)]))
    index = [entry.avatar.loop_index(i) for i in range(len(audio))]
    sources = entry.avatar.sources(index)
    features = AvatarFeatures(entry.features.expand(len(audio)), encoded=True)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not latencies:
        start = time.perf_counter()
        out = model.engine.generate(sources, audio, features)
        out.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        latencies.append(time.perf_counter() - start)
        frames += len(audio)
    return {"fps": frames / sum(latencies), "ms_p50": 1000 * median(latencies),
            "ms_p99": 1000 * percentile(latencies, 99), "errors": 0,
            "requests": len(latencies), "batch_frames": batch * per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frames-per-request", type=int, default=1)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--mouth", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--cpus-per-replica", type=float, default=(os.cpu_count() or 1) - 0.1,
                        help="the model replica's CPUs (its torch threads: rounded up); "
                             "default all cores but the ingress's 0.1")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.width = 3.0, 0.125

    root = Path(tempfile.mkdtemp(prefix="dinet-bench-serve-"))
    os.environ["DINET_HOME"] = str(root / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    (root / "token").write_text(TOKEN)
    os.environ["DINET_API_TOKEN_FILE"] = str(root / "token")

    import httpx
    from dinet_platform.config import validate_config
    from dinet_platform.data.prepare import prepare_dataset
    from dinet_platform.data.synth import synthesize_dataset
    from dinet_platform.ray_runtime import free_port, start_local_ray
    from dinet_platform.serving.avatars import AvatarStore
    from dinet_platform.serving.model import ModelServer
    from dinet_platform.serving.settings import validate_args
    from dinet_platform.tracking import client_for
    from ray import serve

    from serve_deployments.lipsync import build_app

    print("preparing a synthetic video, shards and a stand-in model ...", flush=True)
    synthesize_dataset(root / "videos", 1, 2.0, seed=0, size=160)
    prepare_dataset(root / "videos", root / "shards", mouth_size=args.mouth, use_ray=False)
    config = validate_config({
        "name": "bench-serve", "model": {"width": args.width},
        "stages": [{"mouth_size": args.mouth, "epochs": 1, "batch_size": 2, "lr": 1e-3}],
        "data": {"shards": str(root / "shards")}})
    client = client_for(config.tracking)
    version = register_stand_in(client, config, args.mouth, root / "checkpoint")
    port = free_port()
    max_batch = args.max_batch_size
    settings = {"serving": {"port": port, "max_batch_size": max_batch,
                            "max_ongoing_requests": max(max_batch, 2 * max_batch),
                            "max_queued_requests": 4 * max(args.concurrency),
                            "batch_wait_timeout_s": 0.005,
                            "cpus_per_replica": args.cpus_per_replica,
                            "avatar_dir": str(root / "avatars")},
                "tracking": {"tracking_uri": client.tracking_uri}}
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(64, args.frames_per_request, config.model.audio_channels)
                         ).astype(np.float32)

    rows = []
    torch.set_num_threads(max(1, math.ceil(args.cpus_per_replica)))  # the replica's threads
    start_local_ray(log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(settings), name="dinet", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        video = next((root / "videos").glob("*.mp4"))
        files = {"video": (video.name, video.read_bytes(), "video/mp4"),
                 "landmarks": ("l.csv", video.with_suffix(".csv").read_bytes(), "text/csv")}
        response = httpx.post(f"{url}/v1/avatars", files=files, timeout=120,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        avatar = response.json()["avatar_id"]

        typed = validate_args(settings)
        server = ModelServer(typed.serving, client, AvatarStore(root / "avatars"))
        server.ensure_current()
        assert server.model is not None and server.model.version == version
        entry = server.avatar(server.model, avatar)
        for concurrency in args.concurrency:
            print(f"concurrency {concurrency} ...", flush=True)
            asyncio.run(load(url, avatar, windows, concurrency, min(2.0, args.seconds)))
            served = asyncio.run(load(url, avatar, windows, concurrency, args.seconds))
            local = in_process(server.model, entry, windows, min(concurrency, max_batch),
                               args.seconds)
            base = {"concurrency": concurrency, "frames_per_request": args.frames_per_request,
                    "width": args.width, "mouth_size": args.mouth,
                    "mode": server.model.info.description}
            rows.append({**base, "variant": "serve", **served})
            rows.append({**base, "variant": "in_process", **local})
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    serve_fps = {r["concurrency"]: r["fps"] for r in rows if r["variant"] == "serve"}
    first = serve_fps[args.concurrency[0]]
    for row in rows:
        if row["variant"] == "serve":
            local = next(r for r in rows if r["variant"] == "in_process"
                         and r["concurrency"] == row["concurrency"])
            row["overhead"] = 1.0 - row["fps"] / local["fps"]
            row["batching_gain"] = row["fps"] / first
    print(markdown_table(rows, ["variant", "concurrency", "fps", "ms_p50", "ms_p99", "errors",
                                "requests", "mean_batch", "overhead", "batching_gain"]))
    write_json(args.out, {"device": "cpu", "rows": rows})


if __name__ == "__main__":
    main()
