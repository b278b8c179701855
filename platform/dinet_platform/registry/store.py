"""The MLflow Model Registry: register, promote through gates, roll back, list.

A registered version's artifact is the platform checkpoint directory of the final stage minus
the optimizer state (``checkpoint.pt`` + ``config.yaml``: tensors and numbers only, read with
``torch.load(weights_only=True)``), logged to the stage run as ``registered_model`` and
registered with that run as the version's source (``runs:/<stage run>/registered_model``), so
``models:/dinet@production`` downloads to a directory every loader of the platform accepts.

Aliases: ``candidate`` (set on registration), ``staging`` and ``production`` (set by
:func:`promote` when the gates pass, or with ``force`` and a reason), and for each promotable
alias the version it replaced: ``previous`` for production, ``previous-staging`` for staging
(so a staging promotion never overwrites production's rollback target).

Aliases never name a missing version: a version is looked up before any alias is pointed at
it, the rollback alias is set before the main alias moves (an interruption in between leaves
both naming existing versions), and nothing is ever deleted. Every bad input -- an unknown
version or alias, a run that holds no model, evaluation data without held-out videos -- is
refused before the registry is touched.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console

from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.data.shards import ShardError, load_manifest
from dinet_platform.evaluation.evaluate import PASTE_REFERENCE, load_model
from dinet_platform.evaluation.job import (
    EvaluationOutcome,
    final_stage_run,
    git_commit,
    run_evaluation,
    who,
)
from dinet_platform.registry.gates import GateResult, check_gates, gates_passed, summary
from dinet_platform.tracking import (
    DATA_HASH_TAG,
    KIND_TAG,
    PARENT_TAG,
    get_run,
    resolve_checkpoint,
)
from dinet_platform.training.checkpoint import load_checkpoint, save_checkpoint
from dinet_platform.training.stage import default_shards

CANDIDATE, STAGING, PRODUCTION = "candidate", "staging", "production"
PROMOTION_TARGETS = (STAGING, PRODUCTION)
MODEL_ARTIFACT = "registered_model"
SOURCE_RUN_TAG = "dinet.source_run"
KEY_METRICS = ("mouth_psnr", "mouth_ssim", "lse_c", "warp_error")
TAG_LIMIT = 5000


def previous_alias(alias: str) -> str:
    """Where the holder an alias replaced is kept for rollback."""
    return "previous" if alias == PRODUCTION else f"previous-{alias}"


def registry_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException:  # created concurrently since we looked
            client.get_registered_model(name)


def require_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    """The version, or a clear error listing the versions that exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        pass
    try:
        existing = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        existing = []
    where = f"versions {existing}" if existing else "no versions"
    raise ValueError(f"registered model {name!r} has no version {version} ({where})")


def alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def move_alias(client: MlflowClient, name: str, alias: str, version: int) -> int | None:
    """Point ``alias`` at ``version`` (which must exist); the holder it replaces becomes
    :func:`previous_alias`. Returns that old holder (None if there was none)."""
    require_version(client, name, version)
    holder = alias_holder(client, name, alias)
    if holder is not None and holder != version:
        client.set_registered_model_alias(name, previous_alias(alias), str(holder))
    client.set_registered_model_alias(name, alias, str(version))
    return holder


def tag_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 3] + "..."


def _metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {f"metric.{name}": f"{value:.6g}" for name, value in metrics.items()}


# --------------------------------------------------------------------------- register


@dataclass
class RegistrationOutcome:
    name: str
    version: int
    existed: bool
    source_run: str
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: EvaluationOutcome | None = None


def _data_hash(client: MlflowClient, stage_run, model_config: DINetConfig) -> str:
    parent = stage_run.data.tags.get(PARENT_TAG)
    if parent:
        value = get_run(client, parent).data.tags.get(DATA_HASH_TAG)
        if value:
            return value
    try:  # pipelines from before the data hash was recorded: the shards the config names
        return str(load_manifest(default_shards(model_config))["content_hash"])
    except (ShardError, KeyError):
        return "unknown"


