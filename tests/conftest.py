"""Shared fixtures: one local Ray per test session, and small synthetic datasets.

Everything here is sized for 2 shared CPU cores: a handful of 1-2 s videos at 160x160.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SYNTH_VIDEOS = 4
SYNTH_SECONDS = 1.6
SYNTH_SIZE = 160


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
        ray.shutdown()


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
def ray_head() -> Iterator[object]:
    """A one-node token-auth Ray cluster (``ray start --head``, 2 CPUs) on loopback, every
    port explicit (see tests/cluster.py); stopped by its own process at the end."""
    from tests.cluster import ray_cluster

    with ray_cluster([2]) as cluster:
        yield cluster
