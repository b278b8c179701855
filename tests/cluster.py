"""Real Ray clusters and an MLflow server on loopback, for the cluster tests.

``ray start`` uses fixed default ports for the node manager, object manager, dashboard agent,
runtime-env agent, metrics and workers; the test session's own local Ray (``ray_local``) may
already hold them, and then the new node's dashboard agent never comes up ("No available agent
to submit job"). So every node gets an explicit free port for every port option, and a worker
port range no other node uses. Every process started here is stopped by its own id (its process
group for the MLflow server, which forks workers), also when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dinet_platform.ray_runtime import WORKER_ENV, free_port, free_ports

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
MLFLOW = BIN / "mlflow"
WORKER_PORTS = 60  # one port per worker process a node may run at once
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # tiny models; leave the machine's memory to the rest


def node_port_options() -> list[str]:
    """Explicit ports for everything a Ray node listens on (head-only ports excluded)."""
    workers = free_ports(WORKER_PORTS)
    low, high = workers[0], workers[-1]
    options = {
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
        "min-worker-port": low,
        "max-worker-port": high,
    }
    return [f"--{name}={value}" for name, value in options.items()]


def _stop(process: subprocess.Popen, group: bool = False, timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; with ``group`` the whole process group the
    process leads (its forked workers may outlive it)."""

    def send(sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig) if group else process.send_signal(sig)

    if process.poll() is not None and not group:
        return
    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
    if group:
        send(signal.SIGKILL)  # any worker that ignored the SIGTERM


def wait_http(url: str, token: str | None = None, timeout_s: float = 300,
              process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers 200; fail early (with its log) if ``process`` died."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up within {timeout_s:.0f}s")
        time.sleep(1)


class NodeStartError(RuntimeError):
    """A Ray node did not start (on a machine this busy, its raylet can miss Ray's fixed 30 s
    registration deadline): worth one more try with fresh ports."""


@dataclass
class RayCluster:
    """A token-auth Ray cluster of ``ray start --block`` processes on 127.0.0.1."""

    token: str
    env: dict[str, str]
    temp_dir: str
    gcs_address: str = ""
    dashboard_port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, options: list[str], name: str) -> subprocess.Popen:
        log = Path(self.temp_dir) / f"{name}.log"
        process = subprocess.Popen(
            [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
             f"--object-store-memory={OBJECT_STORE_BYTES}", *options],
            env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def start_head(self, num_cpus: float) -> None:
        gcs_port, self.dashboard_port = free_port(), free_port()
        head = self._start(
            ["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}",
             f"--ray-client-server-port={free_port()}", f"--num-cpus={num_cpus}",
             *node_port_options()],
            "head",
        )
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.wait_for_nodes(1, head)

    def add_node(self, num_cpus: float) -> None:
        index = len(self.processes)
        node = self._start([f"--address={self.gcs_address}", f"--num-cpus={num_cpus}",
                            *node_port_options()], f"node{index}")
        self.wait_for_nodes(index + 1, node)

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, process: subprocess.Popen,
                       timeout_s: float = 300) -> None:
        """Wait until ``count`` nodes are alive; fail with the log of ``process`` (the node
        just started) when it exits or the wait times out."""
        log = Path(self.temp_dir) / ("head.log" if count == 1 else f"node{count - 1}.log")
        deadline = time.monotonic() + timeout_s
        while True:
            if any(p.poll() is not None for p in self.processes):
                raise NodeStartError(f"a ray node exited:\n{log.read_text()[-3000:]}")
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except RuntimeError:  # the dashboard is not up yet, or a node still registers
                pass
            if time.monotonic() > deadline:
                raise NodeStartError(f"{count} Ray nodes did not come up within "
                                     f"{timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)

    def state(self, resource: str, *filters: str) -> list[dict]:
        """``ray list RESOURCE`` (State API through the dashboard, with the token)."""
        args = [str(RAY), "list", resource, "--address", self.dashboard, "--format", "json",
                "--detail", "--limit", "10000"]
        for condition in filters:
            args += ["--filter", condition]
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"ray list {resource} failed: {result.stderr[-2000:]}")
        if result.stdout.startswith("No resource"):  # how the CLI says "[]"
            return []
        return json.loads(result.stdout)

    def stop(self) -> None:
        # Worker nodes before the head, each by its own process; the temp dir last.
        try:
            for process in reversed(self.processes):
                _stop(process)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env(token: str) -> dict[str, str]:
    # Drivers and jobs run `python ...`: the cluster's python is this virtual environment's.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **WORKER_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": path}
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def ray_cluster(nodes_cpus: list[float], attempts: int = 2) -> Iterator[RayCluster]:
    """A head with ``nodes_cpus[0]`` CPUs plus one node per further entry. A cluster whose
    nodes fail to start is stopped and started again from scratch, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        token = secrets.token_hex(16)
        # A short private temp dir: Ray's socket paths must stay under the UNIX limit, and the
        # session must not be confused with the test session's own local Ray.
        cluster = RayCluster(token=token, env=cluster_env(token),
                             temp_dir=tempfile.mkdtemp(prefix="/tmp/rc"))
        try:
            cluster.start_head(nodes_cpus[0])
            for cpus in nodes_cpus[1:]:
                cluster.add_node(cpus)
        except NodeStartError:
            cluster.stop()
            if attempt == attempts:
                raise
            continue
        except BaseException:
            cluster.stop()
            raise
        try:
            yield cluster
        finally:
            cluster.stop()
        return


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on loopback with its own SQLite store and artifact root;
    yields its URI."""
    with mlflow_server_starting(root) as ready:
        yield ready()


@contextmanager
def mlflow_server_starting(root: Path) -> Iterator[Callable[[], str]]:
    """:func:`mlflow_server` without waiting for it: yields a function that waits until it
    answers and returns its URI (start a Ray cluster meanwhile)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server forks its workers
    )

    def ready() -> str:
        wait_http(f"http://127.0.0.1:{port}/health", process=process, log=log)
        return f"http://127.0.0.1:{port}"

    try:
        yield ready
    finally:
        _stop(process, group=True)

