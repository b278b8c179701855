"""One resolution stage as one Ray Train run, tracked as one MLflow run.

Everything a stage needs is checked on the driver before any worker starts: the stage exists,
the shards exist and have held-out videos, the init checkpoint resolves and fits the model, the
MLflow run to resume exists. The Ray Train run is named after the stage's MLflow run, so
running the same stage run again resumes it from its last checkpoint (Ray Train V2 resumes a
run re-submitted with the same storage path and name).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer
from rich.console import Console

from dinet_platform.audio_contract import (
    RETRAIN_FLAG,
    RETRAIN_KEY,
    AudioFeatureSpec,
    check_features,
    checkpoint_features,
)
from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.data.dataset import build_dataset
from dinet_platform.data.shards import ShardError, load_manifest
from dinet_platform.models import (
    build_discriminators,
    build_generator,
    load_generator_weights,
    read_state_dict,
)
from dinet_platform.models.checkpoints import is_platform_checkpoint, load_checkpoint
from dinet_platform.models.public_dinet import (
    PUBLIC_DINET_ORIGIN,
    fresh_audio_path,
    is_public_dinet,
)
from dinet_platform.models.weights import load_syncnet
from dinet_platform.paths import ray_storage_path, shards_path
from dinet_platform.registry.refs import resolve
from dinet_platform.tracking import (
    CHECKPOINT_ARTIFACT,
    KIND_TAG,
    PARENT_TAG,
    PIPELINE_TAG,
    STAGE_TAG,
    experiment_id,
    get_run,
)
from dinet_platform.training.loop import train_loop_per_worker
from dinet_platform.training.progress import EpochWatch
from dinet_platform.training.schedule import stage_index, stage_loss_weights


@dataclass
class StageOutcome:
    mouth_size: int
    run_id: str
    epochs: int
    best: dict[str, float]
    wall_time_s: float
    checkpoint_uri: str
    skipped: bool = False


@dataclass
class StageInputs:
    """What :func:`check_stage_inputs` resolved. Weights travel to the workers through the
    object store, so workers on other nodes need no access to the driver's files."""

    shards: Path
    init_state: dict | None
    """``{"generator": sd, "discriminators": {...} | absent}`` to start from."""
    sync_expert: dict | None
    """The sync expert's state_dict."""


def check_stage_inputs(
    config: DINetConfig,
    mouth_size: int,
    client: MlflowClient,
    init_from: str | None = None,
    shards: str | Path | None = None,
) -> StageInputs:
    """Fail fast, on the driver, with the reason: nothing has started yet."""
    stage_index(config, mouth_size)
    shards = Path(shards) if shards else shards_path(config.data.shards)
    try:
        manifest = load_manifest(shards)
    except ShardError as exc:
        raise ValueError(f"training data: {exc}") from None
    splits = {video.get("split") for video in manifest["videos"]}
    for split in ("train", "val"):
        if split not in splits:
            raise ValueError(
                f"training data {shards} has no {split!r} videos (validation needs held-out "
                "videos): prepare more videos or change data.val_fraction"
            )
    init_state = _init_state(config, resolve(init_from, client).path) if init_from else None
    sync = None
    if config.loss.sync_expert:  # the sync loss (when weighted) and the val_sync metric
        path = resolve(config.loss.sync_expert, client).path
        sync = load_syncnet(path, config.model, frames=config.data.clip_len).state_dict()
    return StageInputs(shards=shards, init_state=init_state, sync_expert=sync)


def _init_state(config: DINetConfig, init: Path) -> dict:
    """Weights to start the stage from, checked against this config's networks and features.

    An init checkpoint trained on other audio features than this config computes is refused,
    unless ``training.retrain_audio_path`` says to re-train its audio path: then its audio
    encoder is replaced by a fresh one for this config's features (see
    :mod:`dinet_platform.audio_contract`)."""
    generator = build_generator(config.model)
    try:
        if is_platform_checkpoint(init):
            # A previous stage: its networks; optimizers restart at this stage's lr.
            checkpoint = load_checkpoint(init)
            state = {k: checkpoint[k] for k in ("generator", "discriminators")
                     if checkpoint.get(k) is not None}  # a generator-only file: D fresh
            trained_on: AudioFeatureSpec | None = checkpoint_features(checkpoint, str(init))
            origin = f"init checkpoint {init}"
        else:
            state = {"generator": read_state_dict(init)}  # a public DINet generator file
            public = is_public_dinet(state["generator"])
            trained_on = AudioFeatureSpec.public_dinet() if public else None
            origin = (f"init checkpoint {init}, {PUBLIC_DINET_ORIGIN},"
                      if public else f"init checkpoint {init}")
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"init checkpoint {init} cannot be read: {exc}") from None
    wanted = AudioFeatureSpec.from_data(config.data)
    retrain = config.training.retrain_audio_path
    if trained_on is not None and not retrain:
        check_features(
            trained_on, wanted, model=origin, given_as="this config computes", loader="train",
            alternative=(f"or, to re-train its audio path on this config's features "
                         f"deliberately, pass {RETRAIN_FLAG} (config {RETRAIN_KEY}: true): its "
                         "audio encoder starts fresh and the rest of the network loads"))
    if retrain and (trained_on is None or trained_on.differences(wanted)):
        state["generator"] = fresh_audio_path(state["generator"], generator)
    try:
        load_generator_weights(generator, state["generator"])
        if "discriminators" in state:
            discriminators = build_discriminators(config.model, clip_len=config.data.clip_len)
            for name, module in discriminators.modules().items():
                module.load_state_dict(state["discriminators"][name])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(
            f"init checkpoint {init} does not fit this config's model: {exc}"
        ) from None
    return state


