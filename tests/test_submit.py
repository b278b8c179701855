"""`dinet train --address`: each stage as its own Ray Job on a real token-auth Ray head."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest

from tests.cluster import RAY
from tests.support import PIPELINE, write_config


@pytest.mark.cluster
def test_each_stage_runs_as_a_ray_job_with_token_auth(ray_head, prepared_dir, tmp_path):
    address, env = ray_head.dashboard, ray_head.env
    path = write_config(tmp_path, PIPELINE, prepared_dir)
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


@pytest.mark.cluster
def test_submission_without_the_token_is_refused(ray_head, tmp_path):
    address, env = ray_head.dashboard, ray_head.env
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    result = subprocess.run(
        [str(RAY), "job", "submit", "--address", address, "--", "echo", "hi"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()


@pytest.mark.unit
def test_a_local_tracking_store_is_forwarded_with_a_warning_and_a_server_without():
    from dinet_platform.training.submit import job_environment
    from rich.console import Console

    for uri, warned in [("sqlite:////tmp/mlflow.db", True), ("http://head:5000", False)]:
        console = Console(record=True, width=300)
        env = job_environment({"MLFLOW_TRACKING_URI": uri, "DINET_HOME": "/shared/dinet",
                               "UNRELATED": "x"}, console)
        assert env == {"MLFLOW_TRACKING_URI": uri, "DINET_HOME": "/shared/dinet"}
        assert ("is a local store" in console.export_text()) is warned
