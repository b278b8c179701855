"""The main job behind ``make demo``.

For now: for every stage of the config, build the generator, both discriminators and the sync
expert, run two full training steps (discriminators, then the generator on the whole objective)
at that stage's resolution and batch size, and print parameters and timings.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from dinet_platform.config import DINetConfig
from dinet_platform.geometry import crop_geometry
from dinet_platform.models import build_discriminators, build_generator, build_syncnet
from dinet_platform.models.factory import count_parameters
from dinet_platform.training.objective import (
    ClipGenerator,
    StageObjective,
    example_batch,
    make_optimizers,
    train_step,
)


def run_demo(config: DINetConfig, console: Console) -> None:
    torch.manual_seed(config.training.seed)
    clip_len = config.data.clip_len
    syncnet = build_syncnet(config.model, frames=clip_len)
    table = Table(title=f"{config.name}: two training steps per stage (CPU, fp32)")
    columns = ("stage", "crop", "batch", "G params", "D params", "first step ms", "step ms",
               "ms/frame", "G loss")
    for column in columns:
        table.add_column(column, justify="right")

    for stage in config.stages:
        generator = build_generator(config.model)
        discriminators = build_discriminators(config.model, clip_len=clip_len)
        objective = StageObjective(config.loss, stage.mouth_size, syncnet=syncnet)
        optimizers = make_optimizers(generator, discriminators, stage.lr)
        batch = example_batch(
            stage.mouth_size,
            stage.batch_size,
            clip_len=clip_len,
            audio_channels=config.model.audio_channels,
            audio_window=config.data.audio_window,
        )
        clip_generator = ClipGenerator(generator)
        # The first step pays one-time costs (kernel selection, allocator growth).
        step_ms = []
        for _ in range(2):
            start = time.perf_counter()
            losses = train_step(clip_generator, discriminators, objective, optimizers, batch)
            step_ms.append((time.perf_counter() - start) * 1e3)
        height, width = crop_geometry(stage.mouth_size).crop_shape
        d_params = sum(count_parameters(m) for m in discriminators.modules().values())
        frames = stage.batch_size * clip_len
        table.add_row(
            str(stage.mouth_size),
            f"{height}x{width}",
            f"{stage.batch_size}x{clip_len}",
            f"{count_parameters(generator):,}",
            f"{d_params:,}",
            f"{step_ms[0]:.0f}",
            f"{step_ms[1]:.0f}",
            f"{step_ms[1] / frames:.1f}",
            f"{losses['g_total']:.3f}",
        )
    console.print(table)
    console.print(
        f"sync expert: {count_parameters(syncnet):,} parameters "
        f"(sync loss weight {config.loss.sync}); model variant {config.model.variant}, "
        f"width {config.model.width}"
    )
