"""Connecting to Ray: the embedded local Ray by default, or a cluster by address."""

from __future__ import annotations

import os
import socket
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
    # On a small, busy machine (2 cores, concurrent sweep trials) worker processes can take
    # longer than Ray Train's default 60 s to start; that is slowness, not failure.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    # The embedded Ray is one machine that nobody drains, so the preemption watcher has nothing
    # to watch; it would be one more process waking 100 times a second (every Ray worker does)
    # on a CPU the training threads already fill. Clusters keep Ray's default.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_ray(**init_kwargs) -> None:
    """Start a local Ray for this process, with what the platform needs from it.

    The dashboard runs (on 127.0.0.1, a free port) because Ray's State API lives there, and
    Ray Train's placement-group cleaner uses that API to release the resources of a training
    run whose controller died: without it a sweep trial stopped early by ASHA would keep its
    workers' CPUs reserved forever and the next trials could never start.
    """
    port = free_port()
    env_vars = {
        **WORKER_ENV,
        "DINET_HOME": str(dinet_home()),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
    }
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        runtime_env={"env_vars": env_vars},
        configure_logging=False,
        **init_kwargs,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the Ray this process is already connected to, else join the one at ``address`` or
    start a local one; a Ray started or joined here is shut down on exit, also on errors and
    Ctrl-C."""
    if ray.is_initialized():
        yield
        return
    # Inside a Ray Job the supervisor sets RAY_ADDRESS: join that cluster with the job's own
    # runtime env (working dir, env vars) rather than start a second Ray.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()
