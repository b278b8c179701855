"""Typed configuration of the platform: one pydantic model per concern, one root model.

Every model forbids unknown keys, so a typo in YAML or in ``--set`` is an error naming the key
instead of a silently ignored setting. Weights are ``float`` fields: ``--set x=5`` becomes 5.0,
never an int that truncates later (a known bug of the original DINet option parser).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dinet_platform.config.base import NonNegative, Positive, Strict
from dinet_platform.config.serving import ServingConfig

AttentionPosition = Literal["source", "reference", "appearance"]


class AttentionConfig(Strict):
    """The seed's four attention modules (§3); each one switchable."""

    spatial: bool = False
    """CBAM-style channel + spatial gates."""
    mouth_focused: bool = False
    """A learned spatial gate whose odds are multiplied by ``mouth_region_weight`` inside the
    mouth box."""
    multi_scale: bool = False
    """Spatial attention computed at each of ``scales`` (pooled) and combined."""
    adaptive_fusion: bool = False
    """Fuse the enabled branches with learned, input-dependent softmax weights instead of
    applying them one after another."""
    scales: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4])
    mouth_region_weight: Annotated[float, Field(ge=1.0)] = 10.0
    reduction: Annotated[int, Field(ge=1)] = 16
    positions: list[AttentionPosition] = Field(
        default_factory=lambda: ["source", "reference", "appearance"]
    )

    @property
    def any_enabled(self) -> bool:
        return self.spatial or self.mouth_focused or self.multi_scale

    @field_validator("scales")
    @classmethod
    def _scales_nonempty_unique(cls, scales: list[int]) -> list[int]:
        if not scales or len(set(scales)) != len(scales):
            raise ValueError(f"must be a non-empty list of distinct scales, got {scales}")
        return scales


class ModelConfig(Strict):
    variant: Literal["dinet", "dinet_attention"] = "dinet"
    width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    """Channel multiplier; 1.0 is the public DINet (19.2 M parameters)."""
    audio_channels: Annotated[int, Field(ge=1)] = 29
    """Audio feature dimension per frame (29 = DeepSpeech, or the number of log-mel bands)."""
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    discriminator_width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    syncnet_width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0


class StageConfig(Strict):
    mouth_size: Annotated[int, Field(gt=0)]
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Positive

    @field_validator("mouth_size")
    @classmethod
    def _multiple_of_four(cls, size: int) -> int:
        if size % 4:
            raise ValueError(f"mouth_size must be a multiple of 4, got {size}")
        return size


class TemporalWeights(Strict):
    """Weights of the temporal-consistency terms (seed §2)."""

    frame_diff: NonNegative = 8.0
    optical_flow: NonNegative = 6.0
    mouth_temporal: NonNegative = 10.0
    long_term: NonNegative = 4.0
    window: Annotated[int, Field(ge=3)] = 5
    """Frames in the long-term window."""


