"""Evaluate generators against baselines on held-out videos (plain PyTorch, no Ray/MLflow).

Every model runs over each held-out video from start to end at its own trained mouth size, with
one fixed set of reference frames per video (spread over the video, as an avatar's references
are at inference) and the masked real frame as source. Outputs of a model trained at another
size are resized to the evaluation size, so all entries are measured with one yardstick.

Entries computed in the same run, on the same frames:

- each model (``candidate``, ``production``, ... or ``model``);
- ``paste_reference``: the real frame with the mouth box replaced by the first reference
  frame's mouth (a mouth that never moves: what a generator must beat on sync);
- ``blurred_source``: the real frame Gaussian-blurred (``baseline_blur_sigma`` px at mouth 64,
  scaled): the true mouth motion with the detail lost (what a generator must beat on
  sharpness and, at equal sync, on PSNR/SSIM);
- ``ground_truth``: the real video itself, so the sync expert's and lip reader's own numbers
  on real footage (the ceilings / floors) are reported next to the models'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.audio_contract import AudioFeatureSpec, check_features
from dinet_platform.config.schema import DINetConfig, EvaluationConfig
from dinet_platform.data import augment
from dinet_platform.evaluation.data import Video, VideoSet
from dinet_platform.evaluation.sync_expert import mouth_crops, sync_scores
from dinet_platform.evaluation.video_metrics import (
    LipReader,
    VideoMetrics,
    image_sums,
    real_motion,
    summarize,
    temporal_sums,
    true_opening,
)
from dinet_platform.geometry import crop_geometry, mouth_mask, mouth_size_of_crop
from dinet_platform.media.audio_features import audio_windows
from dinet_platform.models.checkpoints import load_generator
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.models.syncnet import SyncNet
from dinet_platform.runtime.engine import InferenceEngine

GROUND_TRUTH = "ground_truth"
PASTE_REFERENCE = "paste_reference"
BLURRED_SOURCE = "blurred_source"
BASELINES = (PASTE_REFERENCE, BLURRED_SOURCE)


@dataclass
class EvalModel:
    """A generator ready to evaluate, and where it came from: the network itself, or an
    ``engine`` (an optimized artifact, which runs only as it was built)."""

    name: str
    generator: nn.Module | None
    mouth_size: int
    audio_window: int
    audio_channels: int
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    features: AudioFeatureSpec | None = None
    """The audio features it was trained on (None: only ``audio_channels`` is known)."""
    config: DINetConfig | None = None
    """The config it runs with (for a public DINet file: the one derived for it)."""
    engine: InferenceEngine | None = None
    """Set instead of ``generator`` for an optimized artifact."""


def load_model(name: str, path: str | Path, source: str,
               fallback: DINetConfig | None = None) -> EvalModel:
    """The generator at ``path`` (:func:`~dinet_platform.models.checkpoints.load_generator`:
    a platform checkpoint, a public DINet file, or a bare state dict with ``fallback``'s
    config) as evaluation entry ``name``."""
    loaded = load_generator(path, source, fallback)
    return EvalModel(
        name=name,
        generator=loaded.generator,
        mouth_size=loaded.mouth_size,
        audio_window=loaded.config.data.audio_window,
        audio_channels=loaded.config.model.audio_channels,
        source=source,
        features=loaded.features,
        config=loaded.config,
    )


@dataclass
class EvaluationResult:
    mouth_size: int
    metrics: dict[str, dict[str, float]]
    """Entry name -> metric -> value (over all held-out videos)."""
    per_video: dict[str, dict[str, dict[str, float]]]
    info: dict[str, Any]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    """Entry name -> (h, w, 3) uint8 lower-face crop of one frame (for the comparison PNG)."""
    strips: dict[str, np.ndarray] = field(default_factory=dict)
    """Entry name -> (k, h, w, 3) uint8 lower-face crops of the first video's frames
    ``info["strip_frames"]`` (the same frames for every entry: generated vs true over time)."""

    @property
    def entries(self) -> list[str]:
        return list(self.metrics)

    def as_dict(self) -> dict[str, Any]:
        return {"mouth_size": self.mouth_size, "metrics": self.metrics,
                "per_video": self.per_video, "info": self.info}


@torch.no_grad()
def generate_video(model: EvalModel, video: Video, batch_size: int = 16) -> torch.Tensor:
    """The model's (N, 3, H, W) output for every frame of ``video`` (read at its size)."""
    if video.mouth_size != model.mouth_size:
        raise ValueError(f"video read at mouth {video.mouth_size}, model is {model.mouth_size}")
    frames = video.float_frames()
    source = frames * (1.0 - mouth_mask(model.mouth_size))
    references = frames[torch.from_numpy(video.references)].reshape(1, -1, *frames.shape[-2:])
    features = video.features.numpy()
    audio = torch.from_numpy(audio_windows(features, model.audio_window))
    if model.engine is not None:
        return _engine_frames(model.engine, source, references, audio, batch_size)
    clip = ClipGenerator(model.generator).eval()
    out = [
        clip(source[None, s : s + batch_size], references, audio[None, s : s + batch_size])[0]
        for s in range(0, len(frames), batch_size)
    ]
    return torch.cat(out).clamp_(0.0, 1.0)


