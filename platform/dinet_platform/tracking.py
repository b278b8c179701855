"""MLflow at the edge: the tracking store, experiments, run lookup and the tags tying runs.

The embedded default keeps everything under ``$DINET_HOME``: the SQLite tracking/registry store
and the artifact root of the experiments this platform creates there. A real ``mlflow server``
(``$MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri``) decides its own artifact location.
"""

from __future__ import annotations

import os
import re

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dinet_platform.config.schema import TrackingConfig
from dinet_platform.paths import dinet_home, tracking_uri

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A "Downloading artifacts" bar per download (a checkpoint, a config, a model: dozens per demo)
# says nothing a log or a console needs; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true brings it back.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CHECKPOINT_ARTIFACT = "checkpoint"
"""The artifact of a stage run (and of a sync expert's run) holding its checkpoint."""

# Tags that tie runs together (MLflow's own parent tag makes the UI nest child runs).
PARENT_TAG = "mlflow.parentRunId"
PIPELINE_TAG = "dinet.pipeline_key"
STAGE_TAG = "dinet.stage"
KIND_TAG = "dinet.kind"
DATA_HASH_TAG = "dinet.data_hash"
"""On a pipeline run: the content hash of the shards it trained on (manifest ``content_hash``)."""


def client_for(config: TrackingConfig) -> MlflowClient:
    uri = tracking_uri(config.tracking_uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created on first use."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (dinet_home() / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Created concurrently by another process since we looked: use that one.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a clear error naming the id and the store."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ValueError(
            f"MLflow run {run_id!r} does not exist in {client.tracking_uri}"
        ) from None


def find_runs(client: MlflowClient, experiment: str, tags: dict[str, str]) -> list[Run]:
    """Runs of an experiment with all the given tags, newest first."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs(
        [experiment], filter_string=query, order_by=["attributes.start_time DESC"]
    )
