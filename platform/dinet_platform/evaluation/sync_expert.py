"""The sync expert: training it on prepared shards, and scoring lip sync with it (plain PyTorch).

The public DINet release never shipped its SyncNet training code; this is ours. The expert is
:class:`~dinet_platform.models.syncnet.SyncNet`, and it always hears a clip the way
:func:`~dinet_platform.models.syncnet.clip_audio_track` defines it: the audio feature vector of
each of the clip's T frames, ``features[t : t + T].T`` for a clip starting at frame ``t``
(:func:`audio_track`; the tests check it is the same tensor). Training, the training sync loss
and evaluation therefore all pair mouths and audio identically.

Training (:func:`train_sync_expert`): each batch holds clips of T mouth crops from the training
videos, half paired with their own audio (label 1) and half with the same video's audio shifted
by ``min_shift..max_shift`` frames either way (label 0); the loss is
:func:`~dinet_platform.models.syncnet.sync_loss`. Light brightness jitter and blur make the
expert tolerant of the softer mouths generators produce. Held-out accuracy is measured on the
held-out videos with one in-sync and one shifted pair per clip start.

Scoring (:func:`sync_scores`), as SyncNet's LSE-D / LSE-C: for every offset ``k`` in ``-K..K``
the mean distance ``d(k)`` between the face embedding of each clip (frames ``t..t+T-1``) and the
audio embedding of frames ``t+k..t+k+T-1`` (both unit vectors; distance = Euclidean), over the
clip starts valid for every offset. ``offset = argmin d`` (positive: the lips match audio that
comes ``offset`` frames later), ``LSE-D = min d`` (lower is better) and
``LSE-C = median d - min d`` (confidence, higher is better).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dinet_platform.config.schema import ModelConfig, SyncNetTrainingConfig
from dinet_platform.data import augment
from dinet_platform.evaluation.data import Video
from dinet_platform.geometry import crop_geometry
from dinet_platform.models import build_syncnet, sync_loss
from dinet_platform.models.syncnet import SyncNet


def audio_track(features: torch.Tensor, start: int, frames: int) -> torch.Tensor:
    """(D, T) features of frames ``start .. start+T-1``: what the expert hears for a clip
    starting at ``start`` (the same as ``clip_audio_track`` of that clip's ``clip_audio``)."""
    return features[start : start + frames].T


def mouth_crops(frames: torch.Tensor, mouth_size: int) -> torch.Tensor:
    """The mouth boxes of (..., 3, H, W) crops of ``mouth_size``."""
    rows, cols = crop_geometry(mouth_size).mouth.slices()
    return frames[..., rows, cols]


# --------------------------------------------------------------------------- scoring


@dataclass
class SyncScores:
    distances: list[float]
    """Mean face-audio distance per offset, for offsets -K..K."""
    offset: int
    lse_d: float
    lse_c: float
    windows: int

    @property
    def max_offset(self) -> int:
        return (len(self.distances) - 1) // 2


@torch.no_grad()
def _embed(encoder: Callable[[torch.Tensor], torch.Tensor], items: torch.Tensor,
           batch_size: int) -> torch.Tensor:
    return torch.cat([encoder(items[i : i + batch_size]) for i in range(0, len(items),
                                                                         batch_size)])


@torch.no_grad()
def sync_scores(
    expert: SyncNet,
    mouths: torch.Tensor,
    features: torch.Tensor,
    max_offset: int,
    batch_size: int = 64,
) -> SyncScores:
    """LSE-style scores of (N, 3, h, w) mouth frames in [0, 1] against (N, D) audio features."""
    frames = expert.frames
    count = min(len(mouths), len(features))
    first, last = max_offset, count - frames - max_offset
    if last < first:
        raise ValueError(
            f"a video of {count} frames is too short for sync offsets of +-{max_offset} with "
            f"{frames}-frame clips (needs {frames + 2 * max_offset}): lower "
            "evaluation.sync_offsets"
        )
    device = next(expert.parameters()).device
    starts = range(first, last + 1)
    clips = torch.stack([mouths[t : t + frames] for t in starts]).to(device)
    faces = _embed(expert.embed_face, clips, batch_size)  # (W, E)
    tracks = torch.stack([audio_track(features, s, frames) for s in range(count - frames + 1)])
    audio = _embed(expert.embed_audio, tracks.to(device), batch_size)  # (S, E)
    distances = []
    for k in range(-max_offset, max_offset + 1):
        shifted = audio[first + k : last + k + 1]
        distances.append(float((faces - shifted).norm(dim=1).mean()))
    values = np.array(distances)
    best = int(values.argmin())
    return SyncScores(
        distances=distances,
        offset=best - max_offset,
        lse_d=float(values[best]),
        lse_c=float(np.median(values) - values[best]),
        windows=len(starts),
    )


# --------------------------------------------------------------------------- training


@dataclass
class SyncTrainingResult:
    steps: int
    seconds: float
    train_loss: float
    """Mean loss over the last 10 % of steps."""
    val_loss: float
    accuracy: float
    """Held-out accuracy at telling in-sync pairs from shifted ones (balanced)."""
    val_pairs: int
    offset_abs: float
    """Mean |offset| the expert finds on the held-out real videos (0 is right)."""
    history: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_accuracy": self.accuracy,
            "val_pairs": float(self.val_pairs),
            "val_offset_abs": self.offset_abs,
            "steps": float(self.steps),
            "train_time_s": self.seconds,
        }


def _shifts(min_shift: int, max_shift: int) -> np.ndarray:
    magnitudes = np.arange(min_shift, max_shift + 1)
    return np.concatenate([-magnitudes[::-1], magnitudes])