class LossConfig(Strict):
    reconstruction: NonNegative = 1.0
    """L1 over the whole crop."""
    mouth_reconstruction: NonNegative = 10.0
    """Extra L1 inside the mouth box (the mouth-weighted reconstruction)."""
    perceptual: NonNegative = 1.0
    perceptual_kind: Literal["ms_ssim", "vgg19"] = "ms_ssim"
    vgg19_weights: str | None = None
    """Path to VGG19 weights (torchvision ``vgg19`` state_dict layout) for ``vgg19``."""
    gan: NonNegative = 1.0
    sync: NonNegative = 0.0
    """Sync-expert loss; 0 disables it (it needs a trained sync expert, ``sync_expert``)."""
    sync_expert: str | None = None
    """The sync expert's weights: a local file, an MLflow run id or an artifact URI."""
    temporal: TemporalWeights = Field(default_factory=TemporalWeights)
    adaptive_start_scale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Adaptive re-weighting across stages: the perceptual and temporal weights are scaled by
    this factor in the first stage and ramp linearly to full weight in the last (1.0: off)."""

    @model_validator(mode="after")
    def _vgg_needs_weights(self) -> LossConfig:
        if self.perceptual_kind == "vgg19" and self.perceptual > 0 and not self.vgg19_weights:
            raise ValueError(
                "perceptual_kind 'vgg19' needs vgg19_weights (a local weights file); nothing is "
                "downloaded. Use perceptual_kind 'ms_ssim' for a loss that needs no weights"
            )
        if self.sync > 0 and not self.sync_expert:
            raise ValueError(
                "sync > 0 needs sync_expert (a trained sync expert: file, run id or URI; "
                "train one with `dinet train-syncnet`)"
            )
        return self


class AugmentationConfig(Strict):
    """Gentle augmentation (seed §7): the old pipeline blurred too much."""

    enabled: bool = True
    color_jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    affine_jitter_px: Annotated[float, Field(ge=0.0, le=16.0)] = 2.0
    blur_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    blur_sigma: Annotated[float, Field(ge=0.0, le=3.0)] = 0.6
    references: Literal["same", "independent", "none"] = "same"
    """How reference frames are augmented: with the clip's own parameters ("same": one camera,
    one look), with parameters of their own ("independent"), or not at all ("none")."""


class DataConfig(Strict):
    shards: str | None = None
    """Prepared Parquet shards; default ``$DINET_HOME/data/shards``."""
    audio_features: Literal["logmel", "deepspeech"] = "logmel"
    n_mels: Annotated[int, Field(ge=8, le=256)] = 29
    """Log-mel bands; 29 keeps the audio encoder shape-compatible with public DINet weights."""
    fps: Annotated[int, Field(ge=1)] = 25
    sample_rate: Annotated[int, Field(ge=8000)] = 16000
    audio_window: Annotated[int, Field(ge=1)] = 5
    num_references: Annotated[int, Field(ge=1)] = 5
    clip_len: Annotated[int, Field(ge=2)] = 5
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    val_max_clips: Annotated[int, Field(ge=1)] | None = None
    """Held-out clips validated per epoch, evenly spaced over all of them (None: every clip).
    Validation runs every epoch; on a CPU with few steps per epoch it can cost more than the
    training, so small runs cap it."""
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    crop_margin: Annotated[float, Field(ge=1.0, le=2.0)] = 1.1
    """Crop radius = max(nose-to-chin, mouth width) / 2 * margin (DINet draws 1.05-1.15 at
    random; a fixed value keeps preparation reproducible)."""
    crop_smoothing_frames: Annotated[int, Field(ge=1)] = 5
    """Moving-average window (frames) of the crop centre; the radius is fixed per video."""
    min_face_coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    """Skip a video whose landmarks are valid in fewer than this share of frames."""
    frame_encoding: Literal["png", "jpeg"] = "png"
    """How crops are stored in the shards: lossless PNG (default) or JPEG (quality 95)."""

    @property
    def feature_dim(self) -> int:
        return 29 if self.audio_features == "deepspeech" else self.n_mels


class TrainingConfig(Strict):
    num_workers: Annotated[int, Field(ge=1)] = 2
    cpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    loader_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs reserved by each Ray Data loader task (fractional on small machines)."""
    use_gpu: bool = False
    mixed_precision: bool = True
    """bf16 autocast on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); fp32 elsewhere."""
    max_failures: Annotated[int, Field(ge=-1)] = 2
    checkpoints_to_keep: Annotated[int, Field(ge=1)] = 2
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = None
    """Cap on optimizer steps per epoch (None: one pass over the shard)."""
    seed: int = 0
    storage_path: str | None = None
    """Ray Train storage; default ``$DINET_HOME/ray``. Must be shared storage on a cluster."""
    retrain_audio_path: bool = False
    """Start from an init checkpoint trained on other audio features than ``data`` computes
    (e.g. a public DeepSpeech DINet with log-mel data): its audio encoder is re-initialised
    for this config's features and re-trained; the rest of the network loads. Without it
    such an init checkpoint is refused (``dinet train --retrain-audio-path``)."""


class TrackingConfig(Strict):
    tracking_uri: str | None = None
    """None: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///$DINET_HOME/mlflow.db``."""
    experiment: str = "dinet"
    registered_model: str = "dinet"


class GateConfig(Strict):
    """Promotion gates, measured in the same evaluation run on the same held-out data.

    The floor (always, holder or not): the candidate must beat the still-mouth baseline
    (``paste_reference``) on mouth PSNR and show that it uses the audio. Then, when the alias
    has a holder, the candidate may be no worse than it by more than the ``max_*`` margins."""

    min_mouth_psnr_gain_db: float = 1.0
    """Floor: mouth PSNR at least this many dB above ``paste_reference``'s."""
    min_mouth_open_corr: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.3
    """Floor, audio dependence: the lip reader's mouth opening on the generated frames must
    correlate with the true opening at least this much (where the data tracks the lips; a
    mouth that ignores the audio scores ~0)."""
    min_sync_confidence_gain: float = 0.0
    """Floor, audio dependence: LSE-C above ``paste_reference``'s by more than this (where a
    sync expert is available)."""

    max_mouth_psnr_drop_db: NonNegative = 0.25
    """Mouth-region PSNR may be lower by at most this many dB."""
    max_mouth_ssim_drop: NonNegative = 0.005
    max_sync_confidence_drop: NonNegative = 0.0
    """Sync confidence (LSE-C) may not be lower by more than this (0: not lower)."""
    max_warp_error_increase: NonNegative = 0.05
    """Relative: the flow-warping error may be at most this fraction higher (0.05 = 5 %)."""
    require_sync_expert: bool = False
    """Refuse to promote when no sync expert is available (otherwise the sync gate is skipped
    and reported as such)."""


