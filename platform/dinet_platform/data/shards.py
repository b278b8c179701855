"""The on-disk format of prepared data: Parquet shards, per-video state records, the manifest.

Layout of a prepared directory::

    manifest.json              written last, atomically: what the loader trusts
    shards/<video_id>.parquet  one shard per video (row groups of ROW_GROUP_FRAMES frames)
    state/<video_id>.json      per-video result, so an interrupted run resumes where it stopped

One shard per video because every training sample needs several frames of *one* video: the
loader opens one file per sample group instead of shuffling rows across the cluster. Row groups
keep reads of a long video bounded.

Row schema (one row per output frame at ``fps``):

==================  ==========================  ============================================
column              type                        meaning
==================  ==========================  ============================================
video_id            string (dictionary)         the video's id (file stem, sanitised)
frame_index         int32                       frame number at ``fps``
face                binary                      RGB crop at the stored mouth size, PNG (or JPEG)
mouth_landmarks     fixed_size_list<f32>[40]    iBUG points 48..67 as x0, y0, x1, y1, ... in
                                                stored-crop pixels
audio               fixed_size_list<f32>[dim]   audio feature vector of this frame
mouth_width_px      float32                     mouth corner distance in source pixels
mouth_box_px        float32                     this frame's DINet mouth box side (2R) in
                                                source pixels
crop_box            fixed_size_list<i32>[4]     left, top, width, height of the crop in the
                                                source frame (to paste results back)
crop_scale          float32                     stored-crop pixels per source pixel (video)
source_fps          float32                     the source video's frame rate
landmark_source     string (dictionary)         "openface", or the fallback detector
                                                ("lips" / "haar+lips")
==================  ==========================  ============================================

The Parquet file metadata key ``dinet.video`` holds the video's full info as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from dinet_platform.files import TMP_PREFIX, write_bytes

FORMAT = "dinet-shards/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
STATE_DIR = "state"
ROW_GROUP_FRAMES = 32
MOUTH_POINT_COUNT = 20


class ShardError(Exception):
    """Prepared data is missing or inconsistent; the message says what to do."""


def row_schema(feature_dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("frame_index", pa.int32()),
            ("face", pa.binary()),
            ("mouth_landmarks", pa.list_(pa.float32(), 2 * MOUTH_POINT_COUNT)),
            ("audio", pa.list_(pa.float32(), feature_dim)),
            ("mouth_width_px", pa.float32()),
            ("mouth_box_px", pa.float32()),
            ("crop_box", pa.list_(pa.int32(), 4)),
            ("crop_scale", pa.float32()),
            ("source_fps", pa.float32()),
            ("landmark_source", pa.string()),
        ]
    )


def dump_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, data: Any) -> None:
    write_bytes(path, dump_json(data), fsync=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def clean_temp_files(root: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.tmp-*``) under the prepared directory."""
    removed = []
    for folder in (root, root / SHARD_DIR, root / STATE_DIR):
        if folder.is_dir():
            for leftover in folder.glob(f"{TMP_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed.append(leftover)
    return removed


def manifest_path(shards: str | Path) -> Path:
    """Accept the prepared directory or its manifest file."""
    path = Path(shards)
    return path if path.name == MANIFEST else path / MANIFEST


def load_manifest(shards: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Read the manifest; with ``check_files``, every listed shard must exist at its size."""
    path = manifest_path(shards)
    if not path.is_file():
        raise ShardError(
            f"no {MANIFEST} in {path.parent}: run `dinet data prepare --out {path.parent}` first"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); re-run `dinet data prepare`") from exc
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if check_files:
        for video in manifest["videos"]:
            shard = path.parent / video["shard"]
            if not shard.is_file() or shard.stat().st_size != video["bytes"]:
                raise ShardError(
                    f"shard {shard} is missing or changed since the manifest was written; "
                    "re-run `dinet data prepare` on the same input"
                )
    return manifest


def content_hash(videos: list[dict[str, Any]], settings_hash: str) -> str:
    """Hash of what a loader would read: settings + every shard's bytes (by their sha256)."""
    digest = hashlib.sha256(settings_hash.encode())
    for video in sorted(videos, key=lambda v: v["video_id"]):
        digest.update(f"{video['video_id']}:{video['sha256']}:{video['split']}\n".encode())
    return digest.hexdigest()
