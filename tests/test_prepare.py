"""Preprocessing: videos -> Parquet shards + manifest (round trip, bad input, crash safety)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from dinet_platform.config.schema import DataConfig
from dinet_platform.data import shards as fmt
from dinet_platform.data.prepare import prepare_dataset, split_videos
from dinet_platform.data.process import decode_frame
from dinet_platform.geometry import crop_geometry
from dinet_platform.media.audio_features import logmel_features
from dinet_platform.media.io import resample_indices
from dinet_platform.media.openface import read_openface_csv
from dinet_platform.synth.videos import synthesize_video

SYNTH_VIDEOS, SYNTH_SECONDS = 4, 1.6  # as made by conftest.synth_dir


def _copy_clip(src_dir: Path, name: str, dst_dir: Path, new: str) -> tuple[Path, Path]:
    video = dst_dir / f"{new}.mp4"
    shutil.copy(src_dir / f"{name}.mp4", video)
    shutil.copy(src_dir / f"{name}.csv", dst_dir / f"{new}.csv")
    return video, dst_dir / f"{new}.csv"


def _edit_csv(path: Path, *, drop_last: int = 0, shift_x: float = 0.0) -> None:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, skipinitialspace=True))
    header, body = rows[0], rows[1 : len(rows) - drop_last]
    x_cols = [i for i, name in enumerate(header) if name.strip().startswith("x_")]
    for row in body:
        for i in x_cols:
            row[i] = f"{float(row[i]) + shift_x:.3f}"
    path.write_text("\n".join(", ".join(r) for r in [header, *body]) + "\n")


def _strip_audio(src: Path, dst: Path) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = copy
            out.mux(packet)


def _flat_video(path: Path, seconds: float = 1.0, size: int = 160) -> None:
    """A grey video with a tone: decodable, with audio, but no face in it."""
    fps, rate = 25, 16000
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "mono"
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 128, np.uint8), "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            chunk = tone[i * 640 : (i + 1) * 640].astype(np.float32)[None, :]
            audio = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            audio.sample_rate, audio.pts, audio.time_base = rate, i * 640, Fraction(1, rate)
            out.mux(sound.encode(audio))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))


@pytest.mark.ray
def test_round_trip_with_ray(ray_local, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    report = prepare_dataset(synth_dir, out, mouth_size=160)
    manifest = report.manifest
    frames = round(SYNTH_SECONDS * 25)
    assert manifest["counts"]["videos_ok"] == SYNTH_VIDEOS
    assert manifest["skipped"] == []
    assert manifest["counts"]["frames"] == SYNTH_VIDEOS * frames
    assert (manifest["crop_height"], manifest["crop_width"]) == crop_geometry(160).crop_shape
    assert manifest["features"] == {**manifest["features"], "kind": "logmel", "dim": 29}
    # split by video: at least one held out, none in both
    split = manifest["split"]
    assert split["val"] and split["train"] and not set(split["val"]) & set(split["train"])

    geometry = crop_geometry(160)
    box = geometry.mouth
    for video in manifest["videos"]:
        table = pq.read_table(out / video["shard"])
        assert table.num_rows == video["num_frames"] == frames
        assert table.column("frame_index").to_pylist() == list(range(frames))
        face = decode_frame(table.column("face")[0].as_py())
        assert face.shape == (*geometry.crop_shape, 3)
        audio = np.asarray(table.column("audio").to_pylist())
        assert audio.shape == (frames, 29) and np.isfinite(audio).all()
        # The mouth landmarks lie inside the mouth box of the crop (what DINet regenerates).
        marks = np.asarray(table.column("mouth_landmarks").to_pylist()).reshape(frames, 20, 2)
        assert (marks[..., 0] >= box.left).all() and (marks[..., 0] < box.right).all()
        assert (marks[..., 1] >= box.top).all() and (marks[..., 1] < box.bottom).all()
        assert video["sha256"] == fmt.sha256_file(out / video["shard"])

    # Re-running on the same input does no work and changes nothing.
    before = (out / fmt.MANIFEST).read_bytes()
    again = prepare_dataset(synth_dir, out, mouth_size=160)
    assert again.processed == [] and len(again.reused) == SYNTH_VIDEOS
    assert again.manifest["content_hash"] == manifest["content_hash"]
    assert (out / fmt.MANIFEST).read_bytes() == before


@pytest.mark.ray
def test_bad_inputs_are_skipped_with_reasons(ray_local, synth_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        _copy_clip(synth_dir, f"synth_{i:04d}", inputs, f"good_{i}")
    (inputs / "corrupt.mp4").write_bytes(os.urandom(4096))
    _strip_audio(synth_dir / "synth_0002.mp4", inputs / "noaudio.mp4")
    shutil.copy(synth_dir / "synth_0002.csv", inputs / "noaudio.csv")
    _flat_video(inputs / "noface.mp4")
    _, short = _copy_clip(synth_dir, "synth_0003", inputs, "shortcsv")
    _edit_csv(short, drop_last=5)
    _, shifted = _copy_clip(synth_dir, "synth_0003", inputs, "offframe")
    _edit_csv(shifted, shift_x=120.0)

    report = prepare_dataset(inputs, tmp_path / "out", mouth_size=96)
    reasons = {s["video_id"]: s["reason"] for s in report.manifest["skipped"]}
    assert sorted(v["video_id"] for v in report.manifest["videos"]) == ["good_0", "good_1"]
    assert set(reasons) == {"corrupt", "noaudio", "noface", "shortcsv", "offframe"}
    assert "corrupt" in reasons["corrupt"] or "unreadable" in reasons["corrupt"]
    assert "no audio" in reasons["noaudio"]
    assert "no face found" in reasons["noface"]
    assert "has 35 frames, the video has 40" in reasons["shortcsv"]
    assert "crop leaves the frame" in reasons["offframe"]
    # Skipped videos leave no shard behind; the manifest lists exactly what is on disk.
    shards = sorted(p.name for p in (tmp_path / "out" / fmt.SHARD_DIR).iterdir())
    assert shards == ["good_0.parquet", "good_1.parquet"]


@pytest.mark.slow
@pytest.mark.unit
def test_interrupted_run_resumes_to_identical_result(synth_dir: Path, tmp_path: Path) -> None:
    clean = prepare_dataset(synth_dir, tmp_path / "clean", mouth_size=64, use_ray=False)

    # A real crash: SIGKILL a prepare run part-way (after its first finished video).
    out = tmp_path / "killed"
    code = (
        "import sys; from dinet_platform.data.prepare import prepare_dataset; "
        "prepare_dataset(sys.argv[1], sys.argv[2], mouth_size=64, use_ray=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(synth_dir), str(out)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / fmt.STATE_DIR).glob("*.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    # What a kill -9 mid-write leaves: a half-written shard and state record under temp names.
    (out / fmt.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (out / fmt.SHARD_DIR / ".tmp-synth_0003.parquet.dead0001").write_bytes(b"PAR1 half")
    (out / fmt.STATE_DIR / ".tmp-synth_0003.json.dead0002").write_text('{"video_id": ')
    # Every shard that exists under its final name is complete.
    for shard in (out / fmt.SHARD_DIR).glob("*.parquet"):
        assert pq.read_metadata(shard).num_rows == round(SYNTH_SECONDS * 25)

    # the two planted here, and the killed run's own where the kill landed mid-write
    left = list(out.rglob(".tmp-*"))
    assert len(left) >= 2

    resumed = prepare_dataset(synth_dir, out, mouth_size=64, use_ray=False)
    assert resumed.cleaned_temp_files == len(left)
    assert resumed.manifest["content_hash"] == clean.manifest["content_hash"]
    assert resumed.manifest["counts"] == clean.manifest["counts"]
    assert not list(out.rglob(".tmp-*"))
    assert len(resumed.processed) + len(resumed.reused) == SYNTH_VIDEOS
    if proc.returncode == -signal.SIGKILL:  # killed mid-run (not finished first): resumed
        assert resumed.reused and resumed.processed


@pytest.mark.unit
def test_changed_input_or_settings_reprocess_only_what_changed(
    synth_dir: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(synth_dir, inputs)
    out = tmp_path / "out"
    first = prepare_dataset(inputs, out, mouth_size=64, use_ray=False)
    _edit_csv(inputs / "synth_0001.csv", shift_x=1.0)
    second = prepare_dataset(inputs, out, mouth_size=64, use_ray=False)
    assert second.processed == ["synth_0001"]
    assert second.manifest["content_hash"] != first.manifest["content_hash"]
    (inputs / "synth_0002.mp4").unlink()
    third = prepare_dataset(inputs, out, mouth_size=64, use_ray=False)
    assert third.processed == []
    assert not (out / fmt.SHARD_DIR / "synth_0002.parquet").exists()
    fourth = prepare_dataset(
        inputs, out, mouth_size=64, use_ray=False, config=DataConfig(crop_margin=1.2)
    )
    assert len(fourth.processed) == SYNTH_VIDEOS - 1


@pytest.mark.unit
def test_other_frame_rates_are_resampled_to_25(tmp_path: Path) -> None:
    clip = synthesize_video(
        tmp_path / "in", "thirty", 1.0, seed=5, size=160, fps=30, sample_rate=48000
    )
    report = prepare_dataset(tmp_path / "in", tmp_path / "out", mouth_size=64, use_ray=False)
    (video,) = report.manifest["videos"]
    assert clip.num_frames == 30 and video["source"]["frames"] == 30
    assert video["num_frames"] == 25


@pytest.mark.unit
def test_resample_indices() -> None:
    same = resample_indices(np.arange(10) / 25, 25)
    assert same.tolist() == list(range(10))
    thirty = resample_indices(np.arange(30) / 30, 25)
    assert len(thirty) == 25 and thirty[0] == 0 and np.all(np.diff(thirty) >= 1)


@pytest.mark.unit
def test_split_is_deterministic_and_by_video() -> None:
    ids = [f"v{i}" for i in range(10)]
    split = split_videos(ids, 0.2)
    assert split == split_videos(list(reversed(ids)), 0.2)
    assert sum(s == "val" for s in split.values()) == 2
    assert split_videos(["only"], 0.2) == {"only": "train"}
    assert sum(s == "val" for s in split_videos(ids[:3], 0.01).values()) == 1


@pytest.mark.unit
def test_deepspeech_features_are_used_when_configured(synth_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _copy_clip(synth_dir, "synth_0000", inputs, "with")
    _copy_clip(synth_dir, "synth_0001", inputs, "without")
    frames = round(SYNTH_SECONDS * 25)
    features = np.random.default_rng(0).normal(size=(frames - 1, 29)).astype(np.float32)
    np.save(inputs / "with_deepspeech.npy", features)
    config = DataConfig(audio_features="deepspeech")
    report = prepare_dataset(inputs, tmp_path / "out", config=config, mouth_size=64, use_ray=False)
    assert report.manifest["features"]["kind"] == "deepspeech"
    (video,) = report.manifest["videos"]
    stored = np.asarray(pq.read_table(tmp_path / "out" / video["shard"])["audio"].to_pylist())
    np.testing.assert_allclose(stored[: frames - 1], features)
    np.testing.assert_allclose(stored[-1], features[-1])  # one missing frame: edge-padded
    (skip,) = report.manifest["skipped"]
    assert skip["video_id"] == "without" and "_deepspeech.npy" in skip["reason"]


@pytest.mark.unit
def test_logmel_has_one_vector_per_frame_aligned_to_the_frame() -> None:
    rate, fps, frames = 16000, 25, 20
    audio = np.zeros(rate * frames // fps, np.float32)
    hop = rate // fps
    burst = 7
    audio[burst * hop : (burst + 1) * hop] = np.sin(np.arange(hop) * 0.9)
    features = logmel_features(audio, frames, sample_rate=rate, fps=fps, n_mels=29)
    assert features.shape == (frames, 29)
    assert int(np.argmax(features.mean(axis=1))) == burst
    assert logmel_features(audio[:100], frames).shape == (frames, 29)  # short audio: padded


@pytest.mark.slow
@pytest.mark.unit
def test_missing_landmarks_fall_back_to_the_detector(tmp_path: Path) -> None:
    clip = synthesize_video(tmp_path / "in", "nocsv", 1.0, seed=3, size=256)
    truth = read_openface_csv(clip.landmarks).points
    clip.landmarks.unlink()
    report = prepare_dataset(tmp_path / "in", tmp_path / "out", mouth_size=64, use_ray=False)
    (video,) = report.manifest["videos"]
    assert video["landmark_source"] in {"dlib68", "lips", "haar+lips"}
    # The detected crop puts the true mouth (from the withheld CSV) inside the mouth box.
    table = pq.read_table(tmp_path / "out" / video["shard"], columns=["crop_box"])
    crop = np.asarray(table.column("crop_box").to_pylist(), dtype=np.float64)
    geometry = crop_geometry(64)
    scale = np.array([geometry.crop_width, geometry.crop_height]) / crop[:, None, 2:]
    mouth = (truth[:, 48:68] - crop[:, None, :2]) * scale
    box = geometry.mouth
    inside = (
        (mouth[..., 0] >= box.left)
        & (mouth[..., 0] < box.right)
        & (mouth[..., 1] >= box.top)
        & (mouth[..., 1] < box.bottom)
    )
    assert inside.mean() > 0.95
    width = np.median(mouth[:, 6, 0] - mouth[:, 0, 0])
    assert 0.6 * geometry.mouth_size < width < geometry.mouth_size


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        data = np.round(samples * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.unit
def test_separate_wav_audio_is_preferred_and_checked(synth_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _copy_clip(synth_dir, "synth_0000", inputs, "silent")
    _write_wav(inputs / "silent.wav", np.zeros(int(SYNTH_SECONDS * 16000), np.float32))
    _copy_clip(synth_dir, "synth_0001", inputs, "short")
    _write_wav(inputs / "short.wav", np.zeros(int(0.3 * 16000), np.float32))
    report = prepare_dataset(inputs, tmp_path / "out", mouth_size=64, use_ray=False)
    (video,) = report.manifest["videos"]
    stored = np.asarray(pq.read_table(tmp_path / "out" / video["shard"])["audio"].to_pylist())
    silence = logmel_features(np.zeros(16000, np.float32), len(stored))
    np.testing.assert_allclose(stored, silence, atol=1e-6)  # from the .wav, not the mp4
    (skip,) = report.manifest["skipped"]
    assert (
        skip["video_id"] == "short" and "audio is 0.30 s but the video is 1.60 s" in skip["reason"]
    )
