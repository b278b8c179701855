"""One video -> one Parquet shard: decode, landmarks, steady crop, audio features, write.

:func:`process_video` never raises for bad input: it returns a :class:`VideoResult` whose
``status`` is ``"skipped"`` and whose ``reason`` names the problem (unreadable video, no audio,
no face, landmarks not matching the frame count, crop leaving the frame, ...). The shard is
written to a temporary name and renamed into place only when complete, and the per-video state
record is written after it, so a killed worker never leaves a shard that looks finished.

Plain Python (no Ray): the Ray Data pipeline in :mod:`.prepare` calls it once per video.
"""

from __future__ import annotations

import hashlib
import re
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinet_platform.data import shards as fmt
from dinet_platform.files import atomic_path
from dinet_platform.geometry import crop_geometry
from dinet_platform.media.audio_features import (
    AudioFeatureError,
    hop_length,
    load_deepspeech,
    logmel_features,
)
from dinet_platform.media.crops import CropError, cut_crop, frame_radii, mouth_widths, plan_crops
from dinet_platform.media.io import iter_frames, probe_video, read_audio, resample_indices
from dinet_platform.media.landmarks import video_landmarks
from dinet_platform.media.openface import MOUTH_POINTS, LandmarkError
from dinet_platform.media.opening import MediaError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
PIPELINE_VERSION = 1
MAX_AUDIO_SHORTFALL_S = 0.5
"""Audio may end this much (or 10 %) before the video; the rest is padded with silence."""
"""Bump when the processing changes output for the same input, to invalidate old shards."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes the shards for a given input; hashed into ``settings_hash``."""

    mouth_size: int = 160
    fps: int = 25
    sample_rate: int = 16000
    audio_features: str = "logmel"
    n_mels: int = 29
    crop_margin: float = 1.1
    crop_smoothing_frames: int = 5
    min_face_coverage: float = 0.8
    frame_encoding: str = "png"
    version: int = PIPELINE_VERSION

    @property
    def feature_dim(self) -> int:
        return 29 if self.audio_features == "deepspeech" else self.n_mels

    @property
    def settings_hash(self) -> str:
        text = repr(sorted(asdict(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class VideoSpec:
    """One input video and its optional companions (same folder, same stem)."""

    video_id: str
    video: str
    audio: str | None = None
    landmarks: str | None = None
    deepspeech: str | None = None
    input_hash: str = ""


@dataclass
class VideoResult:
    video_id: str
    video: str
    status: str
    """"ok" or "skipped"."""
    reason: str | None = None
    shard: str | None = None
    """Shard path relative to the prepared directory."""
    sha256: str | None = None
    bytes: int = 0
    num_frames: int = 0
    input_hash: str = ""
    settings_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def video_id_for(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "video"


def input_hash(spec: VideoSpec) -> str:
    """sha256 over the bytes of every input file the video uses (content, not mtime)."""
    digest = hashlib.sha256()
    for role in ("video", "audio", "landmarks", "deepspeech"):
        path = getattr(spec, role)
        if path:
            digest.update(f"{role}:{fmt.sha256_file(Path(path))}\n".encode())
    return digest.hexdigest()


def encode_frame(rgb: np.ndarray, encoding: str) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("image encoding failed")
    return data.tobytes()


def decode_frame(data: bytes) -> np.ndarray:
    """RGB uint8 image from stored PNG/JPEG bytes."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("corrupt image bytes in shard")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def process_video(spec: VideoSpec, settings: PrepareSettings, out_dir: Path) -> VideoResult:
    """Turn one video into ``shards/<video_id>.parquet``; bad input becomes a skip result."""
    result = VideoResult(
        spec.video_id,
        spec.video,
        "skipped",
        input_hash=spec.input_hash,
        settings_hash=settings.settings_hash,
    )
    try:
        _process(spec, settings, out_dir, result)
        result.status = "ok"
    except MediaError as exc:
        result.reason = f"video/audio: {exc}"
    except LandmarkError as exc:
        result.reason = f"landmarks: {exc}"
    except CropError as exc:
        result.reason = f"crop: {exc}"
    except AudioFeatureError as exc:
        result.reason = f"audio features: {exc}"
    except Exception as exc:  # a bug must not stop the other videos; the reason says where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.reason = (
            f"internal error: {type(exc).__name__}: {exc} "
            f"({Path(where.filename).name}:{where.lineno})"
        )
    if result.status != "ok":
        result.shard, result.sha256, result.bytes = None, None, 0
    return result


def _audio_features(spec: VideoSpec, settings: PrepareSettings, num_frames: int) -> np.ndarray:
    if settings.audio_features == "deepspeech":
        if not spec.deepspeech:
            raise AudioFeatureError(
                f"audio_features is 'deepspeech' but {Path(spec.video).stem}_deepspeech.npy "
                "is missing"
            )
        return load_deepspeech(Path(spec.deepspeech), num_frames)
    source = spec.audio or spec.video
    try:
        samples = read_audio(source, settings.sample_rate)
    except MediaError as exc:
        raise MediaError(f"no usable audio ({exc})") from exc
    audio_seconds = len(samples) / settings.sample_rate
    video_seconds = num_frames / settings.fps
    if video_seconds - audio_seconds > max(MAX_AUDIO_SHORTFALL_S, 0.1 * video_seconds):
        # Zero-padding a long stretch would teach the model to move its lips to silence.
        raise MediaError(
            f"audio is {audio_seconds:.2f} s but the video is {video_seconds:.2f} s "
            f"({Path(source).name})"
        )
    return logmel_features(
        samples,
        num_frames,
        sample_rate=settings.sample_rate,
        fps=settings.fps,
        n_mels=settings.n_mels,
    )


def _process(
    spec: VideoSpec, settings: PrepareSettings, out_dir: Path, result: VideoResult
) -> None:
    cv2.setNumThreads(1)  # one video per CPU: no oversubscription inside a worker
    geometry = crop_geometry(settings.mouth_size)
    probe = probe_video(spec.video)
    source_index = resample_indices(probe.times, settings.fps)
    num_frames = len(source_index)
    features = _audio_features(spec, settings, num_frames)

    marks = video_landmarks(probe, spec.landmarks or None,
                            smooth_frames=settings.crop_smoothing_frames,
                            min_coverage=settings.min_face_coverage)
    points = marks.points[source_index]
    track = plan_crops(
        points,
        (probe.width, probe.height),
        geometry,
        margin=settings.crop_margin,
        smooth_frames=settings.crop_smoothing_frames,
    )
    radii = frame_radii(points, settings.crop_margin)
    widths = mouth_widths(points)
    crop_scale = geometry.crop_width / track.width

    info = {
        "source": {
            "width": probe.width,
            "height": probe.height,
            "fps": round(probe.source_fps, 4),
            "frames": probe.num_source_frames,
            "seconds": round(probe.duration, 4),
        },
        "num_frames": num_frames,
        "landmark_source": marks.source,
        "landmark_coverage": round(float(marks.valid.mean()), 4),
        "crop_radius_px": round(track.radius, 3),
        "crop_scale": round(crop_scale, 6),
        "mouth_width_px_median": round(float(np.median(widths)), 3),
        "mouth_box_px_median": round(float(np.median(2 * radii)), 3),
    }

    final = out_dir / fmt.SHARD_DIR / f"{spec.video_id}.parquet"
    schema = fmt.row_schema(settings.feature_dim).with_metadata(
        {"dinet.video": fmt.dump_json({"video_id": spec.video_id, **info}).decode()}
    )
    # Which output frames each source frame feeds (a source frame may be used 0, 1 or 2 times).
    wanted: dict[int, list[int]] = {}
    for out_index, src in enumerate(source_index.tolist()):
        wanted.setdefault(src, []).append(out_index)
    with atomic_path(final, fsync=True) as tmp:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression={name: ("NONE" if name == "face" else "ZSTD") for name in schema.names},
            use_dictionary=["video_id", "landmark_source"],
            write_statistics=["frame_index"],
        ) as writer:
            rows: list[dict[str, Any]] = []
            for src, frame in iter_frames(probe):
                for out_index in wanted.get(src, []):
                    crop = cut_crop(frame, track, out_index, geometry)
                    mouth = track.to_crop(points[out_index, MOUTH_POINTS], out_index, geometry)
                    rows.append(
                        {
                            "video_id": spec.video_id,
                            "frame_index": out_index,
                            "face": encode_frame(crop, settings.frame_encoding),
                            "mouth_landmarks": mouth.reshape(-1).tolist(),
                            "audio": features[out_index].tolist(),
                            "mouth_width_px": float(widths[out_index]),
                            "mouth_box_px": float(2 * radii[out_index]),
                            "crop_box": [
                                int(track.left[out_index]),
                                int(track.top[out_index]),
                                track.width,
                                track.height,
                            ],
                            "crop_scale": crop_scale,
                            "source_fps": probe.source_fps,
                            "landmark_source": marks.source,
                        }
                    )
                if len(rows) >= fmt.ROW_GROUP_FRAMES:
                    _write_rows(writer, schema, rows)
                    rows = []
            if rows:
                _write_rows(writer, schema, rows)
        written = pq.read_metadata(tmp).num_rows
        if written != num_frames:
            raise MediaError(f"decoded {written} frames on the second pass, expected {num_frames}")
    result.shard = f"{fmt.SHARD_DIR}/{final.name}"
    result.sha256 = fmt.sha256_file(final)
    result.bytes = final.stat().st_size
    result.num_frames = num_frames
    result.info = info


def _write_rows(writer: pq.ParquetWriter, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    # Rows arrive in frame order because source frames do and the mapping is monotonic.
    writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=len(rows))


def feature_settings(settings: PrepareSettings) -> dict[str, Any]:
    """How the audio features were made, for the manifest (and for serving to match)."""
    hop = hop_length(settings.sample_rate, settings.fps)
    if settings.audio_features == "deepspeech":
        return {
            "kind": "deepspeech",
            "dim": 29,
            "fps": settings.fps,
            "file_suffix": "_deepspeech.npy",
        }
    return {
        "kind": "logmel",
        "dim": settings.n_mels,
        "fps": settings.fps,
        "sample_rate": settings.sample_rate,
        "hop_samples": hop,
        "window_samples": 2 * hop,
        "alignment": "window centred on the middle of each video frame",
    }
