"""Shared fixtures: one local Ray per test session, small synthetic datasets, an isolated
``DINET_HOME``, and one tiny pipeline trained once per session. Helpers that are not fixtures
live in tests/support.py; the cluster helpers in tests/cluster.py.

Everything here is sized for 2 shared CPU cores: a handful of 1-2 s videos at 160x160.

Every test carries exactly one lane marker (checked at collection):

- ``unit``: in-process only, no Ray, no server or cluster processes (``make test-fast``);
- ``ray``: uses the session's local Ray (``ray_local``);
- ``serve``: the Ray Serve app over real HTTP (on the session's local Ray);
- ``cluster``: Ray clusters or an mlflow server started by tests/cluster.py; ``make test`` runs
  these in a pytest process of their own, after the others.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    MOUTH,
    SERVE,
    SERVE_TOKEN,
    TRAINED,
    TrainedPipeline,
    auth,
    register_state,
    tiny_state,
    upload,
    use_home,
    write_config,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SYNTH_VIDEOS = 4
SYNTH_SECONDS = 1.6
SYNTH_SIZE = 160

LANES = ("unit", "ray", "serve", "cluster")
# Fixtures that decide a test's lane, and the lanes allowed to use them.
LANE_FIXTURES = {"ray_local": {"ray", "serve"}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without exactly one lane marker, or one whose fixtures (with everything
    they depend on) belong to another lane: ``-m unit`` must never start Ray."""
    problems = []
    for item in items:
        lanes = sorted({mark.name for mark in item.iter_markers() if mark.name in LANES})
        if len(lanes) != 1:
            problems.append(f"{item.nodeid}: lane markers {lanes}, needs exactly one of "
                            f"{', '.join(LANES)}")
            continue
        for fixture, allowed in LANE_FIXTURES.items():
            if fixture in item.fixturenames and lanes[0] not in allowed:
                problems.append(f"{item.nodeid}: marked {lanes[0]} but uses {fixture} "
                                f"(a {' or '.join(sorted(allowed))} test)")
    if problems:
        raise pytest.UsageError("test lanes:\n  " + "\n  ".join(problems))
    # The Serve app (a session fixture) holds CPUs of the 2-CPU local Ray from its first test
    # to the session's end: the serve tests go last, so no training run waits for them.
    items.sort(key=lambda item: item.get_closest_marker("serve") is not None)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _unit_tests_leave_ray_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """A ``unit`` test that leaves a Ray running it did not find is an error: it belongs in
    another lane."""
    if request.node.get_closest_marker("unit") is None or _ray_running():
        yield
        return
    yield
    if _ray_running():
        pytest.fail("a unit test started Ray: mark it ray (and use the ray_local fixture)")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """A local Ray (2 CPUs, dashboard on a free loopback port) shared by every test.

    Idempotent: if Ray is already initialised (by another fixture or the test runner) it is
    reused and left running; only a Ray started here is shut down at the end.
    """
    import ray

    started = False
    if not ray.is_initialized():
        from dinet_platform.ray_runtime import start_local_ray

        start_local_ray(num_cpus=2, log_to_driver=False, object_store_memory=512 * 1024 * 1024)
        started = True
    yield ray
    if started:
        from dinet_platform.ray_runtime import shutdown_local_ray

        shutdown_local_ray()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``SYNTH_VIDEOS`` synthetic clips (mp4 + OpenFace CSV + truth JSON), made once."""
    from dinet_platform.synth.videos import synthesize_dataset

    folder = tmp_path_factory.mktemp("synth")
    synthesize_dataset(folder, SYNTH_VIDEOS, SYNTH_SECONDS, seed=0, size=SYNTH_SIZE)
    return folder


@pytest.fixture(scope="session")
def prepared_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth_dir`` prepared into shards at mouth 160 (in-process; no Ray needed)."""
    from dinet_platform.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("shards")
    report = prepare_dataset(synth_dir, out, mouth_size=160, use_ray=False)
    assert report.manifest["counts"]["videos_ok"] == SYNTH_VIDEOS, report.manifest["skipped"]
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$DINET_HOME`` (``tmp_path/home``) with no ``$MLFLOW_TRACKING_URI``: the
    test's own embedded MLflow store and local state."""
    return use_home(monkeypatch, tmp_path / "home")


