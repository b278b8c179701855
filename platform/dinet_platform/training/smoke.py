"""A quick check of a config's networks: two training steps at every stage resolution.

Random batches of the loader's shapes, no data or Ray needed; prints parameters and timings so
a user sees what a config costs before launching it (``dinet check-models``).
"""

from __future__ import annotations

import time

import torch
from rich.table import Table

from dinet_platform.config import DINetConfig
from dinet_platform.geometry import crop_geometry
from dinet_platform.models import build_discriminators, build_generator, count_parameters
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.training.objective import (
    StageObjective,
    example_batch,
    make_optimizers,
    train_step,
)
from dinet_platform.training.schedule import stage_loss_weights


def check_stages(config: DINetConfig) -> Table:
    torch.manual_seed(config.training.seed)
    clip_len = config.data.clip_len
    table = Table(title=f"{config.name}: two training steps per stage (CPU, fp32)")
    for column in ("stage", "crop", "batch", "G params", "D params", "first step ms",
                   "step ms", "ms/frame", "G loss"):
        table.add_column(column, justify="right")
    for stage in config.stages:
        generator = build_generator(config.model)
        discriminators = build_discriminators(config.model, clip_len=clip_len)
        objective = StageObjective(stage_loss_weights(config, stage.mouth_size),
                                   stage.mouth_size)
        optimizers = make_optimizers(generator, discriminators, stage.lr)
        batch = example_batch(stage.mouth_size, stage.batch_size, clip_len,
                              config.model.audio_channels, config.data.audio_window)
        clip_generator = ClipGenerator(generator)
        # The first step pays one-time costs (kernel selection, allocator growth).
        step_ms = []
        for _ in range(2):
            start = time.perf_counter()
            losses = train_step(clip_generator, discriminators, objective, optimizers, batch)
            step_ms.append((time.perf_counter() - start) * 1e3)
        height, width = crop_geometry(stage.mouth_size).crop_shape
        d_params = sum(count_parameters(m) for m in discriminators.modules().values())
        table.add_row(
            str(stage.mouth_size), f"{height}x{width}", f"{stage.batch_size}x{clip_len}",
            f"{count_parameters(generator):,}", f"{d_params:,}", f"{step_ms[0]:.0f}",
            f"{step_ms[1]:.0f}", f"{step_ms[1] / (stage.batch_size * clip_len):.1f}",
            f"{losses['g_total']:.3f}",
        )
    return table
