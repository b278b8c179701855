"""The preprocessing job: videos (+ audio, + landmarks) -> Parquet shards + manifest, on Ray Data.

Pipeline::

    ray.data.from_items(video specs)          one row per video still to do
      .map(process one video, num_cpus=1)     decode, crop, features; writes its own shard
      .take_all()                             small result rows back to the driver
    -> split train/val by video -> manifest.json (atomic, last)

Each map task writes its video's shard itself (temp name + rename) instead of handing frames
to ``Dataset.write_parquet``: shard names stay deterministic (``<video_id>.parquet``), a
video's frames stay together (what the loader needs), a failed video costs only itself, and
finished videos are recorded in ``state/`` so a re-run after a crash does only what is left.
On a multi-node cluster ``out_dir`` must be shared storage (NFS), like Ray Train's
``storage_path``.

Idempotence: a video is skipped when its state record has the same input hash (sha256 of its
input files) and settings hash, and its shard is on disk with the recorded sha256. Re-running
on unchanged input therefore does no decoding and yields a byte-identical manifest (no
timestamps in it) with the same ``content_hash``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dinet_platform.config.schema import DataConfig
from dinet_platform.data import shards as fmt
from dinet_platform.data.process import (
    VIDEO_EXTENSIONS,
    PrepareSettings,
    VideoResult,
    VideoSpec,
    feature_settings,
    input_hash,
    process_video,
    video_id_for,
)
from dinet_platform.files import write_bytes
from dinet_platform.geometry import crop_geometry
from dinet_platform.media.audio_features import deepspeech_path


@dataclass
class PrepareReport:
    """What a prepare run did, for the CLI summary (the manifest holds the data itself)."""

    out_dir: Path
    manifest: dict[str, Any]
    processed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    cleaned_temp_files: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.manifest["skipped"]


def settings_from_config(config: DataConfig, mouth_size: int) -> PrepareSettings:
    crop_geometry(mouth_size)  # validates the mouth size with a clear error
    return PrepareSettings(
        mouth_size=mouth_size,
        fps=config.fps,
        sample_rate=config.sample_rate,
        audio_features=config.audio_features,
        n_mels=config.n_mels,
        crop_margin=config.crop_margin,
        crop_smoothing_frames=config.crop_smoothing_frames,
        min_face_coverage=config.min_face_coverage,
        frame_encoding=config.frame_encoding,
    )


def discover_inputs(inputs: str | Path | Sequence[str | Path]) -> list[VideoSpec]:
    """Video files (a folder is searched, non-recursively) and their companions.

    Companions sit next to the video with the same stem: ``<name>.wav`` (audio, preferred over
    the video's own track), ``<name>.csv`` (OpenFace 2 landmarks) and ``<name>_deepspeech.npy``.
    """
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    videos: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            videos.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS))
        else:
            videos.append(item)
    specs = []
    for video in videos:

        def companion(path: Path) -> str | None:
            return str(path.resolve()) if path.is_file() else None

        specs.append(
            VideoSpec(
                video_id=video_id_for(video),
                video=str(video.resolve()) if video.exists() else str(video),
                audio=companion(video.with_suffix(".wav")),
                landmarks=companion(video.with_suffix(".csv")),
                deepspeech=companion(deepspeech_path(video)),
            )
        )
    return specs


def _used_inputs(spec: VideoSpec, settings: PrepareSettings) -> VideoSpec:
    """Drop companions the settings do not use, so they do not change the input hash."""
    if settings.audio_features == "deepspeech":
        return VideoSpec(spec.video_id, spec.video, None, spec.landmarks, spec.deepspeech)
    return VideoSpec(spec.video_id, spec.video, spec.audio, spec.landmarks, None)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One prepare at a time per output folder (a second one would delete the first's temps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another `dinet data prepare` is writing to {out_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reusable(out_dir: Path, spec: VideoSpec, settings_hash: str) -> VideoResult | None:
    state = out_dir / fmt.STATE_DIR / f"{spec.video_id}.json"
    try:
        record = VideoResult(**json.loads(state.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if record.input_hash != spec.input_hash or record.settings_hash != settings_hash:
        return None
    if record.status != "ok" and (record.reason or "").startswith("internal error"):
        return None  # a crash of ours, not the input's fault: try again
    if record.status == "ok":
        shard = out_dir / (record.shard or "")
        if not shard.is_file() or shard.stat().st_size != record.bytes:
            return None
        if fmt.sha256_file(shard) != record.sha256:
            return None
    record.video = spec.video
    return record


def _process_row(row: dict[str, Any], out_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map function: one video spec row in, one result row out (JSON-encoded)."""
    import torch

    torch.set_num_threads(1)
    result = process_video(VideoSpec(**row), PrepareSettings(**settings), Path(out_dir))
    record = asdict(result)
    fmt.atomic_write_json(Path(out_dir) / fmt.STATE_DIR / f"{result.video_id}.json", record)
    return {"result": json.dumps(record)}


def _run(
    todo: list[VideoSpec],
    settings: PrepareSettings,
    out_dir: Path,
    use_ray: bool,
    say: Callable[[str], None],
) -> list[VideoResult]:
    """Process the videos (Ray Data, or in this process) and report each as it finishes."""
    rows = [asdict(spec) for spec in todo]
    kwargs = {"out_dir": str(out_dir), "settings": asdict(settings)}
    if not rows:
        return []
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        outputs = dataset.map(_process_row, fn_kwargs=kwargs, num_cpus=1).iter_rows()
    else:
        outputs = (_process_row(row, **kwargs) for row in rows)
    results = []
    for done, out in enumerate(outputs, start=1):
        result = VideoResult(**json.loads(out["result"]))
        outcome = "ok" if result.status == "ok" else f"skipped: {result.reason}"
        say(f"[{done}/{len(rows)}] {result.video_id}: {outcome}")
        results.append(result)
    return results


def split_videos(video_ids: list[str], val_fraction: float) -> dict[str, str]:
    """Deterministic train/val split by video: the videos with the smallest sha256(id) are val.

    Depends only on the set of ids (not their order or the run), and holds out at least one
    video whenever there are two or more, so validation never sees a training video's frames.
    """
    n = len(video_ids)
    n_val = 0 if n < 2 else min(n - 1, max(1, math.floor(val_fraction * n + 0.5)))
    ranked = sorted(video_ids, key=lambda v: hashlib.sha256(v.encode()).hexdigest())
    val = set(ranked[:n_val])
    return {v: ("val" if v in val else "train") for v in video_ids}


def prepare_dataset(
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    config: DataConfig | None = None,
    mouth_size: int = 160,
    use_ray: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Prepare shards for every video in ``inputs`` into ``out_dir``; see the module doc.

    ``mouth_size`` is the size the crops are *stored* at: the largest training stage, since the
    loader only ever shrinks (area resampling) to smaller stages. Never raises for bad videos;
    they appear under ``manifest["skipped"]`` with the reason. ``force`` re-processes videos
    that are already done.
    """
    started = time.perf_counter()
    config = config or DataConfig()
    out_dir = Path(out_dir).resolve()
    say = log or (lambda _msg: None)
    settings = settings_from_config(config, mouth_size)
    with _locked(out_dir):
        cleaned = fmt.clean_temp_files(out_dir)
        if cleaned:
            say(f"removed {len(cleaned)} leftover temp file(s) of an interrupted run")
        specs = discover_inputs(inputs)
        results: dict[str, VideoResult] = {}
        todo: list[VideoSpec] = []
        reused: list[str] = []
        seen: set[str] = set()
        for spec in specs:
            spec = _used_inputs(spec, settings)
            if spec.video_id in seen:
                results[spec.video + "#dup"] = VideoResult(
                    spec.video_id, spec.video, "skipped", f"duplicate video id {spec.video_id!r}"
                )
                continue
            seen.add(spec.video_id)
            if not Path(spec.video).is_file():
                results[spec.video_id] = VideoResult(
                    spec.video_id, spec.video, "skipped", "video/audio: file not found"
                )
                continue
            spec.input_hash = input_hash(spec)
            record = None if force else _reusable(out_dir, spec, settings.settings_hash)
            if record is not None:
                results[spec.video_id] = record
                reused.append(spec.video_id)
            else:
                todo.append(spec)
        say(f"{len(specs)} video(s): {len(todo)} to process, {len(reused)} already done")
        for result in _run(todo, settings, out_dir, use_ray, say):
            results[result.video_id] = result
        manifest = build_manifest(list(results.values()), settings, config.val_fraction)
        manifest_file = out_dir / fmt.MANIFEST
        data = fmt.dump_json(manifest)
        if not manifest_file.is_file() or manifest_file.read_bytes() != data:
            write_bytes(manifest_file, data, fsync=True)
        _remove_stale(out_dir, manifest)
    return PrepareReport(
        out_dir=out_dir,
        manifest=manifest,
        processed=[spec.video_id for spec in todo],
        reused=reused,
        cleaned_temp_files=len(cleaned),
        seconds=time.perf_counter() - started,
    )


def build_manifest(
    results: list[VideoResult], settings: PrepareSettings, val_fraction: float
) -> dict[str, Any]:
    ok = sorted((r for r in results if r.status == "ok"), key=lambda r: r.video_id)
    skipped = sorted((r for r in results if r.status != "ok"), key=lambda r: (r.video_id, r.video))
    split = split_videos([r.video_id for r in ok], val_fraction)
    geometry = crop_geometry(settings.mouth_size)
    videos = [
        {
            "video_id": r.video_id,
            "video": r.video,
            "shard": r.shard,
            "sha256": r.sha256,
            "bytes": r.bytes,
            "num_frames": r.num_frames,
            "split": split[r.video_id],
            "input_hash": r.input_hash,
            **r.info,
        }
        for r in ok
    ]
    manifest = {
        "format": fmt.FORMAT,
        "settings": asdict(settings),
        "settings_hash": settings.settings_hash,
        "stored_mouth_size": settings.mouth_size,
        "crop_height": geometry.crop_height,
        "crop_width": geometry.crop_width,
        "frame_encoding": settings.frame_encoding,
        "features": feature_settings(settings),
        "row_group_frames": fmt.ROW_GROUP_FRAMES,
        "counts": {
            "videos_in": len(results),
            "videos_ok": len(ok),
            "videos_skipped": len(skipped),
            "frames": sum(r.num_frames for r in ok),
            "bytes": sum(r.bytes for r in ok),
            "train_videos": sum(1 for v in videos if v["split"] == "train"),
            "val_videos": sum(1 for v in videos if v["split"] == "val"),
            "train_frames": sum(v["num_frames"] for v in videos if v["split"] == "train"),
            "val_frames": sum(v["num_frames"] for v in videos if v["split"] == "val"),
        },
        "split": {
            "val_fraction": val_fraction,
            "method": "smallest sha256(video_id) held out",
            "train": [v["video_id"] for v in videos if v["split"] == "train"],
            "val": [v["video_id"] for v in videos if v["split"] == "val"],
        },
        "videos": videos,
        "skipped": [
            {"video_id": r.video_id, "video": r.video, "reason": r.reason} for r in skipped
        ],
    }
    manifest["content_hash"] = fmt.content_hash(videos, settings.settings_hash)
    return manifest


def _remove_stale(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Delete shards/state of videos no longer in the input (the folder mirrors the manifest)."""
    keep_shards = {Path(v["shard"]).name for v in manifest["videos"]}
    keep_ids = {v["video_id"] for v in manifest["videos"]} | {
        s["video_id"] for s in manifest["skipped"]
    }
    for shard in (out_dir / fmt.SHARD_DIR).glob("*.parquet"):
        if shard.name not in keep_shards:
            shard.unlink(missing_ok=True)
    for state in (out_dir / fmt.STATE_DIR).glob("*.json"):
        if state.stem not in keep_ids:
            state.unlink(missing_ok=True)
