"""Typed configuration: schema (pydantic) and the one loader."""

from dinet_platform.config.loader import ConfigError, dump_config, load_config, validate_config
from dinet_platform.config.schema import (
    AttentionConfig,
    DataConfig,
    DINetConfig,
    LossConfig,
    ModelConfig,
    ServingConfig,
    StageConfig,
    TemporalWeights,
    TrackingConfig,
    TrainingConfig,
)

__all__ = [
    "AttentionConfig",
    "ConfigError",
    "DINetConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "ServingConfig",
    "StageConfig",
    "TemporalWeights",
    "TrackingConfig",
    "TrainingConfig",
    "dump_config",
    "load_config",
    "validate_config",
]
