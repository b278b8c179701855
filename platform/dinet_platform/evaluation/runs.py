"""MLflow at the edge of evaluation: loading models, finding the sync expert, logging runs.

- :func:`resolve_model` loads the model a reference names (any reference
  :func:`~dinet_platform.registry.refs.resolve` takes) as an
  :class:`~dinet_platform.evaluation.evaluate.EvalModel`.
- :func:`find_sync_expert`: ``evaluation.sync_expert``, else ``loss.sync_expert``, else the
  registered expert ``syncnet.registered_model@production`` when there is one, else none.
- :func:`run_evaluation` evaluates models + baselines and records an MLflow evaluation run
  (metrics ``<entry>/<metric>``, ``evaluation.json``, ``comparison.png``).
- :func:`run_train_syncnet` trains the sync expert, logs it and registers it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from dinet_platform.audio_contract import AudioFeatureSpec
from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import EvalModel, EvaluationResult, evaluate, load_model
from dinet_platform.evaluation.outputs import (
    LABELS,
    format_value,
    order_entries,
    plot_comparison,
    plot_mouth_strip,
    write_report,
)
from dinet_platform.evaluation.sync_expert import train_sync_expert
from dinet_platform.metrics import PSNR_CAP_DB
from dinet_platform.models.checkpoints import load_sync_expert, save_sync_expert
from dinet_platform.models.syncnet import SyncNet
from dinet_platform.paths import dinet_home, shards_path
from dinet_platform.registry.loading import is_optimized, load_engine
from dinet_platform.registry.refs import MODEL_URI, resolve
from dinet_platform.registry.versions import metric_tags, move_alias, register_version
from dinet_platform.tracking import CHECKPOINT_ARTIFACT, KIND_TAG, RUN_ID, experiment_id

EVAL_TAG_PREFIX = "dinet.eval."
SYNC_ALIAS = "production"


# --------------------------------------------------------------------------- models


def resolve_model(
    name: str, reference: str, client: MlflowClient, fallback: DINetConfig | None = None
) -> EvalModel:
    """Load the model ``reference`` names (see the module docstring) as entry ``name``; an
    optimized version (``dinet optimize --register``) is evaluated as it serves."""
    resolved = resolve(reference, client)
    if is_optimized(resolved.path):
        engine, info = load_engine(str(resolved.path))
        model = EvalModel(name=name, generator=None, mouth_size=info.mouth_size,
                          audio_window=info.config.data.audio_window,
                          audio_channels=info.config.model.audio_channels,
                          source=resolved.reference,
                          features=AudioFeatureSpec.from_data(info.config.data),
                          config=info.config, engine=engine)
    else:
        model = load_model(name, resolved.path, source=resolved.reference, fallback=fallback)
    model.details = resolved.details
    return model


def entry_name(reference: str) -> str:
    """A short entry name for a model reference (``production``, ``v3``, ``run-1a2b3c4d``)."""
    match = MODEL_URI.match(reference)
    if match:
        return match["alias"] or f"v{match['version']}"
    if RUN_ID.match(reference):
        return f"run-{reference[:8]}"
    return Path(reference.rstrip("/")).name or "model"


# --------------------------------------------------------------------------- sync expert


def find_sync_expert(config: DINetConfig, client: MlflowClient) -> tuple[SyncNet | None, str]:
    """(expert, where it came from); (None, reason) when none is configured or registered."""
    reference = config.evaluation.sync_expert or config.loss.sync_expert
    if reference is None:
        name = config.syncnet.registered_model
        try:
            client.get_model_version_by_alias(name, SYNC_ALIAS)
        except MlflowException:
            return None, (f"none (set evaluation.sync_expert, or train one: `dinet "
                          f"train-syncnet` registers {name}@{SYNC_ALIAS})")
        reference = f"models:/{name}@{SYNC_ALIAS}"
    resolved = resolve(reference, client)
    reference = resolved.reference
    try:
        expert = load_sync_expert(resolved.path, config.model, config.sync_expert_frames)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"sync expert {reference!r}: {exc}") from None
    return expert, reference


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationOutcome:
    result: EvaluationResult
    run_id: str
    json_path: Path
    png_path: Path
    report: dict[str, Any] = field(default_factory=dict)


def evaluation_shards(config: DINetConfig, shards: str | Path | None = None) -> Path:
    if shards:
        return Path(shards)
    if config.evaluation.shards:
        return Path(config.evaluation.shards)
    return shards_path(config.data.shards)


def load_video_set(config: DINetConfig, shards: str | Path | None = None) -> VideoSet:
    settings = config.evaluation
    return VideoSet(evaluation_shards(config, shards), settings.split,
                    max_videos=settings.max_videos,
                    max_frames=settings.max_frames, num_references=config.data.num_references)


def mlflow_value(metric: str, value: float) -> float | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return PSNR_CAP_DB if value > 0 and metric.endswith("psnr") else None
    return value


def run_evaluation(
    config: DINetConfig,
    client: MlflowClient,
    references: list[tuple[str, str]],
    *,
    shards: str | Path | None = None,
    out_dir: str | Path | None = None,
    models: list[EvalModel] | None = None,
    tags: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    console: Console | None = None,
) -> EvaluationOutcome:
    """Evaluate ``references`` ((entry name, model reference) pairs) and/or already loaded
    ``models`` with the baselines, and record it all as one MLflow evaluation run.

    Every input is checked (models resolve and load, the data has held-out videos, the sync
    expert loads) before the run is created.
    """
    console = console or Console()
    loaded = list(models or [])
    loaded += [resolve_model(name, ref, client, fallback=config) for name, ref in references]
    videos = load_video_set(config, shards)
    expert, expert_source = find_sync_expert(config, client)
    experiment = experiment_id(client, config.tracking.experiment)
    run_tags = {
        KIND_TAG: "evaluation",
        f"{EVAL_TAG_PREFIX}models": json.dumps({m.name: m.source for m in loaded}),
        f"{EVAL_TAG_PREFIX}data_hash": videos.content_hash,
        f"{EVAL_TAG_PREFIX}sync_expert": expert_source,
        **(tags or {}),
    }
    run = client.create_run(experiment, run_name="evaluation-" + "-vs-".join(
        m.name for m in loaded), tags=run_tags)
    run_id = run.info.run_id
    try:
        console.print(f"evaluating {', '.join(f'{m.name} ({m.source})' for m in loaded)} on "
                      f"{len(videos.indices)} held-out videos of {videos.shards}; sync expert: "
                      f"{expert_source}")
        result = evaluate(loaded, videos, config.evaluation, expert,
                          progress=lambda message: console.print(f"  {message}"))
        result.info["sync_expert_source"] = expert_source
        out = Path(out_dir) if out_dir else dinet_home() / "evaluations" / run_id
        report = {**result.as_dict(), "mlflow_run_id": run_id, **(extra or {})}
        json_path = write_report(out / "evaluation.json", report)
        png_path = plot_comparison(result, out / "comparison.png")
        strip_path = plot_mouth_strip(result, out / "mouth_strip.png")
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{entry}/{name}", logged, now, 0)
            for entry, values in result.metrics.items()
            for name, value in values.items()
            if (logged := mlflow_value(name, value)) is not None
        ]
        client.log_batch(run_id, metrics=metrics)
        client.log_param(run_id, "mouth_size", result.mouth_size)
        client.log_param(run_id, "shards", str(videos.shards))
        client.log_param(run_id, "frames", result.info["frames"])
        client.log_artifact(run_id, str(json_path))
        client.log_artifact(run_id, str(png_path))
        if strip_path is not None:
            client.log_artifact(run_id, str(strip_path))
        client.log_text(run_id, dump_config(config), "config.yaml")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return EvaluationOutcome(result, run_id, json_path, png_path, report)


def metrics_table(result: EvaluationResult, title: str = "") -> Table:
    entries = order_entries(result)
    table = Table(title=title or f"evaluation at mouth {result.mouth_size}")
    table.add_column("metric")
    for entry in entries:
        table.add_column(entry, justify="right")
    names = [n for n in LABELS if any(n in result.metrics[e] for e in entries)]
    for name in names:
        table.add_row(LABELS[name], *(format_value(result.metrics[e].get(name))
                                      for e in entries))
    return table


# --------------------------------------------------------------------------- sync expert job


@dataclass
class SyncExpertOutcome:
    run_id: str
    metrics: dict[str, float]
    version: int | None
    production: bool
    uri: str


def run_train_syncnet(
    config: DINetConfig,
    client: MlflowClient,
    *,
    shards: str | Path | None = None,
    register: bool = True,
    console: Console | None = None,
) -> SyncExpertOutcome:
    """Train the sync expert on the shards' training videos, measure it on the held-out ones,
    log it as an MLflow run (artifact ``checkpoint/syncnet.pt``) and register it."""
    console = console or Console()
    settings = config.syncnet
    shards = Path(shards) if shards else shards_path(config.data.shards)
    frames = config.sync_expert_frames
    train_set = VideoSet(shards, "train")
    val_set = VideoSet(shards, "val")
    if val_set.feature_dim != config.model.audio_channels:
        raise ValueError(
            f"the shards hold {val_set.feature_dim} audio features per frame, the config's "
            f"model.audio_channels is {config.model.audio_channels}"
        )
    train_videos = train_set.videos(settings.mouth_size)
    val_videos = val_set.videos(settings.mouth_size)
    experiment = experiment_id(client, config.tracking.experiment)
    run = client.create_run(experiment, run_name="syncnet", tags={
        KIND_TAG: "syncnet", f"{EVAL_TAG_PREFIX}data_hash": train_set.content_hash})
    run_id = run.info.run_id
    params = {**settings.model_dump(), "frames": frames, "syncnet_width":
              config.model.syncnet_width, "audio_channels": config.model.audio_channels,
              "train_videos": len(train_videos), "val_videos": len(val_videos)}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    started = time.perf_counter()
    every = max(1, settings.steps // 20)

    def on_step(step: int, loss: float) -> None:
        if step % every == 0 or step == settings.steps - 1:
            client.log_metric(run_id, "train_loss", loss, step=step)
            elapsed = time.perf_counter() - started
            eta = elapsed / (step + 1) * (settings.steps - step - 1)
            console.print(f"[syncnet] step {step + 1}/{settings.steps}  loss {loss:.4f}  "
                          f"({elapsed:.0f}s, ETA {eta:.0f}s)")

    try:
        expert, result = train_sync_expert(
            train_videos, val_videos, config.model, frames, settings,
            max_offset=config.evaluation.sync_offsets, seed=config.training.seed,
            on_step=on_step)
        metrics = result.metrics()
        client.log_batch(run_id, metrics=[
            Metric(k, v, int(time.time() * 1000), settings.steps)
            for k, v in metrics.items() if math.isfinite(v)])
        with tempfile.TemporaryDirectory(prefix="dinet-syncnet-") as tmp:
            save_sync_expert(tmp, expert, config.model, metrics)
            client.log_artifacts(run_id, tmp, CHECKPOINT_ARTIFACT)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    uri = f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"
    version, production = None, False
    if register:
        version, production = _register_expert(config, client, run_id, metrics, train_set)
        uri = f"models:/{settings.registered_model}/{version}"
    return SyncExpertOutcome(run_id, metrics, version, production, uri)


def _register_expert(config: DINetConfig, client: MlflowClient, run_id: str,
                     metrics: dict[str, float], data: VideoSet) -> tuple[int, bool]:
    name = config.syncnet.registered_model
    tags = {
        "dinet.kind": "syncnet",
        "dinet.data_hash": data.content_hash,
        "dinet.frames": str(config.sync_expert_frames),
        **metric_tags(metrics),
    }
    number = register_version(
        client, name, f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}", run_id, tags,
        model_description="Sync experts (SyncNet-style) for DINet evaluation and the training "
                          "sync loss; weights in syncnet.pt.")
    production = metrics["val_accuracy"] >= config.syncnet.min_accuracy
    if production:
        move_alias(client, name, SYNC_ALIAS, number)
    return number, production
