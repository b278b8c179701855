"""The multiscale schedule: which stage comes after which, and the loss weights per stage.

Adaptive re-weighting (seed §5): at the low-resolution stages the mouth is a few dozen pixels
and fine texture and frame-to-frame detail are barely resolved, so the pixel losses should lead
and the perceptual and temporal terms follow; as resolution grows, those terms carry the detail
users see (teeth, jitter). Stage ``k`` of ``K`` therefore scales the perceptual weight and every
temporal weight by ``s + (1 - s) * k / (K - 1)`` where ``s = loss.adaptive_start_scale``
(0.5 by default; 1.0 turns it off). Reconstruction, mouth reconstruction, GAN and sync weights
are the configured ones at every stage. A single-stage run uses the full weights.
"""

from __future__ import annotations

from dinet_platform.config.schema import DINetConfig, LossConfig, StageConfig


def stage_index(config: DINetConfig, mouth_size: int) -> int:
    sizes = [stage.mouth_size for stage in config.stages]
    if mouth_size not in sizes:
        raise ValueError(f"no stage with mouth size {mouth_size}; stages are {sizes}")
    return sizes.index(mouth_size)


def previous_stage(config: DINetConfig, mouth_size: int) -> StageConfig | None:
    index = stage_index(config, mouth_size)
    return config.stages[index - 1] if index > 0 else None


def stage_weight_scale(loss: LossConfig, index: int, num_stages: int) -> float:
    if num_stages <= 1:
        return 1.0
    start = loss.adaptive_start_scale
    return start + (1.0 - start) * index / (num_stages - 1)


def stage_loss_weights(config: DINetConfig, mouth_size: int) -> LossConfig:
    """The loss weights in force at the stage of ``mouth_size``."""
    loss = config.loss
    scale = stage_weight_scale(loss, stage_index(config, mouth_size), len(config.stages))
    if scale == 1.0:
        return loss
    temporal = loss.temporal.model_copy(
        update={
            name: getattr(loss.temporal, name) * scale
            for name in ("frame_diff", "optical_flow", "mouth_temporal", "long_term")
        }
    )
    return loss.model_copy(update={"perceptual": loss.perceptual * scale, "temporal": temporal})


def select_stages(
    config: DINetConfig, from_stage: int | None = None, to_stage: int | None = None
) -> list[StageConfig]:
    """The stages from ``from_stage`` to ``to_stage`` (mouth sizes, inclusive)."""
    first = stage_index(config, from_stage) if from_stage is not None else 0
    last = stage_index(config, to_stage) if to_stage is not None else len(config.stages) - 1
    if first > last:
        raise ValueError(f"--from-stage {from_stage} comes after --to-stage {to_stage}")
    return config.stages[first : last + 1]