def _engine_frames(engine: InferenceEngine, source: torch.Tensor, references: torch.Tensor,
                   audio: torch.Tensor, batch_size: int) -> torch.Tensor:
    """What :class:`ClipGenerator` makes of a clip, by an inference engine: the references
    encoded once, only the mouth box generated (as the product blends it)."""
    features = engine.encode_reference(references)
    fake = torch.cat([engine.generate(source[s : s + batch_size], audio[s : s + batch_size],
                                      features) for s in range(0, len(source), batch_size)])
    box = mouth_mask(mouth_size_of_crop(*fake.shape[-2:]), dtype=fake.dtype)
    return (source + box * fake).clamp_(0.0, 1.0)


def resize_frames(frames: torch.Tensor, mouth_size: int) -> torch.Tensor:
    shape = crop_geometry(mouth_size).crop_shape
    if tuple(frames.shape[-2:]) == shape:
        return frames
    smaller = shape[0] < frames.shape[-2]
    return F.interpolate(frames, size=shape, mode="bilinear", align_corners=False,
                         antialias=smaller).clamp_(0.0, 1.0)


def paste_reference(video: Video) -> torch.Tensor:
    frames = video.float_frames()
    rows, cols = crop_geometry(video.mouth_size).mouth.slices()
    out = frames.clone()
    out[..., rows, cols] = frames[int(video.references[0])][..., rows, cols]
    return out


def blurred_source(video: Video, sigma_at_64: float) -> torch.Tensor:
    params = augment.AugmentParams(blur_sigma=sigma_at_64 * video.mouth_size / 64)
    return augment.apply(video.float_frames(), params)


class _Entry:
    def __init__(self) -> None:
        self.total = VideoMetrics()
        self.per_video: dict[str, dict[str, float]] = {}


