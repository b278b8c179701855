"""The one model-reference resolver, against a real (SQLite) MLflow store: every way a user can
name a model resolves to the same files, pinned, and every dead end says what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from dinet_platform.registry.refs import resolve
from dinet_platform.registry.versions import register_version
from dinet_platform.tracking import CHECKPOINT_ARTIFACT, KIND_TAG, PARENT_TAG, STAGE_TAG
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.unit


@pytest.fixture
def store(home, tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("refs", (tmp_path / "artifacts").as_uri())
    pipeline = client.create_run(experiment, tags={KIND_TAG: "pipeline"}).info.run_id
    stages = {}
    for size in (64, 96):
        run = client.create_run(experiment, tags={KIND_TAG: "stage", STAGE_TAG: str(size),
                                                  PARENT_TAG: pipeline}).info.run_id
        folder = tmp_path / f"stage{size}"
        folder.mkdir()
        (folder / "checkpoint.pt").write_text(f"weights of stage {size}")
        client.log_artifacts(run, str(folder), CHECKPOINT_ARTIFACT)
        client.set_terminated(run, "FINISHED")
        stages[size] = run
    version = register_version(client, "dinet", f"runs:/{stages[96]}/{CHECKPOINT_ARTIFACT}",
                               stages[96], {"dinet.mouth_size": "96"})
    client.set_registered_model_alias("dinet", "production", str(version))
    return client, pipeline, stages, version


def read(path: Path) -> str:
    return (path / "checkpoint.pt").read_text()


def test_every_kind_of_reference_finds_the_same_files(store):
    client, pipeline, stages, version = store
    by_alias = resolve("models:/dinet@production", client)
    assert (by_alias.reference, by_alias.version, by_alias.alias) == (
        f"models:/dinet/{version}", version, "production")  # pinned to the version
    assert read(by_alias.path) == "weights of stage 96"
    assert by_alias.details == {"registered_model": "dinet", "version": version}
    assert read(resolve(f"models:/dinet/{version}", client).path) == "weights of stage 96"
    by_pipeline = resolve(pipeline, client)  # a pipeline run means its final stage
    assert by_pipeline.reference == stages[96] and by_pipeline.details == {"run_id": stages[96]}
    assert read(by_pipeline.path) == "weights of stage 96"
    assert read(resolve(stages[64], client).path) == "weights of stage 64"
    uri = f"runs:/{stages[64]}/{CHECKPOINT_ARTIFACT}"
    assert read(resolve(uri, client).path) == "weights of stage 64"
    local = resolve(str(resolve(uri, client).path))  # a local directory needs no store
    assert read(local.path) == "weights of stage 64" and local.version is None


def test_registered_versions_carry_who_and_which_code(store):
    client, _, _, version = store
    tags = client.get_model_version("dinet", str(version)).tags
    assert tags["dinet.mouth_size"] == "96"
    assert {"dinet.git_commit", "dinet.registered_by", "dinet.registered_at"} <= set(tags)
    assert int(client.get_model_version_by_alias("dinet", "candidate").version) == version


@pytest.mark.parametrize("reference, message", [
    ("models:/dinet/7", "has no version 7"),
    ("models:/dinet@staging", "has no alias 'staging'"),
    ("models:/other@production", "registered model 'other'"),
    ("models:/dinet", "is not a models:/NAME@ALIAS"),
    ("f" * 32, "does not exist"),
    ("/no/such/checkpoint", "neither a models:/ URI"),
])
def test_dead_ends_say_what_is_missing(store, reference, message):
    with pytest.raises(ValueError, match=message):
        resolve(reference, store[0])
