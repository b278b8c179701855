"""The Ray Train worker function: train one resolution stage with DDP.

Every worker builds the networks, restores state (a checkpoint of this run when Ray Train
restarts the worker group, else the stage's init checkpoint), then per epoch trains on its
shard of the ``train`` dataset, validates on its shard of ``val`` (metrics all-reduced across
workers) and reports. Rank 0 writes the checkpoint, prints progress, reports, and then logs
the epoch's metrics and images to the stage's MLflow run.

The checkpoint goes to Ray Train first and MLflow logging after it is best effort
(:class:`_Tracker`): a tracking server that is down or slow costs the epoch's MLflow metrics
and images and a :class:`TrackingWarning`, never the epoch, so an MLflow outage does not spend
``training.max_failures`` or lose the checkpoint a restart resumes from.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dinet_platform.config.schema import DINetConfig
from dinet_platform.geometry import Box, crop_geometry
from dinet_platform.models import (
    Discriminators,
    build_discriminators,
    build_generator,
    build_syncnet,
    load_generator_weights,
)
from dinet_platform.models.checkpoints import (
    load_checkpoint,
    save_checkpoint,
)
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.models.syncnet import SyncNet
from dinet_platform.ray_runtime import environment
from dinet_platform.training.images import attention_grid, sample_grid, write_png
from dinet_platform.training.objective import (
    StageObjective,
    autocast_dtype,
    make_optimizers,
    train_step,
    unwrapped,
)
from dinet_platform.training.schedule import stage_loss_weights
from dinet_platform.training.validation import ValidationAccumulator


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``loop_config``: ``config`` (resolved DINetConfig dict), ``mouth_size``, and optional
    object refs ``init_state`` (``{"generator", "discriminators"?}`` state dicts) and
    ``sync_expert`` (state_dict), and ``mlflow`` (``{"tracking_uri", "run_id"}``)."""
    config = DINetConfig.model_validate(loop_config["config"])
    mouth_size = int(loop_config["mouth_size"])
    stage = config.stage(mouth_size)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    # As many intra-op threads as CPUs reserved: more than that on a shared machine fight
    # the other workers for cores (2 threads on a loaded 2-core box made a step 6.6x slower).
    torch.set_num_threads(max(1, int(config.training.cpus_per_worker)))
    torch.manual_seed(config.training.seed + rank)
    tracker = _Tracker(loop_config.get("mlflow")) if rank == 0 else None

    generator = build_generator(config.model)
    discriminators = build_discriminators(config.model, clip_len=config.data.clip_len)
    state, start_epoch = _restore(loop_config, generator, discriminators)
    if tracker and start_epoch > 0:
        tracker.log({"resumed_from_epoch": float(start_epoch)}, step=start_epoch)

    clip_generator = ray.train.torch.prepare_model(ClipGenerator(generator))
    wrapped = Discriminators(
        ray.train.torch.prepare_model(discriminators.frame),
        ray.train.torch.prepare_model(discriminators.clip),
    )
    optimizers = make_optimizers(clip_generator, wrapped, stage.lr)
    if state is not None and state.get("optimizers"):
        optimizers.load_state_dict(state["optimizers"])

    syncnet = _sync_expert(loop_config, config)
    if syncnet is not None:
        syncnet.to(device)
    objective = StageObjective(stage_loss_weights(config, mouth_size), mouth_size, syncnet)
    objective.to(device)
    precision = autocast_dtype(device, config.training.mixed_precision)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    epoch_times: list[float] = []
    for epoch in range(start_epoch, stage.epochs):
        started = time.perf_counter()
        clip_generator.train()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        for batch in train_shard.iter_torch_batches(
            batch_size=stage.batch_size, device=device, drop_last=True
        ):
            if config.training.steps_per_epoch and steps >= config.training.steps_per_epoch:
                break
            for name, value in train_step(
                clip_generator, wrapped, objective, optimizers, batch, precision
            ).items():
                sums[name] += value
            steps += 1
        if steps == 0:
            raise RuntimeError(
                f"worker {rank} got no full training batch of {stage.batch_size} at mouth "
                f"{mouth_size}: too little training data for this batch size and worker count"
            )
        metrics = {f"train_{k}": v / steps for k, v in sums.items()}
        val_metrics, sample_batch = _validate(
            clip_generator, val_shard, stage.batch_size, device,
            ValidationAccumulator(device, syncnet, crop_geometry(mouth_size).mouth),
        )
        metrics.update(val_metrics)
        epoch_times.append(time.perf_counter() - started)
        metrics.update(epoch=float(epoch), lr=stage.lr, steps=float(steps),
                       epoch_time_s=epoch_times[-1])

        with tempfile.TemporaryDirectory(prefix="dinet-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(tmp, {
                    "generator": generator.state_dict(),
                    "discriminators": {
                        "frame": discriminators.frame.state_dict(),
                        "clip": discriminators.clip.state_dict(),
                    },
                    "optimizers": optimizers.state_dict(),
                    "epoch": epoch,
                    "mouth_size": mouth_size,
                    "config": config.model_dump(mode="json"),
                    "metrics": metrics,
                })
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                _print_progress(mouth_size, epoch, stage.epochs, metrics, epoch_times)
            # The checkpoint first: it is what a restart resumes from, and Ray Train's record of
            # the epoch. MLflow after it, best effort.
            ray.train.report(metrics, checkpoint=checkpoint)
        if tracker:
            tracker.log_epoch(metrics, epoch, generator, sample_batch,
                              crop_geometry(mouth_size).mouth)