def register_model(
    config: DINetConfig,
    client: MlflowClient,
    reference: str,
    *,
    evaluate: bool = True,
    shards: str | Path | None = None,
    console: Console | None = None,
) -> RegistrationOutcome:
    """Register the final stage of pipeline run ``reference`` (or stage run) as a new version
    of ``tracking.registered_model`` with alias ``candidate``.

    Registering the same stage run again returns its existing version (idempotent). With
    ``evaluate``, the model is evaluated first (held-out data of ``shards`` or the config) and
    its metrics become tags; a failed evaluation leaves the registry unchanged.
    """
    console = console or Console()
    name = config.tracking.registered_model
    stage_run = final_stage_run(client, get_run(client, reference))
    if stage_run.data.tags.get(KIND_TAG) != "stage":
        raise ValueError(f"run {reference} is neither a pipeline nor a training stage run: "
                         "it holds no model to register")
    if stage_run.info.status != "FINISHED":
        raise ValueError(f"stage run {stage_run.info.run_id} has not finished "
                         f"({stage_run.info.status}): nothing final to register")
    run_id = stage_run.info.run_id
    for version in all_versions(client, name):
        if version.tags.get(SOURCE_RUN_TAG) == run_id:
            console.print(f"stage run {run_id} is already registered as {name} version "
                          f"{version.version}")
            return RegistrationOutcome(name, int(version.version), True, run_id)
    state = load_checkpoint(resolve_checkpoint(run_id, client))
    model_config = DINetConfig.model_validate(state["config"])
    with tempfile.TemporaryDirectory(prefix="dinet-register-") as tmp:
        model_dir = Path(tmp) / MODEL_ARTIFACT
        save_checkpoint(model_dir, {k: v for k, v in state.items() if k != "format"}
                        | {"optimizers": None})
        metrics: dict[str, float] = {}
        evaluation = None
        if evaluate:
            candidate = load_model("candidate", model_dir, source=f"runs:/{run_id}")
            evaluation = run_evaluation(config, client, [], models=[candidate], shards=shards,
                                        console=console)
            metrics = evaluation.result.metrics["candidate"]
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    tags = {
        SOURCE_RUN_TAG: run_id,
        "dinet.pipeline_run": stage_run.data.tags.get(PARENT_TAG, ""),
        "dinet.config": tag_text(dump_config(model_config)),
        "dinet.data_hash": _data_hash(client, stage_run, model_config),
        "dinet.git_commit": git_commit(),
        "dinet.stages": ",".join(str(s.mouth_size) for s in model_config.stages),
        "dinet.mouth_size": str(state["mouth_size"]),
        "dinet.variant": model_config.model.variant,
        "dinet.width": str(model_config.model.width),
        "dinet.registered_by": who(),
        "dinet.registered_at": registry_stamp(),
        **_metric_tags(metrics),
    }
    if evaluation is not None:
        tags["dinet.eval_run"] = evaluation.run_id
    ensure_registered_model(client, name, "DINet lip-sync generators: checkpoint.pt (weights, "
                            "torch.load(weights_only=True)) + config.yaml.")
    version = client.create_model_version(
        name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags,
        description=f"mouth {state['mouth_size']} ({model_config.name}), stages "
                    f"{tags['dinet.stages']}")
    number = int(version.version)
    client.set_registered_model_alias(name, CANDIDATE, str(number))
    return RegistrationOutcome(name, number, False, run_id, metrics, evaluation)


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        return []


# --------------------------------------------------------------------------- promote


@dataclass
class PromotionOutcome:
    name: str
    version: int
    alias: str
    holder: int | None
    moved: bool
    forced: bool
    gates: list[GateResult]
    evaluation: EvaluationOutcome | None


