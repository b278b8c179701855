"""`dinet train --address`: each stage as its own Ray Job on a real token-auth Ray head."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from dinet_platform.ray_runtime import free_port

RAY = Path(sys.executable).with_name("ray")


def wait_for_dashboard(port: int, token: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray dashboard on port {port} did not come up")
        time.sleep(1)


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head` on loopback with token auth, stopped by its own process."""
    token = secrets.token_hex(16)
    # A short private temp dir: Ray's socket paths must stay under the UNIX limit, and the
    # session must not be confused with the test session's own local Ray.
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
    # Jobs run `python ...`: the cluster's python is this virtual environment's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={free_port()}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_dashboard(dashboard, token)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_each_stage_runs_as_a_ray_job_with_token_auth(ray_head, prepared_dir, tmp_path):
    from tests.test_training import TINY

    address, env = ray_head
    config = {**TINY, "data": {**TINY["data"], "shards": str(prepared_dir)}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**env, "MLFLOW_TRACKING_URI": tracking, "DINET_HOME": str(tmp_path / "home")}

    result = subprocess.run(
        [sys.executable, "-m", "dinet_platform", "train", "--config", str(path),
         "--to-stage", "64", "--set", "stages.0.epochs=1", "--address", address],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted Ray Job" in result.stdout

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = [r for r in runs if r.data.tags.get("dinet.kind") == "stage"]
    assert [r.data.tags["dinet.stage"] for r in stages] == ["64"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert stages[0].data.params["epochs"] == "1"  # the --set travelled with the job


def test_submission_without_the_token_is_refused(ray_head, tmp_path):
    address, env = ray_head
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    result = subprocess.run(
        [str(RAY), "job", "submit", "--address", address, "--", "echo", "hi"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()