def _restore(
    loop_config: dict[str, Any], generator: torch.nn.Module, discriminators: Discriminators
) -> tuple[dict[str, Any] | None, int]:
    """Resume this run's checkpoint, or start from the init checkpoint, or from scratch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        _load_networks(state, generator, discriminators)
        return state, int(state["epoch"]) + 1
    if loop_config.get("init_state") is not None:
        init = ray.get(loop_config["init_state"])
        load_generator_weights(generator, init["generator"])
        for name, module in discriminators.modules().items():
            if "discriminators" in init:
                module.load_state_dict(init["discriminators"][name])
    return None, 0


def _load_networks(
    state: dict[str, Any], generator: torch.nn.Module, discriminators: Discriminators
) -> None:
    load_generator_weights(generator, state["generator"])
    for name, module in discriminators.modules().items():
        module.load_state_dict(state["discriminators"][name])


def _sync_expert(loop_config: dict[str, Any], config: DINetConfig) -> SyncNet | None:
    if loop_config.get("sync_expert") is None:
        return None
    syncnet = build_syncnet(config.model, frames=config.data.clip_len)
    syncnet.load_state_dict(ray.get(loop_config["sync_expert"]))
    return syncnet.requires_grad_(False).eval()


@torch.no_grad()
def _validate(
    clip_generator: torch.nn.Module,
    val_shard,
    batch_size: int,
    device: torch.device,
    accumulator: ValidationAccumulator,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Metrics over every worker's validation shard, and this worker's first batch (for the
    epoch's images: the shard is a synchronised split and cannot be read again alone)."""
    generator = unwrapped(clip_generator)
    generator.eval()
    first_batch = None
    for batch in val_shard.iter_torch_batches(batch_size=batch_size, device=device):
        first_batch = first_batch or batch
        fake = generator(batch["clip_source"], batch["reference"], batch["clip_audio"])
        other_audio = None
        if len(fake) > 1:  # the same faces, each driven by its neighbour's audio
            other_audio = generator(batch["clip_source"], batch["reference"],
                                    batch["clip_audio"].roll(1, 0))
        accumulator.add(fake, batch["clip"], batch["mouth_mask"], batch["clip_audio"],
                        other_audio)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(accumulator.sums)
    generator.train()
    if first_batch is None:
        raise RuntimeError("a worker got no validation batch: too few held-out samples")
    return accumulator.means(), first_batch


EPOCH_LINE_METRICS = ("train_g_total", "val_mouth_psnr", "val_mouth_ssim",
                      "val_temporal_error", "val_audio_gain_db", "epoch_time_s")
"""What :func:`epoch_line` reads (the driver reads them back from the stage's MLflow run)."""