class _Pairs:
    """Draws (clip start, audio start, label) triples from whole videos."""

    def __init__(self, videos: Sequence[Video], frames: int, shifts: np.ndarray, mouth_size: int):
        self.frames = frames
        self.shifts = shifts
        self.mouths = [mouth_crops(v.frames, mouth_size) for v in videos]  # uint8, no copy
        self.features = [v.features for v in videos]
        self.starts = [max(v.num_frames - frames + 1, 0) for v in videos]
        if sum(self.starts) == 0:
            raise ValueError(f"no video is long enough for {frames}-frame clips")

    def negative_start(self, video: int, t: int, rng: np.random.Generator) -> int | None:
        valid = [t + k for k in self.shifts if 0 <= t + k < self.starts[video]]
        return int(rng.choice(valid)) if valid else None

    def batch(
        self, items: Sequence[tuple[int, int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, 3, m, m) mouths in [0, 1], (B, D, T) audio and (B,) labels."""
        mouths = torch.stack([self.mouths[v][t : t + self.frames] for v, t, _ in items])
        audio = torch.stack([audio_track(self.features[v], a, self.frames) for v, _, a in items])
        labels = torch.tensor([float(a == t) for _, t, a in items])
        return mouths.float().div_(255.0), audio, labels

    def sample(self, count: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        weights = np.array(self.starts, dtype=np.float64)
        items: list[tuple[int, int, int]] = []
        while len(items) < count:
            video = int(rng.choice(len(weights), p=weights / weights.sum()))
            t = int(rng.integers(self.starts[video]))
            if len(items) % 2 == 0:
                items.append((video, t, t))
                continue
            negative = self.negative_start(video, t, rng)
            if negative is not None:
                items.append((video, t, negative))
        return items

    def evaluation_pairs(self, seed: int) -> list[tuple[int, int, int]]:
        """One in-sync and (where possible) one shifted pair per clip start (deterministic)."""
        rng = np.random.default_rng(seed)
        items = []
        for video, starts in enumerate(self.starts):
            for t in range(starts):
                negative = self.negative_start(video, t, rng)
                if negative is not None:
                    items += [(video, t, t), (video, t, negative)]
        return items


def _jitter(mouths: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A brightness gain per clip, and a mild blur (one sigma per batch) for a third of the
    clips: generated mouths are often softer than real ones."""
    gains = torch.from_numpy(rng.uniform(0.85, 1.15, len(mouths))).float()
    out = (mouths * gains.view(-1, 1, 1, 1, 1)).clamp_(0.0, 1.0)
    chosen = torch.from_numpy(np.flatnonzero(rng.random(len(mouths)) < 1 / 3))
    if len(chosen):
        blur = augment.AugmentParams(blur_sigma=float(rng.uniform(0.3, 1.2)))
        picked = out[chosen]
        out[chosen] = augment.apply(picked.flatten(0, 1), blur).view_as(picked)
    return out


@torch.no_grad()
def pair_accuracy(
    expert: SyncNet, pairs: _Pairs, items: Sequence[tuple[int, int, int]], batch_size: int = 64
) -> tuple[float, float]:
    """(accuracy, mean loss) over ``items``: in sync when the similarity is above 0."""
    expert.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(items), batch_size):
        mouths, audio, labels = pairs.batch(items[i : i + batch_size])
        similarity = expert(mouths, audio)
        correct += int(((similarity > 0).float() == labels).sum())
        loss_sum += float(sync_loss(similarity, labels)) * len(labels)
    return correct / max(len(items), 1), loss_sum / max(len(items), 1)


def train_sync_expert(
    train_videos: Sequence[Video],
    val_videos: Sequence[Video],
    model: ModelConfig,
    frames: int,
    settings: SyncNetTrainingConfig,
    *,
    max_offset: int = 8,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[SyncNet, SyncTrainingResult]:
    """Train a sync expert on ``train_videos`` and measure it on ``val_videos``.

    Videos are read at ``settings.mouth_size``; ``on_step(step, loss)`` reports progress.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shifts = _shifts(settings.min_shift, settings.max_shift)
    train = _Pairs(train_videos, frames, shifts, settings.mouth_size)
    val = _Pairs(val_videos, frames, shifts, settings.mouth_size)
    expert = build_syncnet(model, frames=frames)
    optimizer = torch.optim.Adam(expert.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    started = time.perf_counter()
    history: list[float] = []
    expert.train()
    for step in range(settings.steps):
        mouths, audio, labels = train.batch(train.sample(settings.batch_size, rng))
        loss = sync_loss(expert(_jitter(mouths, rng), audio), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, history[-1])
    seconds = time.perf_counter() - started
    expert.requires_grad_(False).eval()
    val_items = val.evaluation_pairs(seed)
    accuracy, val_loss = pair_accuracy(expert, val, val_items)
    offsets = []
    for video in val_videos:
        mouths = mouth_crops(video.float_frames(), settings.mouth_size)
        offset = min(max_offset, (video.num_frames - frames) // 2)
        if offset >= 1:
            offsets.append(abs(sync_scores(expert, mouths, video.features, offset).offset))
    tail = history[-max(1, math.ceil(len(history) / 10)) :]
    return expert, SyncTrainingResult(
        steps=settings.steps,
        seconds=seconds,
        train_loss=float(np.mean(tail)),
        val_loss=val_loss,
        accuracy=accuracy,
        val_pairs=len(val_items),
        offset_abs=float(np.mean(offsets)) if offsets else float("nan"),
        history=history,
    )


__all__ = [
    "SyncScores",
    "SyncTrainingResult",
    "audio_track",
    "mouth_crops",
    "pair_accuracy",
    "sync_scores",
    "train_sync_expert",
]
