"""Registering trained models and promoting them through the quality gates.

:func:`register_model` takes a pipeline (or stage) run's final checkpoint, optionally
evaluates it, and registers it (:func:`~dinet_platform.registry.versions.register_version`) as
a version of ``tracking.registered_model`` with alias ``candidate``. Its artifact is the
platform checkpoint directory of the final stage minus the optimizer state (``checkpoint.pt``
+ ``config.yaml``: tensors and numbers only, read with ``torch.load(weights_only=True)``),
logged to the stage run as ``registered_model``, so ``models:/dinet@production`` downloads to
a directory every loader of the platform accepts.

:func:`promote` evaluates a version against the alias's current holder and the baselines in
one evaluation run and moves ``staging`` / ``production`` only when the gates (:mod:`.gates`)
pass, or with ``force`` and a recorded reason. Rollback and listing are plain store
operations (:mod:`dinet_platform.registry.versions`).

Every bad input -- an unknown version or alias, a run that holds no model, evaluation data
without held-out videos -- is refused before the registry is touched.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console

from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.data.shards import ShardError, load_manifest
from dinet_platform.evaluation.evaluate import PASTE_REFERENCE, load_model
from dinet_platform.evaluation.runs import EvaluationOutcome, run_evaluation
from dinet_platform.models.checkpoints import load_checkpoint, save_checkpoint
from dinet_platform.paths import shards_path
from dinet_platform.promotion.gates import GateResult, check_gates, gates_passed, summary
from dinet_platform.registry.refs import final_stage_run, resolve
from dinet_platform.registry.versions import (
    PROMOTION_TARGETS,
    SOURCE_RUN_TAG,
    alias_holder,
    all_versions,
    metric_tags,
    move_alias,
    register_version,
    registry_stamp,
    require_version,
    tag_text,
    who,
)
from dinet_platform.tracking import DATA_HASH_TAG, KIND_TAG, PARENT_TAG, get_run

MODEL_ARTIFACT = "registered_model"


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
        return str(load_manifest(shards_path(model_config.data.shards))["content_hash"])
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
    state = load_checkpoint(resolve(run_id, client).path)
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
        "dinet.stages": ",".join(str(s.mouth_size) for s in model_config.stages),
        "dinet.mouth_size": str(state["mouth_size"]),
        "dinet.variant": model_config.model.variant,
        "dinet.width": str(model_config.model.width),
        **metric_tags(metrics),
    }
    if evaluation is not None:
        tags["dinet.eval_run"] = evaluation.run_id
    number = register_version(
        client, name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id, tags,
        description=f"mouth {state['mouth_size']} ({model_config.name}), stages "
                    f"{tags['dinet.stages']}",
        model_description="DINet lip-sync generators: checkpoint.pt (weights, "
                          "torch.load(weights_only=True)) + config.yaml.")
    return RegistrationOutcome(name, number, False, run_id, metrics, evaluation)


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
    ``reason``) and the alias still names that holder (else
    :class:`~dinet_platform.registry.versions.AliasMovedError`, naming both versions: of two
    concurrent promotions, one moves the alias and the other is refused). The replaced holder
    becomes :func:`previous_alias`."""
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
    # Gated against `holder` minutes ago: move only if the alias still names it (another
    # promotion or a rollback may have moved it meanwhile; see registry.versions).
    move_alias(client, name, alias, version, expected=holder)
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