def epoch_line(
    mouth_size: int, epoch: int, epochs: int, metrics: dict[str, float], eta_s: float
) -> str:
    """One epoch of a stage in one line (0-based ``epoch``)."""
    def value(key: str) -> float:
        return metrics.get(key, float("nan"))

    return (f"[stage {mouth_size}] epoch {epoch + 1}/{epochs}  "
            f"loss {value('train_g_total'):.4f}  mouth PSNR {value('val_mouth_psnr'):.2f} dB  "
            f"SSIM {value('val_mouth_ssim'):.3f}  temporal {value('val_temporal_error'):.4f}  "
            f"audio gain {value('val_audio_gain_db'):.2f} dB  "
            f"({value('epoch_time_s'):.1f}s/epoch, ETA {eta_s:.0f}s)")


def _print_progress(
    mouth_size: int, epoch: int, epochs: int, metrics: dict[str, float], times: list[float]
) -> None:
    eta = sum(times) / len(times) * (epochs - epoch - 1)
    print(epoch_line(mouth_size, epoch, epochs, {**metrics, "epoch_time_s": times[-1]}, eta),
          flush=True)


class TrackingWarning(UserWarning):
    """A training worker's MLflow logging failed; training went on without it."""


TRACKER_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's own defaults (7 retries with exponential backoff, 120 s per request) would hold an
epoch for many minutes per call while the server is down; the tracker's calls give up after
seconds instead (unless the environment sets these itself)."""


class _Tracker:
    """Rank 0's MLflow logging into the stage run the driver created, best effort: a failed
    call warns (:class:`TrackingWarning`, naming the run, the epoch and the error) and the
    rest of that epoch's logging is skipped; the next epoch tries again."""

    def __init__(self, settings: dict[str, str] | None):
        self.run_id = settings["run_id"] if settings else None
        self.tracking_uri = settings["tracking_uri"] if settings else None
        self.client = MlflowClient(self.tracking_uri) if settings else None

    def _best_effort(self, what: str, step: int, call: Callable[[], None]) -> bool:
        if self.client is None:
            return False
        bounded = {k: v for k, v in TRACKER_HTTP_DEFAULTS.items() if k not in os.environ}
        try:
            with environment(bounded):
                call()
        except Exception as exc:
            warnings.warn(
                f"MLflow logging of {what} (epoch {step}) to run {self.run_id} at "
                f"{self.tracking_uri} failed, training continues without it (the epoch's "
                f"checkpoint was reported to Ray Train): {type(exc).__name__}: {exc}",
                TrackingWarning, stacklevel=2)
            return False
        return True

    def log(self, metrics: dict[str, float], step: int) -> bool:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        return self._best_effort("metrics", step,
                                 lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_epoch(self, metrics: dict[str, float], epoch: int, generator: torch.nn.Module,
                  batch: dict[str, torch.Tensor], mouth: Box) -> None:
        """The epoch's metrics, then its sample grid and attention maps."""
        if self.log(metrics, step=epoch):
            self._best_effort("sample images", epoch,
                              lambda: self.log_images(generator, batch, epoch, mouth))

    def log_images(
        self, generator: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int, mouth: Box
    ) -> None:
        if self.client is None:
            return
        generator.eval()
        source, reference = batch["clip_source"][:, 0], batch["reference"]
        audio = batch["clip_audio"][:, 0]
        try:
            with torch.no_grad():
                if hasattr(generator, "attention") and len(generator.attention):
                    fake, maps = generator(source, reference, audio, return_attention=True)
                else:
                    fake, maps = generator(source, reference, audio), {}
        finally:
            generator.train()
        with tempfile.TemporaryDirectory() as tmp:
            grid = write_png(Path(tmp) / f"epoch_{epoch:03d}.png",
                             sample_grid(source, fake, batch["clip"][:, 0], mouth))
            self.client.log_artifact(self.run_id, str(grid), artifact_path="samples")
            if maps:
                first = {name: m[0] for name, m in maps.items()}
                heat = write_png(Path(tmp) / f"epoch_{epoch:03d}.png",
                                 attention_grid(batch["clip"][0, 0], first))
                self.client.log_artifact(self.run_id, str(heat), artifact_path="attention")
