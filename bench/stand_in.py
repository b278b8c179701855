"""A local Serve app with stand-in models, for the serving benchmarks (not the library).

:func:`stand_in_serve` does what ``dinet serve`` does on a fresh machine -- the embedded Ray
(``start_local_ray``: Serve's throughput mode), a private ``$DINET_HOME`` with an MLflow
SQLite registry -- with ``versions`` fresh generators (seeds 0, 1, ...) registered as the
tests register one (``production`` on the first), int8 calibrated on a synthetic video's
shards, and that video uploaded as an avatar. Everything it started is stopped on exit.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class StandIn:
    url: str
    avatar: str
    client: Any  # MlflowClient of the private registry
    versions: list[int]
    root: Path
    video: Path
    settings: dict[str, Any]

    def move_alias(self, version: int) -> None:
        from dinet_platform.registry.versions import move_alias

        move_alias(self.client, "dinet", "production", version)


@contextmanager
def stand_in_serve(*, width: float = 0.25, mouth: int = 64, versions: int = 1,
                   seconds: float = 2.0, serving: dict[str, Any] | None = None
                   ) -> Iterator[StandIn]:
    import httpx
    from dinet_platform.config import validate_config
    from dinet_platform.data.prepare import prepare_dataset
    from dinet_platform.ray_runtime import free_port, shutdown_local_ray, start_local_ray
    from dinet_platform.registry.versions import move_alias
    from dinet_platform.serving.deployment import build_app
    from dinet_platform.synth.videos import synthesize_dataset
    from dinet_platform.tracking import client_for
    from ray import serve

    from tests.support import register_state, tiny_state

    root = Path(tempfile.mkdtemp(prefix="dinet-bench-"))
    os.environ["DINET_HOME"] = str(root / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    (root / "token").write_text(TOKEN)
    os.environ["DINET_API_TOKEN_FILE"] = str(root / "token")
    print("preparing a synthetic video, shards and stand-in models ...", flush=True)
    synthesize_dataset(root / "videos", 1, seconds, seed=0, size=160)
    prepare_dataset(root / "videos", root / "shards", mouth_size=mouth, use_ray=False)
    config = validate_config({
        "name": "bench-stand-in", "model": {"width": width},
        "stages": [{"mouth_size": mouth, "epochs": 1, "batch_size": 2, "lr": 1e-3}],
        "data": {"shards": str(root / "shards")}})
    client = client_for(config.tracking)
    registered = [register_state(client, config, tiny_state(config, seed=seed, mouth=mouth),
                                 root / f"v{seed}") for seed in range(versions)]
    move_alias(client, "dinet", "production", registered[0])
    port = free_port()
    settings = {"serving": {"port": port, "avatar_dir": str(root / "avatars"),
                            **(serving or {})},
                "tracking": {"tracking_uri": client.tracking_uri}}
    start_local_ray(log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(settings), name="dinet", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        video = next((root / "videos").glob("*.mp4"))
        files = {"video": (video.name, video.read_bytes(), "video/mp4"),
                 "landmarks": ("l.csv", video.with_suffix(".csv").read_bytes(), "text/csv")}
        response = httpx.post(f"{url}/v1/avatars", files=files, timeout=300, headers=AUTH)
        response.raise_for_status()
        yield StandIn(url, response.json()["avatar_id"], client, registered, root, video,
                      settings)
    finally:
        serve.shutdown()
        shutdown_local_ray()