class EvaluationConfig(Strict):
    """``dinet evaluate`` and the registry's promotion gates."""

    shards: str | None = None
    """Evaluation data (its held-out videos are used); default ``data.shards``."""
    split: Literal["val", "all"] = "val"
    """Which videos of ``shards`` to evaluate on: the held-out split, or all of them (for a set
    made only of identities and voices that no model trained on)."""
    sync_expert: str | None = None
    """Sync expert for the sync metrics: file, run id or URI. Default ``loss.sync_expert``,
    else the registered expert ``syncnet.registered_model@production`` when there is one."""
    sync_offsets: Annotated[int, Field(ge=1, le=30)] = 8
    """The sync scores search audio offsets of -N..N frames (SyncNet's LSE-C / LSE-D)."""
    max_videos: Annotated[int, Field(ge=1)] | None = None
    max_frames: Annotated[int, Field(ge=8)] = 250
    """Frames evaluated per held-out video (from its start)."""
    mouth_size: Annotated[int, Field(gt=0)] | None = None
    """Resolution the metrics are computed at; default the largest trained size among the
    models compared (a lower-resolution model's output is upsampled)."""
    batch_size: Annotated[int, Field(ge=1)] = 16
    baseline_blur_sigma: Positive = 1.5
    """Gaussian sigma of the 'blurred copy' baseline, in pixels at mouth 64 (scaled)."""
    gates: GateConfig = Field(default_factory=GateConfig)

    @field_validator("mouth_size")
    @classmethod
    def _multiple_of_four(cls, size: int | None) -> int | None:
        if size is not None and size % 4:
            raise ValueError(f"mouth_size must be a multiple of 4, got {size}")
        return size


class SyncNetTrainingConfig(Strict):
    """``dinet train-syncnet``: the sync expert (its shape is ``model.syncnet_width``,
    ``model.audio_channels`` and ``frames``)."""

    frames: Annotated[int, Field(ge=2)] | None = None
    """Frames per window the expert judges; default ``data.clip_len``. An expert used as the
    training sync loss must match ``data.clip_len``; for evaluation only, a longer window than
    the generator's clips reads sync more reliably (SyncNet's own is 5)."""
    steps: Annotated[int, Field(ge=1)] = 600
    batch_size: Annotated[int, Field(ge=2)] = 32
    lr: Positive = 1e-3
    mouth_size: Annotated[int, Field(gt=0)] = 64
    """Crops are read at this mouth size; the expert resizes mouths to 64 px anyway."""
    min_shift: Annotated[int, Field(ge=1)] = 2
    max_shift: Annotated[int, Field(ge=1)] = 8
    """Negatives pair a clip with audio shifted by min_shift..max_shift frames (either way)."""
    registered_model: str = "dinet-syncnet"
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.75
    """Held-out accuracy needed for a new expert to take the ``production`` alias."""

    @model_validator(mode="after")
    def _shift_range(self) -> SyncNetTrainingConfig:
        if self.max_shift < self.min_shift:
            raise ValueError(
                f"max_shift ({self.max_shift}) must be >= min_shift ({self.min_shift})"
            )
        return self


class DINetConfig(Strict):
    """The whole platform configuration (one YAML file)."""

    name: str = "dinet"
    model: ModelConfig = Field(default_factory=ModelConfig)
    stages: list[StageConfig]
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    syncnet: SyncNetTrainingConfig = Field(default_factory=SyncNetTrainingConfig)

    @field_validator("stages")
    @classmethod
    def _stages_increase(cls, stages: list[StageConfig]) -> list[StageConfig]:
        if not stages:
            raise ValueError("needs at least one stage")
        sizes = [s.mouth_size for s in stages]
        for i in range(1, len(sizes)):
            if sizes[i] <= sizes[i - 1]:
                raise ValueError(
                    f"mouth sizes must strictly increase from stage to stage, got {sizes} "
                    f"(stage {i} has {sizes[i]} after {sizes[i - 1]})"
                )
        return stages

    @model_validator(mode="after")
    def _audio_matches_model(self) -> DINetConfig:
        if self.model.audio_channels != self.data.feature_dim:
            raise ValueError(
                f"model.audio_channels ({self.model.audio_channels}) must equal the audio "
                f"feature size of data ({self.data.audio_features}: {self.data.feature_dim})"
            )
        return self

    @property
    def sync_expert_frames(self) -> int:
        """Frames per window of the sync expert this config trains."""
        return self.syncnet.frames or self.data.clip_len

    def stage(self, mouth_size: int) -> StageConfig:
        for stage in self.stages:
            if stage.mouth_size == mouth_size:
                return stage
        raise KeyError(
            f"no stage with mouth_size {mouth_size}; stages are "
            f"{[s.mouth_size for s in self.stages]}"
        )
