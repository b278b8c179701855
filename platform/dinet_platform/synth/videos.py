"""Synthetic talking-face clips: the files a user would have, generated on the spot.

No public talking-face data can be downloaded here, so the platform makes its own. Each clip is

* ``<name>.mp4``: H.264 (yuv420p, 25 fps) with a 16 kHz mono AAC track,
* ``<name>.csv``: 68 landmarks per frame in OpenFace 2 layout (what DINet's data prep reads),
* ``<name>.json``: ground truth per frame (mouth opening and width in px, viseme id, ...), so
  evaluation can compare a generated mouth with the true one.

The mouth is a deterministic function of the audio within ±100 ms (``audio``), identity
and head motion vary per clip (``face`` for geometry, ``render`` for drawing), and
everything follows from one integer seed: the same seed gives byte-identical files
(single-threaded x264, bit-exact muxing).

Files are written atomically (temp name in the same directory, then ``os.replace``), and the
JSON sidecar is removed first and written last, so a clip whose ``.json`` exists is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dinet_platform.files import atomic_path
from dinet_platform.media.mp4 import AudioCodec, write_mp4
from dinet_platform.synth.audio import (
    PHONES,
    VISEMES,
    MouthTrack,
    Segment,
    Voice,
    mouth_tracks,
    phone_sequence,
    random_voice,
    synthesize_audio,
)
from dinet_platform.synth.face import (
    Identity,
    MouthShape,
    Pose,
    blink_openness,
    head_poses,
    random_identity,
)
from dinet_platform.synth.render import FaceRenderer
from dinet_platform.synth.speech import (
    VOICE_POOLS,
    SpeechVoice,
    VoicePool,
    random_speech_voice,
    speak_sentences,
)

FPS = 25
SAMPLE_RATE = 16000
FORMAT_VERSION = "dinet-synth/1"
SpeechKind = Literal["formant", "tts"]
"""``formant``: random syllables from a source-filter model (``audio``); ``tts``: English
sentences spoken by espeak-ng with phoneme-timed mouths (``speech``)."""
X264_OPTIONS = {
    # ultrafast: the content is flat-shaded, so the fast preset loses little; crf 18 keeps lips
    # and teeth crisp. threads=1 makes the bitstream deterministic; a 1 s GOP without B-frames
    # keeps random access into the clip cheap for data prep.
    "preset": "ultrafast",
    "crf": "18",
    "g": str(FPS),
    "bf": "0",
    "threads": "1",
    "flags": "+bitexact",
}


@dataclass(frozen=True)
class SynthClip:
    """One generated clip: where its files are and what they hold."""

    name: str
    video: Path
    landmarks: Path
    truth: Path
    num_frames: int
    fps: int
    sample_rate: int
    width: int
    height: int
    seed: int

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.video, self.landmarks, self.truth


def clip_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th clip of a dataset: independent streams per (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def synthesize_dataset(
    out_dir: str | Path,
    videos: int,
    seconds: float,
    seed: int,
    *,
    size: int | tuple[int, int] = 256,
    speech: SpeechKind = "formant",
    voice_pool: VoicePool = "train",
    on_clip: Callable[[SynthClip], None] | None = None,
) -> list[SynthClip]:
    """``videos`` clips named ``synth_0000``, ``synth_0001``, ... each with its own identity.

    Clip ``i`` depends only on ``(seed, i)``, so growing a dataset keeps the clips it had.
    ``speech``/``voice_pool``: see :func:`synthesize_video`. ``on_clip`` is called after each
    clip (progress reporting).
    """
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    clips = []
    for index in range(videos):
        clip = synthesize_video(
            out_dir,
            f"synth_{index:04d}",
            seconds,
            clip_seed(seed, index),
            size=size,
            speech=speech,
            voice_pool=voice_pool,
        )
        clips.append(clip)
        if on_clip is not None:
            on_clip(clip)
    return clips


def synthesize_video(
    out_dir: str | Path,
    name: str,
    seconds: float,
    seed: int,
    *,
    size: int | tuple[int, int] = 256,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
    audio_codec: AudioCodec = "aac",
    speech: SpeechKind = "formant",
    voice_pool: VoicePool = "train",
) -> SynthClip:
    """Generate one clip ``<out_dir>/<name>.{mp4,csv,json}`` from ``seed``.

    ``speech="tts"`` speaks English sentences with an espeak-ng voice from ``voice_pool``
    (``train`` or ``held-out``: disjoint accents and variants); ``"formant"`` synthesizes
    random syllables (the pool does not apply).

    ``size`` is the frame size (``int`` for square, or ``(width, height)``; even numbers >= 64).
    ``audio_codec="alac"`` stores the audio losslessly (exact sample count) instead of AAC.
    """
    width, height = _check_args(name, seconds, size, fps, sample_rate)
    if speech not in ("formant", "tts"):
        raise ValueError(f"speech must be 'formant' or 'tts', got {speech!r}")
    if speech == "tts" and voice_pool not in VOICE_POOLS:
        raise ValueError(f"voice pool must be one of {sorted(VOICE_POOLS)}, got {voice_pool!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_frames = max(1, round(seconds * fps))
    num_samples = num_frames * sample_rate // fps
    face_rng, speech_rng, audio_rng, motion_rng, scene_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(5)
    )
    identity = random_identity(face_rng, width, height)
    voice: Voice | SpeechVoice
    if speech == "tts":
        voice = random_speech_voice(face_rng, voice_pool)
        audio, segments = speak_sentences(speech_rng, voice, num_samples, sample_rate)
    else:
        voice = random_voice(face_rng)
        segments = phone_sequence(speech_rng, num_frames / fps)
        audio = synthesize_audio(segments, voice, num_samples, sample_rate, audio_rng)
    mouth = mouth_tracks(segments, num_frames, fps)
    poses = head_poses(motion_rng, identity, num_frames, fps)
    blinks = blink_openness(motion_rng, num_frames, fps)
    renderer = FaceRenderer(identity, scene_rng)
    points = np.zeros((num_frames, 68, 2))

    def frames() -> Iterator[np.ndarray]:
        for i in range(num_frames):
            image, points[i] = renderer.render(poses[i], _shape(mouth, i), float(blinks[i]))
            yield image

    clip = SynthClip(
        name,
        out / f"{name}.mp4",
        out / f"{name}.csv",
        out / f"{name}.json",
        num_frames,
        fps,
        sample_rate,
        width,
        height,
        seed,
    )
    clip.truth.unlink(missing_ok=True)  # the sidecar marks a complete clip: drop it first
    with atomic_path(clip.video) as tmp:
        write_mp4(tmp, frames(), audio, fps, sample_rate, x264_options=X264_OPTIONS,
                  audio_codec=audio_codec, audio_options=_audio_options(audio_codec),
                  channel_order="bgr", bitexact=True)
    with atomic_path(clip.landmarks) as tmp:
        tmp.write_text(landmarks_csv(points, fps), encoding="utf-8")
    truth = _truth_document(clip, identity, voice, segments, mouth, poses, points)
    with atomic_path(clip.truth) as tmp:
        tmp.write_text(_json_lines(truth), encoding="utf-8")
    return clip


def _check_args(
    name: str, seconds: float, size: int | tuple[int, int], fps: int, sample_rate: int
) -> tuple[int, int]:
    """Fail early, naming the bad argument, before any file is touched."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    width, height = (size, size) if isinstance(size, int) else size
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ValueError(f"size must be even and >= 64 (yuv420p), got {width}x{height}")
    if fps < 1 or sample_rate % fps:
        raise ValueError(f"sample_rate ({sample_rate}) must be a multiple of fps ({fps})")
    return width, height