def start_stage_run(
    client: MlflowClient,
    config: DINetConfig,
    mouth_size: int,
    parent_run_id: str | None = None,
    pipeline_key: str | None = None,
    init_from: str | None = None,
) -> str:
    """Create the stage's MLflow run with its params and config; return its id."""
    tags = {KIND_TAG: "stage", STAGE_TAG: str(mouth_size)}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    if pipeline_key:
        tags[PIPELINE_TAG] = pipeline_key
    run = client.create_run(
        experiment_id(client, config.tracking.experiment),
        run_name=f"stage-{mouth_size}",
        tags=tags,
    )
    run_id = run.info.run_id
    stage = config.stage(mouth_size)
    weights = stage_loss_weights(config, mouth_size)
    params = {
        "mouth_size": stage.mouth_size,
        "epochs": stage.epochs,
        "batch_size": stage.batch_size,
        "lr": stage.lr,
        "model.variant": config.model.variant,
        "model.width": config.model.width,
        "num_workers": config.training.num_workers,
        "init_from": init_from or "scratch",
        "loss.perceptual": weights.perceptual,
        **{f"loss.temporal.{k}": v for k, v in weights.temporal.model_dump().items()},
        "loss.mouth_reconstruction": weights.mouth_reconstruction,
        "loss.gan": weights.gan,
        "loss.sync": weights.sync,
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, dump_config(config), "config.yaml")
    return run_id


def run_stage(
    config: DINetConfig,
    mouth_size: int,
    client: MlflowClient,
    run_id: str,
    inputs: StageInputs,
    console: Console | None = None,
) -> StageOutcome:
    """Train the stage into MLflow run ``run_id`` (new, or unfinished and resumed); a line per
    epoch on ``console`` (else on the active step display's, else stdout)."""
    get_run(client, run_id)
    client.update_run(run_id, status="RUNNING")
    started = time.perf_counter()
    try:
        trainer = make_trainer(
            config, mouth_size, inputs, name=f"stage{mouth_size}-{run_id}",
            mlflow={"tracking_uri": client.tracking_uri, "run_id": run_id},
        )
        with EpochWatch(client.tracking_uri, run_id, mouth_size,
                        config.stage(mouth_size).epochs, console):
            result = trainer.fit()
        best_checkpoint, best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_score"])
        for key in ("val_score", "val_mouth_psnr", "val_mouth_ssim", "val_temporal_error"):
            client.log_metric(run_id, f"best_{key}", best[key])
        with result.checkpoint.as_directory() as directory:
            client.log_artifacts(run_id, directory, CHECKPOINT_ARTIFACT)
        with best_checkpoint.as_directory() as directory:
            client.log_artifacts(run_id, directory, "best_checkpoint")
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        client.set_terminated(run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")
    return StageOutcome(
        mouth_size=mouth_size,
        run_id=run_id,
        epochs=config.stage(mouth_size).epochs,
        best={k: float(v) for k, v in best.items() if k.startswith("val_")},
        wall_time_s=time.perf_counter() - started,
        checkpoint_uri=f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}",
    )


def make_trainer(
    config: DINetConfig,
    mouth_size: int,
    inputs: StageInputs,
    name: str,
    mlflow: dict[str, str] | None = None,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The TorchTrainer of one stage: used by the pipeline and by every sweep trial."""
    data = config.data
    seed = config.training.seed
    # Datasets carry the DataContext of the process that builds them (a sweep trial's actor
    # too): per-block progress bars would flood the logs of a job that already reports epochs.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {
        split: build_dataset(inputs.shards, mouth_size, data.clip_len, split, data, seed,
                             num_cpus=config.training.loader_cpus)
        for split in ("train", "val")
    }
    resources = {"CPU": config.training.cpus_per_worker}
    if config.training.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "mouth_size": mouth_size,
            "init_state": ray.put(inputs.init_state) if inputs.init_state else None,
            "sync_expert": ray.put(inputs.sync_expert) if inputs.sync_expert else None,
            "mlflow": mlflow,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=config.training.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=ray_storage_path(config.training.storage_path),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.training.checkpoints_to_keep,
                checkpoint_score_attribute="val_score",
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.training.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
