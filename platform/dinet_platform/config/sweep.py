"""Typed sweep configuration (``configs/sweep.yaml``): search space, scheduler, budget.

The search space is declared in YAML as distributions over dotted config fields
(``loss.temporal.frame_diff: {type: loguniform, low: 1, high: 20}``). Before any trial starts,
every entry is checked against the base training config: the field must exist, a range must
not be empty, and every value the distribution can produce at its bounds (or every choice)
must be valid for that field (so a negative weight is refused with the field named).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dinet_platform.config.loader import (
    ConfigError,
    format_errors,
    load_config,
    read_yaml,
    set_field,
    validate,
)
from dinet_platform.config.schema import DINetConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One search-space entry. ``grid`` tries every value (with ``searcher: random``)."""

    type: Literal["uniform", "loguniform", "choice", "randint", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> Distribution:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.type} needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be < high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound what this distribution can produce."""
        if self.type in ("choice", "grid"):
            return list(self.values or [])
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


class AshaConfig(_Strict):
    grace_period: Annotated[int, Field(ge=1)] = 1
    """Epochs every trial gets before it can be stopped."""
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0


class TrialResources(_Strict):
    num_workers: Annotated[int, Field(ge=1)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0)] = 0.5
    driver_cpus: Annotated[float, Field(gt=0)] = 0.25
    """CPUs held by each trial's driver (the function that builds and fits the TorchTrainer)."""
    loader_cpus: Annotated[float, Field(gt=0)] = 0.25
    use_gpu: bool = False


class SweepConfig(_Strict):
    name: str = "sweep"
    base_config: str
    """The training config every trial starts from (path, relative to this file or the CWD)."""
    stage: int
    """Mouth size of the stage each trial trains (must be a stage of the base config)."""
    epochs: Annotated[int, Field(ge=1)] | None = None
    """Epochs per trial (the ASHA horizon); default: the stage's epochs."""
    init_from: str | None = None
    """Fine-tune from a checkpoint (MLflow run id, URI, or a file or folder: relative to the
    CWD or to this file) instead of from scratch."""
    searcher: Literal["optuna", "random"] = "optuna"
    num_samples: Annotated[int, Field(ge=1)] = 8
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 2
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    max_failures: Annotated[int, Field(ge=0)] = 1
    """Retries of a failed trial before it is recorded as failed (the sweep continues)."""
    seed: int = 0
    asha: AshaConfig = Field(default_factory=AshaConfig)
    resources: TrialResources = Field(default_factory=TrialResources)
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Fixed changes to the base config for every trial (dotted keys)."""
    space: dict[str, Distribution]

    @model_validator(mode="after")
    def _space_not_empty(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space needs at least one parameter")
        grids = [key for key, d in self.space.items() if d.type == "grid"]
        if grids and self.searcher != "random":
            raise ValueError(
                f"grid entries ({', '.join(grids)}) need searcher: random (every grid value is "
                "tried num_samples times; a model-based searcher proposes values itself)"
            )
        return self


def load_sweep_config(path: str | Path) -> tuple[SweepConfig, DINetConfig]:
    """The sweep config and its base training config (overrides applied), both validated,
    with every search-space entry checked against the base config."""
    path = Path(path)
    sweep = validate(SweepConfig, read_yaml(path, "sweep config"), str(path),
                     "sweep configuration")
    base_path = Path(sweep.base_config)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = path.parent / base_path
    if sweep.init_from and "://" not in sweep.init_from:  # a local path, like base_config
        init = Path(sweep.init_from)
        if not init.is_absolute() and not init.exists() and (path.parent / init).exists():
            sweep = sweep.model_copy(update={"init_from": str(path.parent / init)})
    base = trial_config(
        load_config(base_path).model_dump(mode="json"), sweep.overrides, f"{path}: overrides"
    )
    try:
        base.stage(sweep.stage)
    except KeyError as exc:
        raise ConfigError(f"{path}: stage: {exc.args[0]}") from None
    raw_base = base.model_dump(mode="json")
    for key, distribution in sweep.space.items():
        for value in distribution.extremes():
            trial_config(raw_base, {key: value}, source=f"{path}: space.{key} = {value!r}")
    return sweep, base


def trial_config(
    base: dict[str, Any], params: dict[str, Any], source: str = "trial"
) -> DINetConfig:
    """The base config (as a dict) with a trial's parameters applied, validated."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        try:
            set_field(raw, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return DINetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid\n{format_errors(exc)}") from None
