"""Connecting to Ray: the embedded local Ray by default, or a cluster by address."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from dinet_platform.paths import dinet_home

# Nothing phones home, and workers resolve the same $DINET_HOME as the driver.
WORKER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Workers and Serve replicas download checkpoints and models: no progress bar per file.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
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


# Above Ray's worker ports (10002-19999 by default), below the kernel's ephemeral range.
LOWEST_FREE_PORT = 20000
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing is bound to, for a server started next (see
    :func:`free_ports`)."""
    return free_ports(1)[0]


def free_ports(count: int) -> range:
    """``count`` consecutive ports on 127.0.0.1 that nothing is bound to, none handed out
    before in this process (a Ray node's worker ports are a range).

    Chosen below the kernel's ephemeral range (``ip_local_port_range``), where ``bind(0)``
    would pick: in the seconds before its server binds an ephemeral port, any outgoing
    connection on the machine may take it as its local address (seen: the dashboard of a
    starting local Ray lost its port that way, to Ray's own start-up)."""
    ephemeral_low = _ephemeral_ports()[0]
    # a kernel whose ephemeral range starts below ours leaves no such room: any port then
    upper = ephemeral_low if ephemeral_low - count > LOWEST_FREE_PORT else 65536
    for _ in range(1000):
        low = random.randrange(LOWEST_FREE_PORT, upper - count)
        ports = range(low, low + count)
        if _handed_out.isdisjoint(ports) and all(_bindable(port) for port in ports):
            _handed_out.update(ports)
            return ports
    raise RuntimeError(f"no {count} free consecutive ports in [{LOWEST_FREE_PORT}, {upper})")


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):  # not Linux: IANA's dynamic range
        return 49152, 65535


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's own ceiling


def serve_throughput_env() -> dict[str, str]:
    """Ray Serve's throughput mode for a Ray started here, unless the environment already
    chooses (``RAY_SERVE_ENABLE_HA_PROXY=0`` keeps Ray's Python HTTP proxy).

    HAProxy (shipped with ``ray[serve]``) takes HTTP on ``http_options`` and hands it straight
    to the ingress replicas, which listen themselves; deployments call each other over gRPC.
    This takes the Python proxy actor off every request: on 2 cores Serve alone carried
    1.8-3.2x the requests/s (``bench/serve.py``'s ``echo``). Its helper ports and files are made
    private to this Ray (Ray's defaults are fixed ports and /tmp/haproxy-serve), and an
    ingress replica drains for 1 s instead of 30 s when it stops: on one machine there is no
    external load balancer to wait for, only the HAProxy beside it.
    """
    if "RAY_SERVE_ENABLE_HA_PROXY" in os.environ:
        return {}
    state = tempfile.mkdtemp(prefix="dinet-haproxy-")  # short: it holds unix sockets
    _haproxy_states.append(state)
    atexit.register(shutil.rmtree, state, ignore_errors=True)
    atexit.register(stop_haproxy, state)  # atexit runs last-in first: before the rmtree
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # gRPC refuses messages over 4 MB by default: 42 float32 crops at mouth 64, or one
        # 4K frame. The request limits (max_frames_per_request) bound replies instead.
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MAX_MESSAGE_BYTES),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
    }


_haproxy_states: list[str] = []  # of the Rays this process started


def stop_haproxy(state: str) -> list[int]:
    """Stop the HAProxy processes whose files are in ``state`` (a private folder of
    :func:`serve_throughput_env`: every process naming it is this Ray's); their pids.

    Serve's HAProxy manager stops its HAProxy when Serve shuts down in order, but a process
    started by a reload (``-sf``) can outlive it: after Ray was shut down, 2 of about a dozen
    local Serve runs left one, re-parented to init, holding its ports."""
    prefix = state.rstrip("/").encode() + b"/"
    stopped = []
    with contextlib.suppress(FileNotFoundError):  # no /proc: not Linux
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if any(arg.startswith(prefix) for arg in args):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGTERM)
                    stopped.append(int(entry.name))
    return stopped


def shutdown_local_ray() -> None:
    """``ray.shutdown()``, then stop what the Rays this process started left behind."""
    ray.shutdown()
    while _haproxy_states:
        stop_haproxy(_haproxy_states.pop())


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration (for processes started meanwhile)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_local_ray(**init_kwargs) -> None:
    """Start a local Ray for this process, with what the platform needs from it.

    The dashboard runs (on 127.0.0.1, a free port) because Ray's State API lives there, and
    Ray Train's placement-group cleaner uses that API to release the resources of a training
    run whose controller died: without it a sweep trial stopped early by ASHA would keep its
    workers' CPUs reserved forever and the next trials could never start.

    Ray's own processes (and so Serve's controller, HAProxy and replicas) inherit
    :func:`serve_throughput_env`; this process's environment is left as it was, so a Ray
    cluster started later from it (``ray start``) does not share those ports.

    Always a new Ray of its own (``address="local"``): a bare ``ray.init()`` joins the cluster
    that the machine's last ``ray start`` recorded in ``$RAY_TMPDIR/ray/ray_current_cluster``
    (default /tmp/ray), even one that has since stopped. Joining a cluster is
    :func:`ray_session`'s ``address`` (``--address``, ``RAY_ADDRESS``).

    On loopback (:func:`loopback_node`): the node's IP is 127.0.0.1, so the GCS, raylet, agents
    and workers (Ray Train's, Serve's replicas and proxies) listen there, not on every
    interface; Ray 2.60 also turns its token auth on for a Ray started this way. What Ray
    2.60 binds to every interface whatever it is told: Serve's inter-deployment gRPC server
    in each replica (``[::]:0``) and HAProxy's stats and Prometheus frontends (read-only).
    """
    port = free_port()
    env_vars = {
        **WORKER_ENV,
        "DINET_HOME": str(dinet_home()),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
    }
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    # Every worker's, actor's and replica's output comes to this process, prefixed with its
    # name and pid: a `dinet` command writes it to its log under $DINET_HOME/logs
    # (console_logs.captured), `dinet --verbose` prints it.
    init_kwargs.setdefault("log_to_driver", True)
    init_kwargs.setdefault("address", "local")
    with environment(serve_throughput_env()), loopback_node():
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
def loopback_node() -> Iterator[None]:
    """A Ray that ``ray.init`` starts meanwhile in this process (not one it joins) takes
    127.0.0.1 as its node IP.

    ``ray.init(_node_ip_address="127.0.0.1")`` does not do it: Ray 2.60 replaces a loopback
    address with the machine's routable one (``services.resolve_ip_for_localhost``), unless
    its "no clusters on this platform" switch (``ray_constants.ENABLE_RAY_CLUSTER``, which
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` sets at import) is off. Off, the new node's processes
    are handed 127.0.0.1 and bind their gRPC servers to it; Ray's workers take the address
    from their node. The switch is off only for the duration, so joining a cluster later from
    this process is unaffected.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


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
        shutdown_local_ray()
