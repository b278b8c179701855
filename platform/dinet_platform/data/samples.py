"""Training samples from prepared shards: the transform shared by the Ray and PyTorch loaders.

How samples scale: a sample needs frames of *one* video (a clip, five references, an audio
window), so instead of grouping rows at run time (``groupby(video).map_groups`` would shuffle
every pixel through the object store and hold whole videos in memory) we pre-index windows.
The index is built from the manifest alone, ``(video, t)`` for every valid clip start, so it
costs nothing to build or to shuffle. Each worker then reads only the row groups it needs from
the video's shard through a small per-process cache (:class:`ShardReader`) and decodes only the
frames of its samples, once: the decoded crops stay in the cache for later epochs.

Sample layout for mouth size ``m`` (crop ``H x W`` = ``crop_geometry(m).crop_shape``), clip
length ``L``, ``n_refs`` references, audio window ``A`` and feature size ``D``:

================  =====================  ==================================================
key               shape, dtype           meaning
================  =====================  ==================================================
source            (3, H, W) float32      target frame, mouth box zeroed (RGB in [0, 1])
reference         (3*n_refs, H, W) f32   reference frames of the same video, stacked; none
                                         within +-L frames of t (so never a clip frame)
audio             (D, A) float32         features of frames t-A//2 .. t+A//2, edge-padded
target            (3, H, W) float32      frame t (== clip[0])
clip              (L, 3, H, W) float32   frames t .. t+L-1
clip_source       (L, 3, H, W) float32   clip with the mouth box zeroed
clip_audio        (L, D, A) float32      audio window of every clip frame
mouth_mask        (1, H, W) float32      1 inside the mouth box (crop_geometry)
mouth_landmarks   (L, 20, 2) float32     iBUG 48..67 in crop pixels of each clip frame
video_index       () int64               index of the video in the manifest's ``videos``
frame_index       () int64               t
================  =====================  ==================================================

Plain numpy/PyTorch, no Ray (see :mod:`.dataset` for the Ray Data wrapper).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from dinet_platform.config.schema import DataConfig
from dinet_platform.data import augment
from dinet_platform.data.process import decode_frame
from dinet_platform.data.shards import load_manifest, manifest_path
from dinet_platform.geometry import CropGeometry, crop_geometry, mouth_mask
from dinet_platform.media.audio_features import audio_window
from dinet_platform.media.crops import resize_crop

SPLITS = ("train", "val", "all")


class ShardReader:
    """Per-process cache of open shards: small columns whole, face bytes by row group.

    Memory is bounded by ``max_row_groups`` (about 2 MB each at mouth 160) and
    ``max_decoded`` frames, whatever the video length. Training windows come from every video
    in random order, so the decoded cache holds a whole small training set: frames are
    decoded once, not once per epoch.
    """

    def __init__(self, max_files: int = 64, max_row_groups: int = 256, max_decoded: int = 4096):
        self.max_files, self.max_row_groups, self.max_decoded = (
            max_files,
            max_row_groups,
            max_decoded,
        )
        self._files: OrderedDict[str, tuple[pq.ParquetFile, np.ndarray, dict[str, np.ndarray]]]
        self._files = OrderedDict()
        self._groups: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self._decoded: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()

    @staticmethod
    def _touch(cache: OrderedDict, key: Any, limit: int) -> None:
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)

    def _file(self, path: str) -> tuple[pq.ParquetFile, np.ndarray, dict[str, np.ndarray]]:
        if path not in self._files:
            handle = pq.ParquetFile(path)
            sizes = [handle.metadata.row_group(i).num_rows for i in range(handle.num_row_groups)]
            starts = np.concatenate([[0], np.cumsum(sizes)])
            table = handle.read(columns=["audio", "mouth_landmarks"])
            columns = {
                name: np.asarray(
                    table.column(name).combine_chunks().flatten(), dtype=np.float32
                ).reshape(table.num_rows, -1)
                for name in ("audio", "mouth_landmarks")
            }
            self._files[path] = (handle, starts, columns)
        self._touch(self._files, path, self.max_files)
        return self._files[path]

    def column(self, path: str, name: str) -> np.ndarray:
        """(N, k) float32 values of a small per-frame column ("audio", "mouth_landmarks")."""
        return self._file(path)[2][name]

    def face_bytes(self, path: str, index: int) -> bytes:
        handle, starts, _ = self._file(path)
        group = int(np.searchsorted(starts, index, side="right") - 1)
        key = (path, group)
        if key not in self._groups:
            table = handle.read_row_group(group, columns=["face"])
            self._groups[key] = table.column("face").to_pylist()
        self._touch(self._groups, key, self.max_row_groups)
        return self._groups[key][index - int(starts[group])]

    def frame(self, path: str, index: int, geometry: CropGeometry) -> np.ndarray:
        """(H, W, 3) uint8 RGB crop resized to ``geometry`` (cached; treat as read-only)."""
        key = (path, index, geometry.mouth_size)
        if key not in self._decoded:
            image = decode_frame(self.face_bytes(path, index))
            self._decoded[key] = resize_crop(image, geometry)
        self._touch(self._decoded, key, self.max_decoded)
        return self._decoded[key]


@dataclass(frozen=True)
class Window:
    video_index: int
    t: int


def _video_key(video_id: str) -> int:
    return zlib.crc32(video_id.encode())


def reference_candidates(num_frames: int, t: int, clip_len: int) -> np.ndarray:
    """Frames allowed as references for a clip starting at t: more than ``clip_len`` away."""
    frames = np.arange(num_frames)
    return frames[np.abs(frames - t) > clip_len]


def select_videos(manifest: dict[str, Any], split: str) -> list[int]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [
        i for i, video in enumerate(manifest["videos"]) if split == "all" or video["split"] == split
    ]


def sample_windows(
    manifest: dict[str, Any],
    split: str,
    clip_len: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    block_size: int = 8,
) -> list[Window]:
    """Every valid clip start of the split's videos, shuffled in one-video blocks.

    A start ``t`` is valid when the clip ``t .. t+L-1`` fits and at least one frame is far
    enough away to serve as a reference. With ``shuffle``, windows are shuffled inside each
    video, cut into blocks of ``block_size`` and the blocks shuffled (seeded): random enough
    for SGD, local enough for the shard cache.
    """
    rng = np.random.default_rng(seed)
    blocks: list[list[Window]] = []
    for index in select_videos(manifest, split):
        num_frames = manifest["videos"][index]["num_frames"]
        starts = [
            t
            for t in range(num_frames - clip_len + 1)
            if len(reference_candidates(num_frames, t, clip_len)) > 0
        ]
        if shuffle:
            starts = list(rng.permutation(starts))
        windows = [Window(index, int(t)) for t in starts]
        blocks.extend(windows[i : i + block_size] for i in range(0, len(windows), block_size))
    if shuffle:
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    return [window for block in blocks for window in block]


class SampleBuilder:
    """Builds one training sample (see the module doc) from a window; the shared transform."""

    def __init__(
        self,
        shards: str | Path,
        mouth_size: int,
        clip_len: int,
        *,
        split: str = "train",
        config: DataConfig | None = None,
        seed: int = 0,
        manifest: dict[str, Any] | None = None,
        reader: ShardReader | None = None,
    ):
        self.root = manifest_path(shards).parent
        self.manifest = manifest if manifest is not None else load_manifest(shards)
        self.config = config or DataConfig()
        stored = self.manifest["features"]["dim"]
        kind = self.manifest["features"]["kind"]
        if stored != self.config.feature_dim or kind != self.config.audio_features:
            raise ValueError(
                f"shards hold {self.manifest['features']['kind']} features of size {stored}, "
                f"the config asks for {self.config.audio_features} of size "
                f"{self.config.feature_dim}: re-run `dinet data prepare` with this config"
            )
        self.geometry = crop_geometry(mouth_size)
        self.stored = crop_geometry(self.manifest["stored_mouth_size"])
        self.clip_len = clip_len
        self.split = split
        self.seed = seed
        self.augment = self.config.augmentation.enabled and split == "train"
        self.reader = reader or ShardReader()
        self.mask = mouth_mask(mouth_size)[0].numpy()
        self._keep = 1.0 - self.mask

    def shard(self, video_index: int) -> str:
        return str(self.root / self.manifest["videos"][video_index]["shard"])

    def _rng(self, window: Window, stream: int) -> np.random.Generator:
        video_id = self.manifest["videos"][window.video_index]["video_id"]
        return np.random.default_rng(
            [self.seed & 0xFFFFFFFF, _video_key(video_id), window.t, stream]
        )

    def references(self, window: Window) -> np.ndarray:
        """The reference frame indices of a window (deterministic given the seed)."""
        num_frames = self.manifest["videos"][window.video_index]["num_frames"]
        candidates = reference_candidates(num_frames, window.t, self.clip_len)
        if len(candidates) == 0:
            raise ValueError(f"video too short for a clip at t={window.t}")
        count = self.config.num_references
        replace = len(candidates) < count
        return self._rng(window, 0).choice(candidates, size=count, replace=replace)

    def _frames(self, path: str, indices: np.ndarray) -> torch.Tensor:
        stack = np.stack([self.reader.frame(path, int(i), self.geometry) for i in indices])
        return torch.from_numpy(stack).permute(0, 3, 1, 2).float().div_(255.0)

    def build(self, window: Window) -> dict[str, np.ndarray]:
        path = self.shard(window.video_index)
        clip_idx = np.arange(window.t, window.t + self.clip_len)
        ref_idx = self.references(window)
        clip = self._frames(path, clip_idx)
        refs = self._frames(path, ref_idx)
        height, width = self.geometry.crop_shape

        params = augment.IDENTITY
        if self.augment:
            aug = self.config.augmentation
            params = augment.sample_params(aug, self._rng(window, 1), (height, width))
            if aug.references == "same":  # one call: same parameters by construction
                both = augment.apply(torch.cat([clip, refs]), params)
                clip, refs = both[: self.clip_len], both[self.clip_len :]
            else:
                clip = augment.apply(clip, params)
                if aug.references == "independent":
                    other = augment.sample_params(aug, self._rng(window, 2), (height, width))
                    refs = augment.apply(refs, other)

        clip_np = clip.numpy()
        clip_source = clip_np * self._keep
        features = self.reader.column(path, "audio")
        clip_audio = np.stack(
            [audio_window(features, int(i), self.config.audio_window) for i in clip_idx]
        )
        scale = np.array(
            [width / self.stored.crop_width, height / self.stored.crop_height], dtype=np.float32
        )
        marks = self.reader.column(path, "mouth_landmarks")[clip_idx].reshape(self.clip_len, -1, 2)
        marks = augment.transform_points(marks * scale, params, height, width)
        return {
            "source": clip_source[0],
            "reference": refs.numpy().reshape(-1, height, width),
            "audio": clip_audio[0],
            "target": clip_np[0],
            "clip": clip_np,
            "clip_source": clip_source,
            "clip_audio": clip_audio,
            "mouth_mask": self.mask.copy(),
            "mouth_landmarks": marks.astype(np.float32),
            "video_index": np.int64(window.video_index),
            "frame_index": np.int64(window.t),
        }


class ShardDataset(torch.utils.data.Dataset):
    """Plain-PyTorch view of the same samples as :func:`.dataset.build_dataset` (same builder).

    Used by unit tests and the loader benchmark's baseline; a ``DataLoader`` over it shuffles
    and batches as usual. Items are dicts of tensors with the module-doc layout.
    """

    def __init__(
        self,
        shards: str | Path,
        mouth_size: int,
        clip_len: int,
        split: str = "train",
        config: DataConfig | None = None,
        seed: int = 0,
    ):
        self.builder = SampleBuilder(
            shards, mouth_size, clip_len, split=split, config=config, seed=seed
        )
        self.windows = sample_windows(self.builder.manifest, split, clip_len, shuffle=False)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.builder.build(self.windows[index])
        return {key: torch.as_tensor(value) for key, value in sample.items()}
