"""Multi-node on one machine: a Ray head and a second Ray node on loopback (token auth), a real
``mlflow server``, and a 2-worker training stage submitted as a Ray Job through ``dinet train
--address`` (with its ``--set`` travelling along) spread over both nodes with a shared storage
path; a job submission without the token is refused.

Marked ``cluster``: ``make test`` runs it (with the other cluster tests) in a pytest process of
its own after the rest, without the session's local Ray; ``make cluster-test`` runs only those.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import mlflow
import pytest

from tests.cluster import RAY, mlflow_server_starting, ray_cluster
from tests.support import PIPELINE, TINY_STAGE, merged, write_config

pytestmark = pytest.mark.cluster


def multinode_config(storage) -> dict:
    return merged(PIPELINE, {
        "name": "multinode",
        "stages": [TINY_STAGE],
        # Each node has 1 CPU and a worker takes 0.6: the two workers cannot share a node,
        # and the loader tasks (0.2) fit beside them.
        "training": {"cpus_per_worker": 0.6, "loader_cpus": 0.2, "max_failures": 0,
                     "storage_path": str(storage)},
    })


def output(result: subprocess.CompletedProcess) -> str:
    return f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def stage_runs(client: mlflow.MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], "tags.`dinet.kind` = 'stage'")


# Two Ray nodes, an mlflow server and two training runs: ~5 min on 2 quiet cores, several times
# that when the machine is shared, so it gets more than the suite's per-test 900 s.
@pytest.mark.timeout(2400)
def test_a_stage_submitted_as_a_ray_job_spreads_over_two_nodes(prepared_dir, tmp_path):
    storage = tmp_path / "shared-storage"  # one filesystem: shared by both nodes
    path = write_config(tmp_path, multinode_config(storage), prepared_dir)
    # The job trains into the experiment its --set names.

    started = time.monotonic()

    def progress(message: str) -> None:  # shown with -s, and in the report of a failure
        print(f"[multinode {time.monotonic() - started:.0f}s] {message}", flush=True)

    with mlflow_server_starting(tmp_path / "mlflow") as tracking_ready, \
            ray_cluster([1, 1]) as cluster:
        tracking = tracking_ready()
        progress("2 Ray nodes and the mlflow server are up")
        env = {**cluster.env, "MLFLOW_TRACKING_URI": tracking,
               "DINET_HOME": str(tmp_path / "home")}

        # Each stage as a Ray Job through the dashboard (token auth), from any machine; the
        # job's driver joins the cluster by the address the job supervisor gives it.
        submitted = subprocess.run(
            [sys.executable, "-m", "dinet_platform", "train", "--config", str(path),
             "--set", "tracking.experiment=multinode-job", "--address", cluster.dashboard],
            env=env, capture_output=True, text=True, timeout=1200)
        assert submitted.returncode == 0, output(submitted)
        assert "submitted Ray Job" in submitted.stdout, output(submitted)
        progress("the stage trained as a Ray Job")

        tokenless = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        tokenless["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
        refused = subprocess.run(
            [str(RAY), "job", "submit", "--address", cluster.dashboard, "--", "echo", "hi"],
            env=tokenless, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "token" in output(refused).lower(), output(refused)

        nodes = {node["node_id"] for node in cluster.alive_nodes()}
        workers = cluster.state("actors", "class_name=RayTrainWorker")

        client = mlflow.MlflowClient(tracking)
        runs = {name: stage_runs(client, name) for name in ("multinode-job",)}
        # Artifacts go through the server (its artifact proxy) into its artifact root.
        checkpoints = {
            run.info.run_id: {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
            for found in runs.values() for run in found
        }

    progress("everything stopped")
    assert len(nodes) == 2
    # The job's run placed one worker on each node.
    nodes_by_job = defaultdict(set)
    for actor in workers:
        nodes_by_job[actor["job_id"]].add(actor["node_id"])
    assert len(nodes_by_job) == 1, workers
    assert all(used == nodes for used in nodes_by_job.values()), nodes_by_job

    for name, found in runs.items():
        assert len(found) == 1, name
        run = found[0]
        assert run.info.status == "FINISHED", name
        assert run.data.params["num_workers"] == "2"
        assert run.data.metrics["best_val_mouth_psnr"] > 0
        assert "checkpoint/checkpoint.pt" in checkpoints[run.info.run_id], name

    stored = list((tmp_path / "mlflow" / "artifacts").rglob("checkpoint/checkpoint.pt"))
    assert len(stored) == 1, stored

    # The shared storage path holds the run's Ray Train checkpoints.
    trained = sorted(p.name for p in storage.iterdir() if p.name.startswith("stage64-"))
    assert len(trained) == 1, trained
    for name in trained:
        assert any((storage / name).glob("checkpoint_*/checkpoint.pt")), name