@pytest.fixture(scope="session")
def trained_pipeline(
    ray_local, prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainedPipeline:
    """``support.TRAINED`` trained once on the local Ray into a session store, for every test
    that needs *a* trained model. Tests never use this store itself: a module copies the
    pipeline into its own store (``support.copy_pipeline``) and changes only that."""
    from dinet_platform.config import load_config
    from dinet_platform.tracking import client_for
    from dinet_platform.training.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        use_home(patch, root / "home")
        config = load_config(write_config(root, TRAINED, prepared_dir))
        result = run_pipeline(config, client_for(config.tracking))
    return TrainedPipeline(home=root / "home", config=TRAINED, run_id=result.run_id,
                           stage_run_ids=tuple(stage.run_id for stage in result.stages))


SERVE_ARGS = {"max_batch_size": 4, "batch_wait_timeout_s": 0.2, "max_ongoing_requests": 8,
              "max_queued_requests": 16, "cpus_per_replica": 0.5, "max_request_bytes": 1 << 20,
              "parallel_forwards": 2,  # every serve test also checks forwards side by side
              "max_frames_per_request": 48, "max_frames_per_forward": 32,
              "max_queued_dubs": 1, "max_dub_audio_s": 60.0,
              "stream": {"max_sessions": 3, "max_unacked_frames": 20, "idle_timeout_s": 30.0}}
SERVE_PREFIX = "/dinet"
"""The tests mount the app below a prefix, as a cluster sharing Serve with other apps would:
auth and every route must hold there too."""


@pytest.fixture(scope="session")
def served(ray_local, prepared_dir, tmp_path_factory):
    """The Serve app on the session's Ray, over real HTTP at ``url`` (below
    :data:`SERVE_PREFIX`), serving two tiny registered versions (``v1`` at the alias); the
    serve test modules share it (a Serve app takes a while to start on 2 cores)."""
    from dinet_platform.config import validate_config
    from dinet_platform.ray_runtime import free_port
    from dinet_platform.registry.versions import move_alias
    from dinet_platform.serving.deployment import build_app
    from dinet_platform.serving.settings import validate_args
    from dinet_platform.tracking import client_for
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    token_file = root / "token"
    token_file.write_text(SERVE_TOKEN + "\n")
    with pytest.MonkeyPatch.context() as patch:
        use_home(patch, root / "home")
        patch.delenv("DINET_API_TOKEN", raising=False)
        patch.setenv("DINET_API_TOKEN_FILE", str(token_file))
        config = validate_config({**SERVE, "data": {"shards": str(prepared_dir)}})
        client = client_for(config.tracking)
        # two versions of a fresh tiny generator (seeds 0 and 1): the hot swap moves between
        v1 = register_state(client, config, tiny_state(config, seed=0), root / "v1")
        v2 = register_state(client, config, tiny_state(config, seed=1), root / "v2")
        move_alias(client, "dinet", "production", v1)
        port = free_port()
        args = {"serving": {**SERVE_ARGS, "port": port, "avatar_dir": str(root / "avatars")},
                "tracking": {"tracking_uri": client.tracking_uri}}
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build_app(args), name="dinet", route_prefix=SERVE_PREFIX, blocking=False)
            yield {"url": f"http://127.0.0.1:{port}{SERVE_PREFIX}", "client": client,
                   "v1": v1, "v2": v2, "args": args, "settings": validate_args(args),
                   "root": root, "config": config, "prefix": SERVE_PREFIX}
        finally:
            serve.shutdown()


@pytest.fixture(scope="session")
def http(served):
    import httpx

    with httpx.Client(base_url=served["url"], headers=auth(), timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def avatar(http, synth_dir):
    """An avatar made from the first synthetic clip and its landmarks."""
    video = sorted(synth_dir.glob("*.mp4"))[0]
    response = upload(http, video, video.with_suffix(".csv"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["mouth_size"] == MOUTH and body["frames"] == 40
    return body["avatar_id"]
