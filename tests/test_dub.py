"""Offline dubbing: ``dinet dub`` writes a playable H.264 mp4 whose frame count and duration
are the speech's and which carries the speech; pixels away from the mouth are the input's; the
avatar round-trips through its directory; bad input is a clear error and leaves no file.

Real files throughout: synthetic talking-face mp4s with OpenFace CSVs, a WAV written from a
second clip's audio, a tiny platform checkpoint (width 0.125, mouth 64) on disk."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest
import torch
from dinet_platform.cli import app
from dinet_platform.config import DINetConfig
from dinet_platform.media.io import probe_video, read_audio
from dinet_platform.models.checkpoints import save_checkpoint
from dinet_platform.optimize.stand_in import synthetic_batches
from dinet_platform.registry.loading import load_engine
from dinet_platform.runtime.avatar import Avatar, AvatarError
from dinet_platform.runtime.blend import feather_mask, paste
from dinet_platform.runtime.dub import DubError, dub_video, load_speech, render_frames
from dinet_platform.synth.videos import synthesize_video
from typer.testing import CliRunner

from tests.support import MOUTH, tiny_config, tiny_state

pytestmark = pytest.mark.unit

FPS = 25
VIDEO_SECONDS = 0.6  # 15 frames: the speech is longer, so the avatar loops
SPEECH_SECONDS = 1.04  # 26 frames
MARGIN = 3  # px around the blended box that encoding may smear


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dub")
    clip = synthesize_video(root, "face", VIDEO_SECONDS, seed=11, size=160)
    other = synthesize_video(root, "voice", 1.4, seed=12, size=96)
    samples = read_audio(other.video, 16000)[: round(SPEECH_SECONDS * 16000)]
    speech = root / "speech.wav"
    with wave.open(str(speech), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.round(samples * 32767).astype(np.int16).tobytes())
    config = DINetConfig.model_validate(tiny_config("tiny-dub"))
    checkpoint = save_checkpoint(root / "ckpt", tiny_state(
        config, seed=0, settle=synthetic_batches(MOUTH, 4, 2)))
    text = root / "notes.mp4"
    text.write_text("this is not a video\n")
    image = root / "still.png"
    import cv2

    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    return {"root": root, "video": clip.video, "landmarks": clip.landmarks, "speech": speech,
            "checkpoint": checkpoint, "text": text, "image": image, "clip": clip}


@pytest.fixture(scope="module")
def engine(inputs):
    return load_engine(str(inputs["checkpoint"]), mode="cache")


@pytest.fixture(scope="module")
def avatar(inputs):
    return Avatar.from_video(inputs["video"], mouth_size=MOUTH, landmarks=inputs["landmarks"])


def test_feather_mask_and_paste():
    mask = feather_mask(40, 30, (10, 5, 20, 20), 0.25)
    assert mask[:10].max() == 0 and mask[30:].max() == 0 and mask[:, :5].max() == 0
    assert mask[:, 25:].max() == 0
    assert mask[20, 15] == 1.0  # interior
    assert 0 < mask[11, 15] < mask[13, 15] < 1  # ramps up from the border
    frame = np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8)
    patch = np.zeros((40, 30, 3), np.uint8)
    out = paste(frame, patch, 7, 9, mask)
    outside = np.ones((60, 50), bool)
    outside[7 + 10 : 7 + 30, 9 + 5 : 9 + 25] = False
    assert np.array_equal(out[outside], frame[outside])
    assert np.array_equal(out[7 + 20, 9 + 15], [0, 0, 0])


def test_avatar_inputs_and_roundtrip(avatar, tmp_path):
    assert avatar.num_frames == round(VIDEO_SECONDS * FPS)
    refs = avatar.references()
    assert refs.shape == (1, 15, 104, 80)
    sources = avatar.sources([0, 3])
    assert sources.shape == (2, 3, 104, 80)
    assert sources[:, :, 32:96, 8:72].abs().max() == 0  # mouth box masked as in training
    assert sources[:, :, :32].abs().max() > 0
    assert [avatar.loop_index(s) for s in range(30)] == (
        list(range(15)) + list(range(13, 0, -1)) + [0, 1])
    saved = avatar.save(tmp_path / "avatar")
    again = Avatar.load(saved)
    assert again.content_hash == avatar.content_hash
    assert all(np.array_equal(a, b) for a, b in zip(avatar.frames, again.frames, strict=True))
    assert np.array_equal(again.crops, avatar.crops)
    assert torch.equal(again.references(), refs)
    assert np.array_equal(again.paste(2, avatar.crops[2]), avatar.paste(2, avatar.crops[2]))


def test_detected_landmarks_without_csv(inputs):
    detected = Avatar.from_video(inputs["video"], mouth_size=MOUTH)
    assert detected.num_frames == round(VIDEO_SECONDS * FPS)
    assert detected.content_hash != Avatar.from_video(
        inputs["video"], mouth_size=MOUTH, landmarks=inputs["landmarks"]).content_hash


def test_far_pixels_bit_identical_and_mouth_generated(engine, avatar, inputs):
    model, info = engine
    speech = load_speech(inputs["speech"], info.config.data)
    assert speech.num_frames == round(SPEECH_SECONDS * FPS)
    rows, cols = np.nonzero(avatar.mask > 0)
    changed_any = False
    for step, (index, frame) in enumerate(render_frames(model, avatar, speech.features[:8],
                                                        info.audio_window, batch_size=3)):
        assert index == avatar.loop_index(step)
        top, left = int(avatar.track.top[index]), int(avatar.track.left[index])
        box = np.zeros(frame.shape[:2], bool)
        box[top + rows.min() : top + rows.max() + 1, left + cols.min() : left + cols.max() + 1] = 1
        assert np.array_equal(frame[~box], avatar.frames[index][~box])
        changed_any |= not np.array_equal(frame[box], avatar.frames[index][box])
    assert changed_any


def test_dub_cli_writes_playable_mp4(engine, avatar, inputs, home, tmp_path):
    out = tmp_path / "dubbed.mp4"
    result = CliRunner().invoke(app, [
        "dub", "--model", str(inputs["checkpoint"]), "--video", str(inputs["video"]),
        "--audio", str(inputs["speech"]), "--out", str(out), "--mode", "static_int8",
        "--landmarks", str(inputs["landmarks"]), "--batch-size", "4", "--no-progress",
        "--data", str(inputs["root"] / "none")])
    # static int8 needs real frames for calibration: none at --data, so a clear refusal
    assert result.exit_code == 2 and "calibration" in result.output, result.output
    assert not out.exists()

    result = CliRunner().invoke(app, [
        "dub", "--model", str(inputs["checkpoint"]), "--video", str(inputs["video"]),
        "--audio", str(inputs["speech"]), "--out", str(out), "--mode", "cache",
        "--landmarks", str(inputs["landmarks"]), "--batch-size", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    frames = round(SPEECH_SECONDS * FPS)
    assert f"{frames} frames" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dubbed.mp4"]  # no temp, no store
    probe = probe_video(out)
    assert probe.num_source_frames == frames
    assert (probe.width, probe.height) == avatar.frame_size
    assert probe.source_fps == FPS
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        audio_seconds = float(audio.duration * audio.time_base)
    assert abs(audio_seconds - SPEECH_SECONDS) < 0.03
    assert abs(frames / FPS - SPEECH_SECONDS) <= 0.5 / FPS
    speech = read_audio(out, 16000)  # decoders pad AAC to whole 1024-sample frames
    assert SPEECH_SECONDS - 0.01 < len(speech) / 16000 < SPEECH_SECONDS + 1024 / 16000 + 0.01
    assert np.abs(speech).max() > 0.01

    # away from the mouth the output is the input frame (up to H.264 at crf 18)
    rows, cols = np.nonzero(avatar.mask > 0)
    for step, decoded in enumerate(probe.frames):
        index = avatar.loop_index(step)
        top, left = int(avatar.track.top[index]), int(avatar.track.left[index])
        far = np.ones(decoded.shape[:2], bool)
        far[max(0, top + rows.min() - MARGIN) : top + rows.max() + 1 + MARGIN,
            max(0, left + cols.min() - MARGIN) : left + cols.max() + 1 + MARGIN] = False
        error = np.abs(decoded[far].astype(int) - avatar.frames[index][far].astype(int))
        assert error.mean() < 2.0, (step, error.mean())


@pytest.mark.parametrize("case", ["missing_video", "text_video", "text_audio", "image_audio",
                                  "video_no_face", "unknown_model", "bad_out"])
def test_bad_input_is_a_clear_error_and_writes_nothing(inputs, home, tmp_path, case):
    args = {"--model": str(inputs["checkpoint"]), "--video": str(inputs["video"]),
            "--audio": str(inputs["speech"]), "--out": str(tmp_path / "out" / "dubbed.mp4"),
            "--landmarks": str(inputs["landmarks"])}
    expected = {
        "missing_video": ("--video", str(tmp_path / "nope.mp4"), "file not found"),
        "text_video": ("--video", str(inputs["text"]), "notes.mp4"),
        "text_audio": ("--audio", str(inputs["text"]), "audio notes.mp4"),
        "image_audio": ("--audio", str(inputs["image"]), "no audio stream"),
        "video_no_face": ("--video", str(inputs["image"]), "still.png"),
        "unknown_model": ("--model", "models:/dinet@production", "'dinet'"),
        "bad_out": ("--out", str(tmp_path / "out" / "dubbed.avi"), "*.mp4"),
    }[case]
    option, value, message = expected
    args[option] = value
    if case in ("text_video", "video_no_face"):
        del args["--landmarks"]
    command = ["dub", "--mode", "cache", "--no-progress"]
    for key, item in args.items():
        command += [key, item]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "error" in result.output and message in result.output, result.output
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_dub_video_refuses_mismatched_avatar(engine, inputs, tmp_path):
    model, info = engine
    other = Avatar.from_video(inputs["video"], mouth_size=96, landmarks=inputs["landmarks"])
    with pytest.raises(DubError, match="mouth 96"):
        dub_video(model, other, inputs["speech"], tmp_path / "x.mp4", model=info,
                  progress=False)
    with pytest.raises(AvatarError, match=r"still\.png"):
        Avatar.from_video(inputs["image"], mouth_size=MOUTH)
    assert not (tmp_path / "x.mp4").exists()


# --------------------------------------------------------------------------- DeepSpeech models


@pytest.fixture(scope="module")
def deepspeech_checkpoint(inputs):
    """A tiny platform checkpoint trained (here: initialised) on DeepSpeech features."""
    config = DINetConfig.model_validate(
        tiny_config("tiny-ds", data={"audio_features": "deepspeech"}))
    return save_checkpoint(inputs["root"] / "ckpt_ds", tiny_state(
        config, seed=1, settle=synthetic_batches(MOUTH, 4, 2)))


def dub_command(model, inputs, out, *extra) -> list[str]:
    return ["dub", "--model", str(model), "--video", str(inputs["video"]),
            "--audio", str(inputs["speech"]), "--out", str(out), "--mode", "fp32",
            "--landmarks", str(inputs["landmarks"]), "--no-progress", *extra]


@pytest.mark.slow
def test_deepspeech_model_dubs_with_its_features_and_refuses_without(
        deepspeech_checkpoint, inputs, home, tmp_path):
    frames = round(SPEECH_SECONDS * FPS)
    out = tmp_path / "out" / "dubbed.mp4"
    runner = CliRunner()

    refused = runner.invoke(app, dub_command(deepspeech_checkpoint, inputs, out))
    assert refused.exit_code == 2, refused.output
    message = " ".join(refused.output.split())
    assert "was trained on DeepSpeech features (29 per frame" in message, message
    assert "--audio-features FILE.npy" in message and "speech_deepspeech.npy" in message

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((frames, 40), np.float32))
    refused = runner.invoke(app, dub_command(deepspeech_checkpoint, inputs, out,
                                             "--audio-features", str(wrong)))
    assert refused.exit_code == 2 and f"shape ({frames}, 40)" in refused.output, refused.output
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((frames - 5, 29), np.float32))
    refused = runner.invoke(app, dub_command(deepspeech_checkpoint, inputs, out,
                                             "--audio-features", str(short)))
    assert refused.exit_code == 2 and "the speech has 26" in refused.output, refused.output
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    features = tmp_path / "speech_ds.npy"
    np.save(features, np.random.default_rng(0).normal(size=(frames, 29)).astype(np.float32))
    result = runner.invoke(app, dub_command(deepspeech_checkpoint, inputs, out,
                                            "--audio-features", str(features)))
    assert result.exit_code == 0, result.output
    assert probe_video(out).num_source_frames == frames

    # the <audio>_deepspeech.npy sidecar convention still works without the option
    sidecar = inputs["root"] / "speech_deepspeech.npy"
    sidecar.write_bytes(features.read_bytes())
    try:
        result = runner.invoke(app, dub_command(deepspeech_checkpoint, inputs,
                                                tmp_path / "sidecar.mp4"))
    finally:
        sidecar.unlink()
    assert result.exit_code == 0, result.output


def test_log_mel_model_refuses_deepspeech_features(inputs, home, tmp_path):
    features = tmp_path / "f.npy"
    np.save(features, np.zeros((26, 29), np.float32))
    result = CliRunner().invoke(app, dub_command(inputs["checkpoint"], inputs,
                                                 tmp_path / "x.mp4", "--audio-features",
                                                 str(features)))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "was trained on log-mel features (29 bands" in message, message
    assert "leave out --audio-features" in message
    assert not (tmp_path / "x.mp4").exists()


def test_public_dinet_file_loads_as_deepspeech_dinet_and_needs_its_features(inputs, tmp_path):
    from dinet_platform.audio_contract import AudioFeatureSpec
    from dinet_platform.models import DINet

    torch.manual_seed(0)
    public = tmp_path / "netG_model_epoch_20.pth"
    torch.save({"state_dict": {"net_g": {f"module.{k}": v
                                         for k, v in DINet().state_dict().items()}}}, public)
    fallback = DINetConfig.model_validate(tiny_config("x"))  # only its stages count: mouth 64
    model, info = load_engine(str(public), mode="fp32", config=fallback)
    assert info.features == AudioFeatureSpec.public_dinet()
    assert info.config.model.width == 1.0 and info.mouth_size == MOUTH
    with pytest.raises(DubError, match=r"trained on DeepSpeech .*--audio-features"):
        dub_video(model, inputs["video"], inputs["speech"], tmp_path / "p.mp4", model=info,
                  landmarks=inputs["landmarks"], progress=False)
    assert not (tmp_path / "p.mp4").exists()
