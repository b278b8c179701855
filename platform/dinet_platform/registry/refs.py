"""Model references -> local files: the one resolver of the platform.

Every command that takes a model (``train --init-from``, ``evaluate``, ``optimize``, ``dub``,
Serve, the sync expert of evaluation and of the training loss) names it one of these ways, and
:func:`resolve` turns each into a local path plus what it is:

- ``models:/NAME@ALIAS`` or ``models:/NAME/N``: a registry version. The alias is resolved to
  its version once, and the result is pinned (``models:/NAME/N``), so a concurrent alias move
  cannot mix two versions up;
- an MLflow run id: a stage run, or a pipeline run for its final finished stage (its
  ``checkpoint`` artifact);
- an artifact URI (``runs:/...``, ``s3://...``);
- a local file or directory (a platform checkpoint, an optimized directory, a public DINet
  ``.pth``, a sync expert).

What the path holds is for the caller's loader to read; this module only finds it.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dinet_platform.config.schema import TrackingConfig
from dinet_platform.tracking import (
    CHECKPOINT_ARTIFACT,
    KIND_TAG,
    PARENT_TAG,
    RUN_ID,
    STAGE_TAG,
    client_for,
    find_runs,
    get_run,
)

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ResolvedModel:
    reference: str
    """Pinned: ``models:/NAME/N`` for ``models:/NAME@ALIAS``, a pipeline's final stage run id
    for the pipeline's, otherwise the reference as given."""
    path: Path
    """Where the files are on this machine (downloaded for registry and run references)."""
    name: str
    """The registered model, ``run-<8 hex>`` for a run, or the file's name."""
    version: int | None = None
    alias: str | None = None
    run_id: str | None = None

    @property
    def details(self) -> dict[str, Any]:
        """Provenance for reports: the registry version, or the run."""
        if self.version is not None:
            return {"registered_model": self.name, "version": self.version}
        return {"run_id": self.run_id} if self.run_id else {}


def is_remote(reference: str) -> bool:
    """Whether ``reference`` needs the tracking store (registry URI, run id or artifact URI)."""
    return (reference.startswith(("models:/", "runs:/")) or bool(RUN_ID.match(reference))
            or "://" in reference)


def resolve(reference: str, client: MlflowClient | None = None) -> ResolvedModel:
    """The local files ``reference`` names (see the module docstring), or a ``ValueError``
    that says which part of it does not exist."""
    if not is_remote(reference):
        local = Path(reference).expanduser()
        if not local.exists():
            raise ValueError(
                f"model {reference!r} is neither a models:/ URI, an MLflow run id, an artifact "
                "URI, nor an existing file or directory"
            )
        return ResolvedModel(str(local), local, local.resolve().name or "model")
    client = client or client_for(TrackingConfig())
    version = registry_version(client, reference)
    if version is not None:
        number = int(version.version)
        match = MODEL_URI.match(reference)
        source = client.get_model_version_download_uri(version.name, str(number))
        return ResolvedModel(f"models:/{version.name}/{number}", _download(source, client),
                             version.name, number, match["alias"] if match else None,
                             version.run_id or None)
    if RUN_ID.match(reference):
        run = final_stage_run(client, get_run(client, reference))
        run_id = run.info.run_id
        path = _download(f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}", client)
        return ResolvedModel(run_id, path, f"run-{run_id[:8]}", run_id=run_id)
    return ResolvedModel(reference, _download(reference, client),
                         reference.rstrip("/").rsplit("/", 1)[-1] or "model")


def registry_version(client: MlflowClient, uri: str) -> ModelVersion | None:
    """The model version a ``models:/name@alias`` or ``models:/name/N`` URI names (None for
    other references); a clear error when it does not exist."""
    match = MODEL_URI.match(uri)
    if not match:
        if uri.startswith("models:/"):
            raise ValueError(f"{uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
        return None
    name = match["name"]
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(name, match["alias"])
        return client.get_model_version(name, match["version"])
    except MlflowException:
        what = f"alias {match['alias']!r}" if match["alias"] else f"version {match['version']}"
        raise ValueError(
            f"model {uri!r}: registered model {name!r} has no {what} in "
            f"{client.tracking_uri} (see `dinet registry list`)"
        ) from None


def final_stage_run(client: MlflowClient, run: Run) -> Run:
    """The run holding a model: a stage run itself, or a pipeline's last finished stage."""
    kind = run.data.tags.get(KIND_TAG)
    if kind == "stage":
        return run
    if kind == "pipeline":
        stages = [r for r in find_runs(client, run.info.experiment_id,
                                       {PARENT_TAG: run.info.run_id, KIND_TAG: "stage"})
                  if r.info.status == "FINISHED"]
        if not stages:
            raise ValueError(f"pipeline run {run.info.run_id} has no finished stage yet")
        return max(stages, key=lambda r: int(r.data.tags[STAGE_TAG]))
    return run


def _download(uri: str, client: MlflowClient) -> Path:
    destination = tempfile.mkdtemp(prefix="dinet-model-")
    try:
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=destination, tracking_uri=client.tracking_uri))
    except (MlflowException, OSError) as exc:
        raise ValueError(f"cannot fetch {uri!r}: {exc}") from None
