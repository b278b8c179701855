"""The main job behind ``make demo``: the platform end to end at the demo config.

So far: generate synthetic talking-face videos, preprocess them into shards with Ray Data, and
train every stage of the config as its own Ray Train run (MLflow parent + child runs). Every
step is idempotent, so a second run reuses what is still valid: the same videos, the same
shards, and the pipeline run whose stages already finished.
"""

from __future__ import annotations

import time

from rich.console import Console

from dinet_platform.config import DINetConfig
from dinet_platform.data.prepare import prepare_dataset
from dinet_platform.data.synth import synthesize_dataset
from dinet_platform.paths import dinet_home
from dinet_platform.ray_runtime import ray_session
from dinet_platform.tracking import client_for
from dinet_platform.training.pipeline import run_pipeline
from dinet_platform.training.stage import default_shards

DEMO_VIDEOS = 8
DEMO_SECONDS = 4.0


def run_demo(config: DINetConfig, console: Console) -> None:
    started = time.perf_counter()
    home = dinet_home()
    videos = home / "demo" / "videos"
    shards = default_shards(config)
    client = client_for(config.tracking)

    console.rule("1. synthetic talking faces")
    clips = synthesize_dataset(videos, DEMO_VIDEOS, DEMO_SECONDS, seed=config.training.seed)
    console.print(f"{len(clips)} clips of {DEMO_SECONDS:g}s in {videos}")

    with ray_session():
        console.rule("2. preprocessing (Ray Data -> Parquet shards)")
        largest = max(stage.mouth_size for stage in config.stages)
        report = prepare_dataset(videos, shards, config=config.data, mouth_size=largest,
                                 log=console.print)
        counts = report.manifest["counts"]
        console.print(f"{counts['videos_ok']} videos ({counts['train_videos']} train, "
                      f"{counts['val_videos']} held out), {counts['frames']} frames in {shards}")

        console.rule("3. multiscale training (one Ray Train run per stage)")
        result = run_pipeline(config, client, shards=shards, console=console)

    console.rule("done")
    console.print(f"finished in {time.perf_counter() - started:.0f}s; everything is under {home}")
    console.print(f"pipeline MLflow run: {result.run_id}")
    console.print(f"browse the runs: mlflow ui --backend-store-uri {client.tracking_uri}")