def evaluate(
    models: Sequence[EvalModel],
    videos: VideoSet,
    settings: EvaluationConfig,
    expert: SyncNet | None = None,
    *,
    baselines: bool = True,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Metrics (see :mod:`.metrics`) of every model, the baselines and the real videos."""
    if not models:
        raise ValueError("nothing to evaluate: no model given")
    names = [m.name for m in models]
    if len(set(names)) != len(names) or {*names} & {GROUND_TRUTH, *BASELINES}:
        raise ValueError(f"model names must be distinct and not baseline names, got {names}")
    data_features = AudioFeatureSpec.from_manifest(videos.manifest["features"])
    for model in models:
        if model.features is not None:
            check_features(model.features, data_features, model=f"model {model.source!r}",
                           given_as="the evaluation data holds", loader="evaluate")
        if model.audio_channels != videos.feature_dim:
            raise ValueError(
                f"model {model.source!r} takes {model.audio_channels} audio features per frame "
                f"but the evaluation data has {videos.feature_dim}: evaluate it on data "
                "prepared with its audio features"
            )
    if expert is not None and expert.audio_encoder[0][0].in_channels != videos.feature_dim:
        raise ValueError("the sync expert was trained on other audio features than the "
                         "evaluation data has")
    size = settings.mouth_size or max(m.mouth_size for m in models)
    say = progress or (lambda _message: None)
    entries: dict[str, _Entry] = {}
    samples: dict[str, np.ndarray] = {}
    strips: dict[str, np.ndarray] = {}
    strip_frames: list[int] = []
    notes: list[str] = []
    frames_total = 0
    lips_tracked = False
    for position in range(len(videos)):
        video = videos.video(position, size)
        lips_tracked = lips_tracked or video.lips_tracked
        say(f"video {position + 1}/{len(videos)} {video.video_id}: "
            f"{video.num_frames} frames")
        frames_total += video.num_frames
        real = video.float_frames()
        reader = LipReader(real, video.landmarks) if video.lips_tracked else None
        motion = real_motion(real)
        sync_range = min(settings.sync_offsets, (video.num_frames - (expert.frames if expert
                                                                     else 1)) // 2)
        if expert is not None and sync_range < settings.sync_offsets:
            notes.append(f"{video.video_id}: {video.num_frames} frames, sync offsets searched "
                         f"over +-{max(sync_range, 0)} instead of +-{settings.sync_offsets}")
        for name, generated in _outputs(models, videos, position, real, settings, size,
                                        baselines):
            sums = image_sums(generated, real, size).merge(temporal_sums(generated, real, motion))
            if expert is not None and sync_range >= 1:
                scores = sync_scores(expert, mouth_crops(generated, size), video.features,
                                     sync_range)
                sums.sync.append({"lse_d": scores.lse_d, "lse_c": scores.lse_c,
                                  "offset": scores.offset, "windows": scores.windows})
            if reader is not None:
                sums.opening_pred = reader.openings(generated, video.landmarks, size).tolist()
                sums.opening_true = true_opening(video.landmarks).tolist()
            entry = entries.setdefault(name, _Entry())
            entry.total = entry.total.merge(sums)
            entry.per_video[video.video_id] = summarize(sums)
            if position == 0:
                samples[name] = _sample(generated, size)
                strip_frames = strip_frame_indices(len(generated))
                strips[name] = _lower_face(generated[strip_frames], size)
    metrics = {name: summarize(entry.total) for name, entry in entries.items()}
    info = {
        "shards": str(videos.shards),
        "data_hash": videos.content_hash,
        "videos": videos.video_ids,
        "frames": frames_total,
        "mouth_size": size,
        "models": {m.name: {"source": m.source, "mouth_size": m.mouth_size, **m.details}
                   for m in models},
        "sync_expert": None if expert is None else {"frames": expert.frames,
                                                    "offsets": settings.sync_offsets},
        "lip_reader": lips_tracked,
        "strip_frames": strip_frames,
        "notes": notes,
    }
    return EvaluationResult(
        mouth_size=size,
        metrics=metrics,
        per_video={name: entry.per_video for name, entry in entries.items()},
        info=info,
        samples=samples,
        strips=strips,
    )


def _outputs(
    models: Sequence[EvalModel],
    videos: VideoSet,
    position: int,
    real: torch.Tensor,
    settings: EvaluationConfig,
    size: int,
    baselines: bool,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each entry's frames for the video at ``position``, one at a time (bounded memory)."""
    yield GROUND_TRUTH, real
    for model in models:
        video = videos.video(position, model.mouth_size)
        yield model.name, resize_frames(generate_video(model, video, settings.batch_size), size)
    if baselines:
        video = videos.video(position, size)
        yield PASTE_REFERENCE, paste_reference(video)
        yield BLURRED_SOURCE, blurred_source(video, settings.baseline_blur_sigma)


def strip_frame_indices(num_frames: int, count: int = 12) -> list[int]:
    """``count`` consecutive-ish frames from the middle of a clip: every other frame, so a
    strip spans ~1 s at 25 fps, long enough to see a syllable open and close the mouth."""
    span = min(num_frames, 2 * count)
    start = (num_frames - span) // 2
    return list(range(start, start + span, max(1, span // count)))[:count]


def _lower_face(frames: torch.Tensor, mouth_size: int) -> np.ndarray:
    """The mouth box with a margin of (N, 3, H, W) frames, as (N, h, w, 3) uint8."""
    box = crop_geometry(mouth_size).mouth
    margin = max(1, mouth_size // 8)
    lower = frames[:, :, max(box.top - margin, 0) : box.bottom + margin]
    return (lower.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()


def _sample(frames: torch.Tensor, mouth_size: int) -> np.ndarray:
    """The lower face of the middle frame, as uint8 HWC."""
    middle = len(frames) // 2
    return _lower_face(frames[middle : middle + 1], mouth_size)[0]