def _shape(mouth: MouthTrack, i: int) -> MouthShape:
    return MouthShape(
        opening=float(mouth.opening[i]),
        width=float(mouth.width[i]),
        rounding=float(mouth.rounding[i]),
        teeth=float(mouth.teeth[i]),
        tongue=float(mouth.tongue[i]),
    )



def _audio_options(codec: AudioCodec) -> dict[str, str]:
    options = {"flags": "+bitexact"}
    if codec == "aac":
        options["aac_coder"] = "fast"  # 2-3x faster than the default two-loop search
        options["b"] = "64k"
    return options


def landmarks_csv(points: np.ndarray, fps: int) -> str:
    """OpenFace 2 style CSV: ``frame, face_id, timestamp, confidence, success, x_0..x_67,
    y_0..y_67`` with ", " separators, frames numbered from 1, timestamp ``(frame - 1) / fps``."""
    header = ["frame", "face_id", "timestamp", "confidence", "success"]
    header += [f"x_{k}" for k in range(68)] + [f"y_{k}" for k in range(68)]
    row = ", ".join(["%d, 0, %.3f, 0.98, 1"] + ["%.3f"] * 136)
    lines = [", ".join(header)]
    for i, frame_points in enumerate(points):
        lines.append(row % (i + 1, i / fps, *frame_points[:, 0], *frame_points[:, 1]))
    return "\n".join(lines) + "\n"


