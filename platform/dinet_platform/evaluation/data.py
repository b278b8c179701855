"""Whole videos from prepared shards, for evaluation and for training the sync expert.

Training samples (:mod:`dinet_platform.data.samples`) are short clips with references drawn
per clip; evaluation instead runs a model over each held-out video from start to end, with one
fixed set of reference frames per video, as inference does for an avatar. This module reads
such videos through the same shard reader, crop resizing and landmark scaling as the training
loader, so frames, audio features and landmarks line up exactly as they do in training.

Plain numpy/PyTorch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinet_platform.data.samples import ShardReader, select_videos
from dinet_platform.data.shards import ShardError, load_manifest, manifest_path
from dinet_platform.geometry import crop_geometry
from dinet_platform.runtime.avatar import spread_references

INNER_TOP, INNER_BOTTOM = 14, 18
"""Indices of iBUG points 62 and 66 (inner lips, centre) in the 20 mouth points 48..67."""
UPPER_LIP_TOP = 3
"""Index of iBUG point 51 (top of the upper lip, centre)."""
LANDMARK_SOURCES_WITH_LIP_SHAPE = ("openface",)
"""Landmark sources that track the lips' shape (the fallback detector's template does not)."""


@dataclass
class Video:
    """One video's frames at one mouth size, with its audio features and mouth landmarks."""

    video_id: str
    index: int
    """Position in the manifest's ``videos``."""
    frames: torch.Tensor
    """(N, 3, H, W) uint8 RGB crops (``crop_geometry(mouth_size).crop_shape``)."""
    features: torch.Tensor
    """(N, D) float32 audio features, one vector per frame (the shard's ``audio`` column)."""
    landmarks: torch.Tensor
    """(N, 20, 2) float32 iBUG points 48..67 in crop pixels."""
    references: np.ndarray
    """Indices of the fixed reference frames used for every frame of the video."""
    landmark_source: str
    mouth_size: int

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def lips_tracked(self) -> bool:
        """Whether the landmarks follow the lips (so a mouth opening can be read from them)."""
        return self.landmark_source in LANDMARK_SOURCES_WITH_LIP_SHAPE

    def float_frames(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.frames[start:stop].float().div_(255.0)


class VideoSet:
    """The videos of one split of prepared shards, read whole at any mouth size (cached)."""

    def __init__(
        self,
        shards: str | Path,
        split: str = "val",
        *,
        max_videos: int | None = None,
        max_frames: int | None = None,
        num_references: int = 5,
    ):
        self.shards = Path(shards)
        try:
            self.manifest: dict[str, Any] = load_manifest(shards)
        except ShardError as exc:
            raise ValueError(f"evaluation data: {exc}") from None
        self.root = manifest_path(shards).parent
        self.split = split
        self.indices = select_videos(self.manifest, split)
        if not self.indices:
            what = "held-out ('val')" if split == "val" else f"{split!r}"
            raise ValueError(
                f"evaluation data {self.shards} has no {what} videos: evaluation needs videos "
                "whose identities and audio were not used for training. Prepare the data with "
                "`dinet data prepare` (data.val_fraction holds some out) and use those shards"
            )
        if max_videos is not None:
            self.indices = self.indices[:max_videos]
        self.max_frames = max_frames
        self.num_references = num_references
        self.reader = ShardReader()
        self.cache_size = 4
        self._cache: dict[tuple[int, int], Video] = {}

    @property
    def content_hash(self) -> str:
        return str(self.manifest.get("content_hash", ""))

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["features"]["dim"])

    @property
    def video_ids(self) -> list[str]:
        return [self.manifest["videos"][i]["video_id"] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def video(self, position: int, mouth_size: int) -> Video:
        """The ``position``-th video of the split at ``mouth_size`` (the last few are cached,
        so the same video at a few sizes is read once)."""
        key = (position, mouth_size)
        if key not in self._cache:
            self._cache[key] = self._read(self.indices[position], mouth_size)
            while len(self._cache) > self.cache_size:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def videos(self, mouth_size: int) -> list[Video]:
        """Every video of the split at ``mouth_size`` (all in memory: uint8 crops)."""
        return [self._read(index, mouth_size) for index in self.indices]

    def _read(self, index: int, mouth_size: int) -> Video:
        info = self.manifest["videos"][index]
        path = str(self.root / info["shard"])
        count = info["num_frames"]
        if self.max_frames is not None:
            count = min(count, self.max_frames)
        geometry = crop_geometry(mouth_size)
        stored = crop_geometry(self.manifest["stored_mouth_size"])
        frames = np.stack([self.reader.frame(path, i, geometry) for i in range(count)])
        features = self.reader.column(path, "audio")[:count]
        height, width = geometry.crop_shape
        scale = np.array(
            [width / stored.crop_width, height / stored.crop_height], dtype=np.float32
        )
        marks = self.reader.column(path, "mouth_landmarks")[:count].reshape(count, -1, 2) * scale
        return Video(
            video_id=info["video_id"],
            index=index,
            frames=torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
            features=torch.tensor(features, dtype=torch.float32),
            landmarks=torch.from_numpy(marks.astype(np.float32)),
            references=spread_references(count, self.num_references),
            landmark_source=str(info.get("landmark_source", "")),
            mouth_size=mouth_size,
        )
