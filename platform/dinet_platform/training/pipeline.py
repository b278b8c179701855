"""The multiscale pipeline: stages in order, one Ray Train run each, MLflow in between.

A pipeline is identified by its *key*: a hash of the resolved config and of the training data
(the shards' content hash). Its MLflow parent run carries that key, and each stage is a child
run. Running the pipeline again with the same config and data therefore finds the same parent:

- stages whose child run FINISHED are skipped (their results are reported again);
- a stage whose child run did not finish is resumed: same MLflow run, same Ray Train run name,
  so training continues from its last checkpoint instead of redoing finished epochs;
- each stage starts from the previous stage's final checkpoint, fetched through MLflow
  (``runs:/<previous stage run>/checkpoint``); the first stage starts from ``init_from`` (a
  public DINet file, an MLflow run id or URI) or from scratch.

``from_stage`` / ``to_stage`` select a contiguous range of stages (stage jumping); a stage whose
predecessor never finished in this pipeline starts from ``init_from`` or from scratch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

import dinet_platform.console_logs as console_logs
from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.data.shards import ShardError, load_manifest
from dinet_platform.paths import shards_path
from dinet_platform.ray_runtime import ray_session
from dinet_platform.tracking import (
    CHECKPOINT_ARTIFACT,
    DATA_HASH_TAG,
    KIND_TAG,
    PARENT_TAG,
    PIPELINE_TAG,
    STAGE_TAG,
    experiment_id,
    find_runs,
)
from dinet_platform.training.schedule import previous_stage, select_stages
from dinet_platform.training.stage import (
    StageOutcome,
    check_stage_inputs,
    run_stage,
    start_stage_run,
)


@dataclass
class PipelineResult:
    run_id: str
    key: str
    stages: list[StageOutcome] = field(default_factory=list)


TRAINING_SECTIONS = {"name", "model", "stages", "loss", "data", "training"}
"""What a pipeline's result depends on: changing evaluation, serving, sync-expert or tracking
settings must not make a re-run train the same stages again."""


def pipeline_key(config: DINetConfig, data_hash: str) -> str:
    training = config.model_dump(mode="json", include=TRAINING_SECTIONS)
    digest = hashlib.sha256(f"{json.dumps(training, sort_keys=True)}\n{data_hash}".encode())
    return digest.hexdigest()[:16]


def run_pipeline(
    config: DINetConfig,
    client: MlflowClient,
    *,
    from_stage: int | None = None,
    to_stage: int | None = None,
    init_from: str | None = None,
    shards: str | Path | None = None,
    console: Console | None = None,
) -> PipelineResult:
    console = console or Console()
    stages = select_stages(config, from_stage, to_stage)
    shards = Path(shards) if shards else shards_path(config.data.shards)
    try:
        data_hash = load_manifest(shards)["content_hash"]
    except ShardError as exc:
        raise ValueError(f"training data: {exc}") from None
    if init_from:  # fail on a bad --init-from before anything is created
        check_stage_inputs(config, stages[0].mouth_size, client, init_from, shards)
    key = pipeline_key(config, data_hash)
    experiment = experiment_id(client, config.tracking.experiment)
    parent_id = _parent_run(client, experiment, config, key)
    client.set_tag(parent_id, DATA_HASH_TAG, data_hash)
    result = PipelineResult(run_id=parent_id, key=key)
    console.print(f"pipeline {key} (MLflow run {parent_id}): stages "
                  f"{', '.join(str(s.mouth_size) for s in stages)}")
    client.update_run(parent_id, status="RUNNING")
    try:
        # Ray starts only when a stage actually has to run, and stops when the pipeline ends.
        with console_logs.progress(console, "multiscale training"), ExitStack() as ray_context:
            for stage in stages:
                result.stages.append(
                    _run_or_skip(config, client, experiment, parent_id, key, stage.mouth_size,
                                 init_from if stage is stages[0] else None, shards, console,
                                 lambda: ray_context.enter_context(ray_session()))
                )
    except BaseException as exc:
        client.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt)
                              else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    console.print(summary_table(result))
    return result


def _parent_run(client: MlflowClient, experiment: str, config: DINetConfig, key: str) -> str:
    existing = find_runs(client, experiment, {PIPELINE_TAG: key, KIND_TAG: "pipeline"})
    if existing:
        return existing[0].info.run_id
    run = client.create_run(
        experiment, run_name=f"{config.name}-{key[:8]}",
        tags={PIPELINE_TAG: key, KIND_TAG: "pipeline"},
    )
    run_id = run.info.run_id
    client.log_param(run_id, "stages", ",".join(str(s.mouth_size) for s in config.stages))
    client.log_param(run_id, "model.variant", config.model.variant)
    client.log_param(run_id, "model.width", config.model.width)
    client.log_text(run_id, dump_config(config), "config.yaml")
    return run_id


def _stage_runs(client: MlflowClient, experiment: str, parent_id: str, mouth_size: int):
    return find_runs(
        client, experiment, {PARENT_TAG: parent_id, STAGE_TAG: str(mouth_size), KIND_TAG: "stage"}
    )


def _run_or_skip(
    config: DINetConfig,
    client: MlflowClient,
    experiment: str,
    parent_id: str,
    key: str,
    mouth_size: int,
    init_from: str | None,
    shards: Path,
    console: Console,
    start_ray: Callable[[], object],
) -> StageOutcome:
    runs = _stage_runs(client, experiment, parent_id, mouth_size)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        console.print(f"stage {mouth_size}: already finished in run {finished[0].info.run_id}")
        return _outcome_from_run(config, finished[0])
    previous = previous_stage(config, mouth_size)
    if previous is not None:
        done = [r for r in _stage_runs(client, experiment, parent_id, previous.mouth_size)
                if r.info.status == "FINISHED"]
        if done:
            init_from = done[0].info.run_id
    inputs = check_stage_inputs(config, mouth_size, client, init_from, shards)
    unfinished = [r for r in runs if r.info.status != "FINISHED"]
    if unfinished:
        run_id = unfinished[0].info.run_id
        console.print(f"stage {mouth_size}: resuming run {run_id}")
    else:
        run_id = start_stage_run(client, config, mouth_size, parent_id, key, init_from)
        console.print(f"stage {mouth_size}: run {run_id}, starting from "
                      f"{init_from or 'scratch'}")
    console_logs.update(f"stage {mouth_size}: starting Ray Train")
    start_ray()
    return run_stage(config, mouth_size, client, run_id, inputs, console)


def _outcome_from_run(config: DINetConfig, run: Run) -> StageOutcome:
    mouth_size = int(run.data.tags[STAGE_TAG])
    metrics = run.data.metrics
    return StageOutcome(
        mouth_size=mouth_size,
        run_id=run.info.run_id,
        epochs=config.stage(mouth_size).epochs,
        best={k.removeprefix("best_"): v for k, v in metrics.items() if k.startswith("best_")},
        wall_time_s=((run.info.end_time or 0) - run.info.start_time) / 1000,
        checkpoint_uri=f"runs:/{run.info.run_id}/{CHECKPOINT_ARTIFACT}",
        skipped=True,
    )


def summary_table(result: PipelineResult) -> Table:
    table = Table(title=f"pipeline {result.key} (MLflow run {result.run_id})")
    for column in ("stage", "epochs", "best val score", "mouth PSNR", "mouth SSIM",
                   "temporal err", "wall time", "checkpoint"):
        table.add_column(column)
    for outcome in result.stages:
        best = outcome.best
        table.add_row(
            str(outcome.mouth_size),
            str(outcome.epochs),
            f"{best.get('val_score', float('nan')):.3f}",
            f"{best.get('val_mouth_psnr', float('nan')):.2f} dB",
            f"{best.get('val_mouth_ssim', float('nan')):.3f}",
            f"{best.get('val_temporal_error', float('nan')):.4f}",
            f"{outcome.wall_time_s:.0f}s" + (" (earlier)" if outcome.skipped else ""),
            outcome.checkpoint_uri,
        )
    return table
