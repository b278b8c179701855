"""Connecting to Ray: the embedded local Ray by default, or a cluster by address."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from dinet_platform.paths import dinet_home

# Nothing phones home, and workers resolve the same $DINET_HOME as the driver.
WORKER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Ray Train's print patch would echo every worker print twice on the driver console.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the Ray this process is already connected to, else start (or join) one; a Ray
    started here is shut down on exit, also on errors and Ctrl-C."""
    if ray.is_initialized():
        yield
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    env_vars = {**WORKER_ENV, "DINET_HOME": str(dinet_home())}
    ray.init(
        address=address,
        include_dashboard=False,
        runtime_env={"env_vars": env_vars},
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