def _json_lines(doc: dict) -> str:
    """JSON with one top-level key per line and one line per element of top-level lists
    (visemes, phones, frames): readable, greppable, and written by the C encoder."""

    def compact(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))

    fields = []
    for key, value in doc.items():
        if isinstance(value, list):
            rendered = "[\n  " + ",\n  ".join(compact(item) for item in value) + "\n ]"
        else:
            rendered = compact(value)
        fields.append(f" {compact(key)}: {rendered}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def _voice_document(voice: Voice | SpeechVoice) -> dict:
    if isinstance(voice, SpeechVoice):
        return {"engine": "espeak-ng", "name": voice.name, "pitch": voice.pitch,
                "pitch_range": voice.pitch_range, "words_per_minute": voice.words_per_minute}
    return {"engine": "formant", "f0_hz": round(voice.f0, 2),
            "formant_scale": round(voice.formant_scale, 4)}


def _truth_document(
    clip: SynthClip,
    identity: Identity,
    voice: Voice | SpeechVoice,
    segments: list[Segment],
    mouth: MouthTrack,
    poses: list[Pose],
    points: np.ndarray,
) -> dict:
    """The JSON sidecar: per-frame ground truth plus what generated it (for analysis)."""
    opening = np.linalg.norm(points[:, 66] - points[:, 62], axis=1)
    width = np.linalg.norm(points[:, 54] - points[:, 48], axis=1)
    frames = [
        {
            "frame": i + 1,
            "mouth_open_px": round(float(opening[i]), 3),
            "mouth_width_px": round(float(width[i]), 3),
            "viseme": int(mouth.viseme[i]),
            "opening": round(float(mouth.opening[i]), 4),
            "width": round(float(mouth.width[i]), 4),
            "rounding": round(float(mouth.rounding[i]), 4),
            "teeth": round(float(mouth.teeth[i]), 4),
            "tongue": round(float(mouth.tongue[i]), 4),
            "head": {
                "angle": round(poses[i].angle, 3),
                "scale": round(poses[i].scale, 4),
                "dx": round(poses[i].dx, 3),
                "dy": round(poses[i].dy, 3),
            },
        }
        for i in range(clip.num_frames)
    ]
    return {
        "format": FORMAT_VERSION,
        "name": clip.name,
        "seed": clip.seed,
        "fps": clip.fps,
        "sample_rate": clip.sample_rate,
        "num_frames": clip.num_frames,
        "width": clip.width,
        "height": clip.height,
        "frame_time": "frame i (1-based) shows the mouth at t = (i - 0.5) / fps seconds",
        "files": {"video": clip.video.name, "landmarks": clip.landmarks.name},
        "voice": _voice_document(voice),
        "identity": {
            "mouth_width_px": round(identity.mouth_width, 2),
            "face_axes_px": [round(v, 2) for v in identity.axes],
            "skin_bgr": list(identity.skin),
            "lip_bgr": list(identity.lip),
        },
        "visemes": [
            {
                "id": v.id,
                "name": v.name,
                "opening": v.opening,
                "width": v.width,
                "rounding": v.rounding,
                "teeth": v.teeth,
                "tongue": v.tongue,
            }
            for v in VISEMES
        ],
        "phones": [
            {
                "phone": s.phone,
                "viseme": PHONES[s.phone].viseme,
                "start": round(s.start, 4),
                "end": round(s.end, 4),
            }
            for s in segments
        ],
        "frames": frames,
    }
