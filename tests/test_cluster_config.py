"""cluster.yaml: validated by Ray's own cluster-config schema, and consistent with this repo."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PROJECT_MOUNT = "/home/ray/dinet-platform"
REPLACED_ON_PREM = ("provider", "auth", "available_node_types", "head_node_type", "max_workers")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def launcher_view(config: dict) -> dict:
    """What `ray up` validates: the config merged with the provider's defaults."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_schema_validation(cluster):
    prepared = launcher_view(cluster)
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    workers = [v for k, v in prepared["available_node_types"].items()
               if k != prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing but drivers and services on the head
    assert workers and all(w["max_workers"] >= 1 for w in workers)
    assert all(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers)


def test_ray_validation_rejects_a_broken_copy(cluster):
    # The validation is not vacuous: an unknown key and a wrong type are refused.
    broken = copy.deepcopy(cluster)
    broken["max_wrokers"] = 4
    with pytest.raises(Exception, match="max_wrokers"):
        launcher_view(broken)
    broken = copy.deepcopy(cluster)
    broken["idle_timeout_minutes"] = "ten"
    with pytest.raises(Exception, match="ten"):
        launcher_view(broken)


def test_commented_on_prem_alternative_is_valid_too(cluster):
    text = CLUSTER_YAML.read_text().split("# --- On-prem alternative", 1)[1]
    commented = text[text.index("# provider:"):].splitlines()
    assert all(line.startswith("#") for line in commented if line.strip())
    block = "\n".join(line.removeprefix("#").removeprefix(" ") for line in commented)
    local = {k: v for k, v in copy.deepcopy(cluster).items() if k not in REPLACED_ON_PREM}
    local.update(yaml.safe_load(block))
    prepared = launcher_view(local)
    assert prepared["provider"]["type"] == "local"
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == 2


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(requirement: str) -> str:
    return re.split(r"[=<>~! ]", requirement, maxsplit=1)[0].split("[")[0]


def test_versions_match_the_project(cluster):
    deps = {pinned(d): d for d in pyproject()["project"]["dependencies"]}
    # The image's Ray is the Ray this project pins (and the one installed here).
    image = cluster["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image
    assert deps["ray"].endswith(f"=={'.'.join(ray.__version__.split('.')[:2])}.*")
    # The CUDA torch installed on the cluster is the version pyproject pins.
    torch_pin = deps["torch"].split("==")[1]
    setup = " ".join(cluster["setup_commands"])
    assert f'"torch=={torch_pin}"' in setup and "download.pytorch.org/whl/cu" in setup


def test_setup_commands_reference_real_files_of_this_repo(cluster):
    mounts = cluster["file_mounts"]
    assert mounts[PROJECT_MOUNT] == "."
    referenced = []
    for command in cluster["setup_commands"] + cluster["head_start_ray_commands"]:
        for token in shlex.split(command.replace(";", " "), comments=False):
            if token.startswith(PROJECT_MOUNT):
                referenced.append(token)
    assert referenced, "setup commands install nothing from the project"
    for remote in referenced:
        local = ROOT / remote.removeprefix(PROJECT_MOUNT).lstrip("/")
        assert local.exists(), f"{remote} -> {local} does not exist"
        if local.is_dir():  # `pip install -e DIR` needs a project there
            assert (local / "pyproject.toml").is_file()
    # The token file mount is the default path Ray reads on every node.
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_security_choices(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["setup_commands"])
    assert ". ~/.dinet_env" in head_start
    assert all(". ~/.dinet_env" in c for c in cluster["worker_start_ray_commands"] if "start" in c)
    # MLflow artifacts to S3, store on the persistent volume.
    assert "--artifacts-destination s3://" in head_start
    assert "sqlite:////mnt/dinet-state/" in head_start
    # MLflow: every request authenticated (the basic-auth app, its extra at the pinned MLflow),
    # its secrets made on the head, the nodes' account mounted where MLflow reads it.
    assert "mlflow server --app-name basic-auth" in head_start
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY=" in head_start
    assert "MLFLOW_AUTH_CONFIG_PATH=" in head_start
    mlflow = next(d for d in pyproject()["project"]["dependencies"] if pinned(d) == "mlflow")
    head_setup = " ".join(cluster["head_setup_commands"])
    assert f'"mlflow[auth]=={mlflow.split("==")[1]}"' in head_setup
    assert "/home/ray/.mlflow/credentials" in cluster["file_mounts"]
