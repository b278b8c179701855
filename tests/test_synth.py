"""Synthetic talking faces: real files, landmarks on the drawn features, a learnable mouth."""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from dinet_platform.synth import audio as sa
from dinet_platform.synth import face as sf
from dinet_platform.synth import render as sr
from dinet_platform.synth.videos import (
    SynthClip,
    clip_seed,
    synthesize_dataset,
    synthesize_video,
)
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

SECONDS, SIZE = 2.0, 128


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SynthClip:
    return synthesize_video(tmp_path_factory.mktemp("synth"), "talk", SECONDS, seed=11, size=SIZE)


def decode(path: Path) -> tuple[list[np.ndarray], np.ndarray, av.video.stream.VideoStream, dict]:
    """All frames (BGR), all audio samples, and stream facts, as a user's reader sees them."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        facts = {
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "rate": video.average_rate,
            "audio_codec": audio.codec_context.name,
            "sample_rate": audio.sample_rate,
            "channels": audio.codec_context.channels,
            "video_seconds": float(video.duration * video.time_base),
            "audio_seconds": float(audio.duration * audio.time_base),
        }
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video)]
        container.seek(0)
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio)])
    return frames, samples, video, facts


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, skipinitialspace=True))
    return rows[0], np.array(rows[1:], dtype=float)


def points(header: list[str], table: np.ndarray) -> np.ndarray:
    """(frames, 68, 2) landmarks from an OpenFace table."""
    xs = table[:, header.index("x_0") : header.index("x_0") + 68]
    ys = table[:, header.index("y_0") : header.index("y_0") + 68]
    return np.stack([xs, ys], axis=-1)


def test_mp4_has_h264_video_and_16k_audio_of_the_same_length(clip: SynthClip) -> None:
    frames, samples, _, facts = decode(clip.video)
    assert facts["video_codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert facts["rate"] == 25 and len(frames) == SECONDS * 25 == clip.num_frames
    assert frames[0].shape == (SIZE, SIZE, 3)
    assert facts["audio_codec"] == "aac" and facts["sample_rate"] == 16000
    assert facts["channels"] == 1
    assert abs(facts["audio_seconds"] - facts["video_seconds"]) <= 1 / 25
    # AAC codes whole 1024-sample frames: a decoder may return up to one frame of padding
    expected = int(SECONDS * 16000)
    assert expected <= len(samples) < expected + 1024
    assert np.abs(samples).max() <= 1.0 and np.abs(samples).max() > 0.3


def test_alac_audio_keeps_the_exact_sample_count(tmp_path: Path) -> None:
    lossless = synthesize_video(tmp_path, "exact", 0.6, seed=2, size=64, audio_codec="alac")
    _, samples, _, facts = decode(lossless.video)
    assert facts["audio_codec"] == "alac" and len(samples) == 0.6 * 16000


def test_csv_has_openface_layout(clip: SynthClip) -> None:
    first_line = clip.landmarks.read_text().splitlines()[0]
    assert first_line.startswith("frame, face_id, timestamp, confidence, success, x_0, x_1, ")
    header, table = read_csv(clip.landmarks)
    assert header[5:] == [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    assert len(table) == clip.num_frames
    np.testing.assert_array_equal(table[:, 0], np.arange(1, clip.num_frames + 1))
    np.testing.assert_allclose(table[:, 2], np.arange(clip.num_frames) / 25, atol=1e-3)
    assert (table[:, 4] == 1).all() and (table[:, 3] > 0.9).all()
    pts = points(header, table)
    assert pts.min() >= 0 and pts.max() < SIZE


def test_landmarks_lie_on_the_drawn_mouth(clip: SynthClip) -> None:
    frames, _, _, _ = decode(clip.video)
    header, table = read_csv(clip.landmarks)
    pts = points(header, table)
    truth = json.loads(clip.truth.read_text())["frames"]
    opening = np.array([f["mouth_open_px"] for f in truth])
    # the inner-lip gap in the CSV is the ground-truth opening
    np.testing.assert_allclose(np.linalg.norm(pts[:, 66] - pts[:, 62], axis=1), opening, atol=0.01)
    width = np.linalg.norm(pts[:, 54] - pts[:, 48], axis=1)
    np.testing.assert_allclose(width, [f["mouth_width_px"] for f in truth], atol=0.01)
    # wide open: between the inner-lip landmarks lies the dark mouth interior (between the
    # teeth and the tongue), much darker than the cheek
    open_frames = np.flatnonzero(opening > 0.25 * width)
    assert len(open_frames) >= 3
    for i in open_frames:
        luma = frames[i].astype(float) @ [0.114, 0.587, 0.299]
        cheek = np.round((pts[i, 3] + pts[i, 31]) / 2).astype(int)
        skin = luma[cheek[1] - 1 : cheek[1] + 2, cheek[0] - 1 : cheek[0] + 2].mean()
        gap = pts[i, 62] + np.linspace(0.0, 1.0, 15)[:, None] * (pts[i, 66] - pts[i, 62])
        gap = np.round(gap).astype(int)
        darkest = luma[gap[:, 1], gap[:, 0]].min()
        assert skin - darkest > 25, f"frame {i}: no dark mouth interior between the lips"
    # the mouth box the landmarks describe changes with the opening (the drawing moved with it)
    shut, wide = int(np.argmin(opening)), int(np.argmax(opening))
    box = slice(int(pts[wide, 51, 1]), int(pts[wide, 57, 1]) + 1)
    cols = slice(int(pts[wide, 48, 0]), int(pts[wide, 54, 0]) + 1)
    assert np.abs(frames[wide][box, cols].astype(int) - frames[shut][box, cols]).mean() > 10


def test_render_reports_the_points_it_draws_with() -> None:
    rng = np.random.default_rng(0)
    ident = sf.random_identity(rng, 96, 96)
    renderer = sr.FaceRenderer(ident, rng)
    pose = sf.Pose(angle=2.0, scale=1.04, dx=1.5, dy=-2.0)
    shape = sf.MouthShape(opening=0.4, width=1.0, rounding=0.2, teeth=0.5, tongue=0.5)
    image, marks = renderer.render(pose, shape, openness=1.0)
    m = pose.matrix(ident.centre)
    expected = sf.landmarks(ident, shape, 1.0) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(marks, expected, atol=1e-9)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_mouth_opens_for_vowels_and_follows_audio_energy(clip: SynthClip) -> None:
    _, samples, _, _ = decode(clip.video)
    truth = json.loads(clip.truth.read_text())["frames"]
    opening = np.array([f["mouth_open_px"] for f in truth])
    viseme = np.array([f["viseme"] for f in truth])
    silent, vowel = opening[viseme == 0], opening[viseme >= 6]
    assert len(silent) and len(vowel)
    assert np.median(silent) < 1.0 and vowel.mean() > 3 * max(silent.mean(), 0.5)
    energy = np.sqrt(np.mean(samples[: clip.num_frames * 640].reshape(-1, 640) ** 2, axis=1))
    assert np.corrcoef(energy, opening)[0, 1] > 0.4


def _band_features(audio: np.ndarray, frames: int) -> np.ndarray:
    """Log energies in 12 bands per 40 ms frame, ±2 frames of context, per-speaker centred."""
    spectrum = np.abs(np.fft.rfft(audio.reshape(frames, 640) * np.hanning(640), axis=1)) ** 2
    freqs = np.fft.rfftfreq(640, 1 / 16000)
    edges = np.geomspace(80, 8000, 13)
    bands = np.stack(
        [spectrum[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in itertools.pairwise(edges)],
        axis=1,
    )
    logs = np.log(bands + 1e-6)
    logs -= logs.mean(0)
    context = [np.roll(logs, k, axis=0) for k in range(-2, 3)]
    return np.concatenate([*context, np.ones((frames, 1))], axis=1)


def test_mouth_is_predictable_from_audio_of_an_unseen_speaker() -> None:
    """The task is learnable: even a linear model on band energies predicts the opening."""

    def speaker(seed: int, seconds: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        segments, voice = sa.phone_sequence(rng, seconds), sa.random_voice(rng)
        frames = int(seconds * 25)
        audio = sa.synthesize_audio(segments, voice, frames * 640, 16000, rng)
        return _band_features(audio, frames), sa.mouth_tracks(segments, frames, 25).opening

    train = [speaker(seed) for seed in range(3)]
    x = np.concatenate([f for f, _ in train])
    y = np.concatenate([o for _, o in train])
    weights = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
    test_x, test_y = speaker(100)
    r2 = 1 - np.mean((test_x @ weights - test_y) ** 2) / np.var(test_y)
    assert r2 > 0.4


def test_mouth_depends_only_on_phones_within_100_ms() -> None:
    rng = np.random.default_rng(5)
    segments = sa.phone_sequence(rng, 3.0)
    base = sa.mouth_tracks(segments, 75, 25)
    cut = next(i for i, s in enumerate(segments) if s.start > 1.5)
    changed = segments[:cut] + [replace(s, phone="a") for s in segments[cut:]]
    other = sa.mouth_tracks(changed, 75, 25)
    centres = (np.arange(75) + 0.5) / 25
    before = centres < segments[cut].start - sa.COARTICULATION_MS / 1000
    np.testing.assert_array_equal(base.opening[before], other.opening[before])
    assert not np.array_equal(base.opening, other.opening)


def test_same_seed_same_bytes_other_seed_other_person(tmp_path: Path) -> None:
    a = synthesize_video(tmp_path / "a", "x", 0.6, seed=4, size=64)
    b = synthesize_video(tmp_path / "b", "x", 0.6, seed=4, size=64)
    c = synthesize_video(tmp_path / "c", "x", 0.6, seed=5, size=64)
    for path_a, path_b in zip(a.paths, b.paths, strict=True):
        assert path_a.read_bytes() == path_b.read_bytes(), path_a.name
    ident_a = json.loads(a.truth.read_text())["identity"]
    ident_c = json.loads(c.truth.read_text())["identity"]
    assert ident_a != ident_c and a.video.read_bytes() != c.video.read_bytes()


def test_dataset_clips_have_own_seeds_and_identities(tmp_path: Path) -> None:
    clips = synthesize_dataset(tmp_path, 2, 0.4, seed=9, size=64)
    assert [c.name for c in clips] == ["synth_0000", "synth_0001"]
    assert [c.seed for c in clips] == [clip_seed(9, 0), clip_seed(9, 1)]
    identities = [json.loads(c.truth.read_text())["identity"] for c in clips]
    assert identities[0] != identities[1]
    again = synthesize_dataset(tmp_path / "again", 1, 0.4, seed=9, size=64)
    assert again[0].video.read_bytes() == clips[0].video.read_bytes()


def test_interrupted_write_leaves_no_half_clip(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = sr.FaceRenderer.render

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sr.FaceRenderer, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize_video(tmp_path, "cut", 1.0, seed=1, size=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 65}, "size"),
        ({"seconds": 0}, "seconds"),
        ({"name": "a/b"}, "name"),
        ({"speech": "opera"}, "speech"),
        ({"speech": "tts", "voice_pool": "choir"}, "voice pool"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"name": "x", "seconds": 0.4, "seed": 0, "size": 64} | kwargs
    with pytest.raises(ValueError, match=message):
        synthesize_video(tmp_path, **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_synth_writes_the_clips(tmp_path: Path) -> None:
    from dinet_platform.cli import app

    out = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--videos",
            "2",
            "--seconds",
            "0.4",
            "--seed",
            "3",
            "--size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"synth_000{i}.{ext}" for i in range(2) for ext in ("csv", "json", "mp4")]
    assert "synth_0001" in result.output and "2 synthetic clips" in result.output