def promote(
    config: DINetConfig,
    client: MlflowClient,
    version: int,
    alias: str,
    *,
    force: bool = False,
    reason: str | None = None,
    shards: str | Path | None = None,
    console: Console | None = None,
) -> PromotionOutcome:
    """Evaluate ``version`` against the current holder of ``alias`` on the same held-out data
    in one evaluation run, and move the alias only if the gates pass (or ``force`` with a
    ``reason``). The replaced holder becomes :func:`previous_alias`."""
    console = console or Console()
    name = config.tracking.registered_model
    if alias not in PROMOTION_TARGETS:
        raise ValueError(f"can only promote to {' or '.join(PROMOTION_TARGETS)}, not {alias!r}")
    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: say why the gates are overridden")
    require_version(client, name, version)
    holder = alias_holder(client, name, alias)
    if holder == version:
        raise ValueError(f"version {version} already holds {alias!r}: nothing to promote")
    references = [("candidate", f"models:/{name}/{version}")]
    if holder is not None:
        references.append((alias, f"models:/{name}/{holder}"))
    evaluation = run_evaluation(
        config, client, references, shards=shards, console=console,
        tags={"dinet.promotion": f"{name} v{version} -> {alias}"},
        extra={"promotion": {"version": version, "alias": alias, "holder": holder}})
    metrics = evaluation.result.metrics
    gates = check_gates(metrics["candidate"], metrics.get(alias), config.evaluation.gates,
                        metrics.get(PASTE_REFERENCE))
    passed = gates_passed(gates)
    prefix = f"dinet.gates.{alias}"
    verdict = "passed" if passed else ("forced" if force else "refused")
    client.set_model_version_tag(name, str(version), prefix, verdict)
    client.set_model_version_tag(name, str(version), f"{prefix}.detail", tag_text(summary(gates)))
    client.set_model_version_tag(name, str(version), f"{prefix}.eval_run", evaluation.run_id)
    client.set_model_version_tag(name, str(version), f"{prefix}.holder", str(holder or ""))
    if not passed and not force:
        return PromotionOutcome(name, version, alias, holder, False, False, gates, evaluation)
    move_alias(client, name, alias, version)
    record = {
        f"dinet.promoted.{alias}.by": who(),
        f"dinet.promoted.{alias}.at": registry_stamp(),
        f"dinet.promoted.{alias}.from_version": str(holder or ""),
        f"dinet.promoted.{alias}.forced": str(bool(force and not passed)).lower(),
    }
    if force and not passed:
        record[f"dinet.promoted.{alias}.reason"] = tag_text(reason)
    for key, value in record.items():
        client.set_model_version_tag(name, str(version), key, value)
    return PromotionOutcome(name, version, alias, holder, True, force and not passed, gates,
                            evaluation)


# --------------------------------------------------------------------------- rollback


@dataclass
class RollbackOutcome:
    name: str
    alias: str
    restored: int
    replaced: int


def rollback(
    config: DINetConfig, client: MlflowClient, alias: str, reason: str | None = None
) -> RollbackOutcome:
    """Point ``alias`` back at the version it replaced (``previous`` for production); the
    version rolled back from becomes the rollback target, so a second rollback undoes it."""
    name = config.tracking.registered_model
    if alias not in PROMOTION_TARGETS:
        raise ValueError(f"can only roll back {' or '.join(PROMOTION_TARGETS)}, not {alias!r}")
    current = alias_holder(client, name, alias)
    if current is None:
        raise ValueError(f"registered model {name!r} has no alias {alias!r}: nothing to roll "
                         "back")
    target_alias = previous_alias(alias)
    previous = alias_holder(client, name, target_alias)
    if previous is None:
        raise ValueError(f"no {target_alias!r} version recorded for {alias!r} of {name!r}: "
                         "nothing to roll back to")
    require_version(client, name, previous)
    client.set_registered_model_alias(name, alias, str(previous))
    client.set_registered_model_alias(name, target_alias, str(current))
    record = {
        f"dinet.rollback.{alias}.by": who(),
        f"dinet.rollback.{alias}.at": registry_stamp(),
        f"dinet.rollback.{alias}.from_version": str(current),
        f"dinet.rollback.{alias}.reason": tag_text(reason or ""),
    }
    for key, value in record.items():
        client.set_model_version_tag(name, str(previous), key, value)
    return RollbackOutcome(name, alias, previous, current)


# --------------------------------------------------------------------------- list


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Versions newest first: aliases, key metrics and provenance from the tags."""
    rows = []
    try:  # search results do not carry aliases; the registered model does
        aliases = dict(client.get_registered_model(name).aliases)
    except MlflowException:
        return rows
    for version in sorted(all_versions(client, name), key=lambda v: -int(v.version)):
        tags = version.tags
        rows.append({
            "version": int(version.version),
            "aliases": sorted(a for a, v in aliases.items() if int(v) == int(version.version)),
            "created": time.strftime("%Y-%m-%d %H:%M",
                                     time.localtime(version.creation_timestamp / 1000)),
            "mouth_size": tags.get("dinet.mouth_size", ""),
            "source_run": tags.get(SOURCE_RUN_TAG, version.run_id or ""),
            "metrics": {m: float(tags[f"metric.{m}"]) for m in KEY_METRICS
                        if f"metric.{m}" in tags},
            "gates": {k.split(".")[2]: v for k, v in tags.items()
                      if k.startswith("dinet.gates.") and k.count(".") == 2},
        })
    return rows
