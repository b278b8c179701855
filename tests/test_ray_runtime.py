"""The embedded Ray: a Ray of its own, on loopback, whatever else the machine runs; a cluster
only when asked for."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def recorded_cluster(tmp_path, monkeypatch):
    """What ``ray start --head`` leaves in Ray's temp dir, and keeps when the cluster goes away
    without ``ray stop``: its address in ``ray/ray_current_cluster``. Under a private
    ``RAY_TMPDIR``, so the machine's /tmp/ray (other Rays' sessions) is never touched."""
    from ray._private import services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("192.0.2.10:6379\n")  # nobody there
    # A bare ray.init() would join it (and refuse num_cpus: "When connecting to an existing
    # cluster, num_cpus and num_gpus must not be provided").
    assert services.canonicalize_bootstrap_address(None) == "192.0.2.10:6379"
    return "192.0.2.10:6379"


@pytest.fixture
def ray_calls(monkeypatch):
    """``ray.init`` and ``ray.shutdown`` recorded instead of run, as if no Ray were running in
    this process: each init's arguments, and the node IP a Ray started by that call would take
    (None where a Ray does run here, in a lane that shares the session's: its IP would be
    that Ray's)."""
    import ray
    from ray._private import services

    calls = []
    running = ray.is_initialized()

    def init(**kwargs):
        calls.append({**kwargs, "node_ip": None if running else services.get_node_ip_address()})

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # no HAProxy state dir to make
    return calls


@pytest.mark.unit
def test_the_embedded_ray_starts_its_own_even_when_a_cluster_was_recorded(recorded_cluster,
                                                                          ray_calls):
    from dinet_platform.ray_runtime import ray_session, start_local_ray
    from ray._private import ray_constants, services

    start_local_ray(num_cpus=1)
    [call] = ray_calls
    # The address given is one Ray starts a new local instance for: the record is ignored,
    # and num_cpus is the new instance's.
    assert services.canonicalize_bootstrap_address(call["address"]) is None
    assert call["num_cpus"] == 1
    assert call["node_ip"] in ("127.0.0.1", None)  # the new node's IP: its ports' address
    assert ray_constants.ENABLE_RAY_CLUSTER  # switched back: joining later works as before

    # A cluster is joined when asked for, by argument or RAY_ADDRESS, never by the record.
    with ray_session():
        pass
    with ray_session("10.0.0.5:6379"):
        pass
    assert ray_calls[1]["address"] == "local"
    assert ray_calls[2]["address"] == "10.0.0.5:6379"
    assert ray_calls[2]["node_ip"] in (services.get_node_ip_address(), None)  # as it was


@pytest.mark.unit
def test_ray_address_in_the_environment_joins_that_cluster(recorded_cluster, ray_calls,
                                                          monkeypatch):
    from dinet_platform.ray_runtime import ray_session

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")  # what a Ray Job's driver is given
    with ray_session():
        pass
    assert [call["address"] for call in ray_calls] == ["10.0.0.7:6379"]


def routable_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.ray
def test_the_embedded_ray_listens_on_loopback_only(ray_local):
    ray = ray_local
    [node] = [n for n in ray.nodes() if n["Alive"]]
    assert node["NodeManagerAddress"] == "127.0.0.1"
    gcs_host, gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    assert gcs_host == "127.0.0.1"
    address = routable_ip()
    if address is None:
        pytest.skip("no routable address to try the ports from")
    # The GCS and raylet ports answer on loopback and not on the machine's other address.
    for port in (int(gcs_port), node["NodeManagerPort"], node["ObjectManagerPort"]):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((address, port)) != 0, f"port {port} open on {address}"


@pytest.mark.unit
def test_what_a_private_haproxy_folder_names_is_stopped_and_nothing_else(tmp_path):
    """A process whose arguments name the Ray's private HAProxy folder (as a reloaded HAProxy
    left behind names its config) is stopped by its pid; one naming a sibling folder is not."""
    import subprocess
    import sys

    from dinet_platform.ray_runtime import stop_haproxy

    state, sibling = tmp_path / "dinet-haproxy-a", tmp_path / "dinet-haproxy-ab"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)", "-f"]
    ours = subprocess.Popen([*sleep, f"{state}/0123abcd/haproxy.cfg"])
    other = subprocess.Popen([*sleep, f"{sibling}/0123abcd/haproxy.cfg"])
    try:
        assert stop_haproxy(str(state)) == [ours.pid]
        assert ours.wait(10) != 0
        assert other.poll() is None
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()


@pytest.mark.unit
def test_free_ports_are_bindable_distinct_and_outside_the_ephemeral_range():
    """Ports for servers started next: never one an outgoing connection may take meanwhile,
    never one another caller in this process was given, and free now."""
    from dinet_platform.ray_runtime import _ephemeral_ports, free_port, free_ports

    low, high = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    workers = free_ports(60)  # a node's worker ports: consecutive, none given out before
    assert len(set(ports)) == 50 and set(ports).isdisjoint(workers)
    assert len(workers) == 60 and workers[-1] - workers[0] == 59
    assert not any(low <= port <= high for port in [*ports, *workers])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free now: this raises if not
