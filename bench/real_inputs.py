"""What a model does with what users bring: real face photos driven by real speech.

    python bench/real_inputs.py --model models/base [--photos astronaut hopper camera FILE]
                                [--seconds 8] [--frames-dir DIR] [--out FILE.json]

Each photo ships inside an installed wheel (scikit-image's ``astronaut`` and ``camera``,
matplotlib's ``grace_hopper.jpg``) and becomes a still avatar the way ``POST /v1/avatars`` makes
one from ``frames`` (:meth:`Avatar.from_images`: the face and its mouth are detected, dlib's 68
points when installed). The speech is English sentences in a **held-out espeak-ng voice**
(accent and variant outside the training pool) over a recording's noise floor. Frames come
from ``render_frames``, the loop ``dinet dub``, the demo and Serve run; ``--frames-dir`` gets
a strip per photo: its lower face, the model's rest pose, then every 4th generated frame.

Per photo it reports

* the detector, and where the blended mouth box sits (centre, in % of the face width from the
  68-point detector's mouth when dlib is installed);
* ``motion_corr``: Pearson correlation over frames between how far the mouth region moved from
  the model's own rest pose (mean |frame - rest| under the blend mask, ``rest`` = the frame it
  generates for silence) and the speech's energy in that frame (RMS over its 40 ms, smoothed
  over +-1 frame, as the mouth is coarticulated); ``motion_corr_reversed`` is the same against
  the time-reversed energy: what chance gives. ``change_corr`` correlates the change from the
  photo itself instead, which also carries the constant loss of the photo's texture;
* ``outside_changed``: pixels that changed outside the blend mask (the blend promises 0).

A model trained on cartoon faces is not expected to look real on a photo; it is expected to
open the mouth with the syllables and to stay on the mouth.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import markdown_table, write_json
from dinet_platform.media.audio_features import logmel_features
from dinet_platform.media.landmarks import dlib_face, face_detector_name
from dinet_platform.media.openface import LandmarkError
from dinet_platform.registry.loading import load_engine
from dinet_platform.runtime.avatar import Avatar
from dinet_platform.runtime.dub import render_frames
from dinet_platform.synth.speech import (
    SpeechVoice,
    random_sentence,
    speak_fresh,
)

RATE = 16000
VOICE = SpeechVoice("en-gb-scotland", "m4", 45, 60, 165)


def _photo(name: str) -> np.ndarray:
    """RGB uint8 photo: a file path, or the name of one shipped inside an installed wheel."""
    if Path(name).is_file():
        image = cv2.imread(name, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{name}: not a readable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if name == "hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            data = np.frombuffer(handle.read(), np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    from skimage import data as skimage_data

    image = getattr(skimage_data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image


def speech(seconds: float, seed: int) -> np.ndarray:
    """Sentences with short pauses in the held-out voice, 16 kHz float32."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    for utterance in speak_fresh([random_sentence(rng) for _ in range(int(seconds) + 2)],
                                 VOICE):
        parts += [utterance.samples(RATE),
                  np.zeros(int(rng.uniform(0.2, 0.5) * RATE), np.float32)]
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    audio = 0.89 * audio / max(1e-6, float(np.abs(audio).max()))
    return (audio + room_noise(len(audio), seed)).astype(np.float32)


def room_noise(samples: int, seed: int) -> np.ndarray:
    """A recording's noise floor (-54 dBFS, as in ``dinet data synth``): no microphone gives
    digital silence, and the model never heard it."""
    return 0.002 * np.random.default_rng(seed + 1).standard_normal(samples).astype(np.float32)


def frame_energy(audio: np.ndarray, frames: int, fps: int) -> np.ndarray:
    per = RATE // fps
    padded = np.pad(audio, (0, max(0, frames * per - len(audio))))[: frames * per]
    rms = np.sqrt(np.mean(padded.reshape(frames, per) ** 2, axis=1))
    return np.convolve(np.pad(rms, 1, mode="edge"), np.ones(3) / 3, "valid")


def measure(name: str, engine, info, audio: np.ndarray, frames_dir: Path | None) -> dict:
    photo = _photo(name)
    data = info.config.data
    with tempfile.TemporaryDirectory() as folder:
        avatar = Avatar.from_images([photo], folder, mouth_size=info.mouth_size, data=data)
    frames_count = round(len(audio) / RATE * data.fps)
    features = logmel_features(audio, frames_count, sample_rate=RATE, fps=data.fps,
                               n_mels=data.n_mels)
    mask = np.zeros(photo.shape[:2], np.float32)
    top, left = int(avatar.track.top[0]), int(avatar.track.left[0])
    mask[top:top + avatar.mask.shape[0], left:left + avatar.mask.shape[1]] = avatar.mask
    rows, cols = np.flatnonzero(mask.max(axis=1) > 0), np.flatnonzero(mask.max(axis=0) > 0)
    pad = (rows[-1] - rows[0]) // 2  # the lower face around the mouth box, for the strip
    view = (slice(max(0, rows[0] - pad), rows[-1] + pad), slice(max(0, cols[0] - pad),
                                                                 cols[-1] + pad))
    silence = logmel_features(room_noise(RATE, 0), data.fps, sample_rate=RATE, fps=data.fps,
                              n_mels=data.n_mels)
    _, rest = next(render_frames(engine, avatar, silence, data.audio_window, batch_size=1))
    change, motion, outside, strip = [], [], 0, [photo[view], rest[view]]
    for step, (_, frame) in enumerate(render_frames(engine, avatar, features, data.audio_window)):
        diff = np.abs(frame.astype(np.float32) - photo).mean(axis=2)
        change.append(float((diff * mask).sum() / mask.sum()))
        moved = np.abs(frame.astype(np.float32) - rest).mean(axis=2)
        motion.append(float((moved * mask).sum() / mask.sum()))
        outside += int(((diff > 0) & (mask == 0)).sum())
        if step % 4 == 0 and len(strip) < 16:
            strip.append(frame[view])
    energy = frame_energy(audio, frames_count, data.fps)
    row = {"photo": Path(name).name, "detector": face_detector_name(), "frames": frames_count,
           "motion_corr": float(np.corrcoef(motion, energy)[0, 1]),
           "motion_corr_reversed": float(np.corrcoef(motion, energy[::-1])[0, 1]),
           "change_corr": float(np.corrcoef(change, energy)[0, 1]),
           "change_vs_photo": float(np.mean(change)),
           "outside_changed": outside}
    try:
        points, _ = dlib_face(photo)
    except LandmarkError:  # not installed, or it refuses the photo
        points = None
    if points is not None:
        centre = np.array([(cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2])
        face_width = float(np.linalg.norm(points[16] - points[0]))
        mouth = points[48:68].mean(axis=0)
        row["box_vs_dlib_mouth_pct"] = float(100 * np.linalg.norm(centre - mouth) / face_width)
    if frames_dir is not None:  # the photo, the rest pose, then every 4th generated frame
        frames_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(frames_dir / f"{Path(name).stem}.png"),
                    cv2.cvtColor(np.concatenate(strip, axis=1), cv2.COLOR_RGB2BGR))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder, models:/..., run id")
    parser.add_argument("--photos", nargs="+", default=["astronaut", "hopper", "camera"],
                        help="names of wheel-shipped photos, or image files")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    engine, info = load_engine(args.model, mode="fp32")
    audio = speech(args.seconds, args.seed)
    rows = []
    for name in args.photos:
        try:
            rows.append(measure(name, engine, info, audio, args.frames_dir))
        except ValueError as exc:  # a refused face is a result too
            rows.append({"photo": Path(name).name, "detector": face_detector_name(),
                         "refused": str(exc)})
    columns = ["photo", "detector", "frames", "motion_corr", "motion_corr_reversed",
               "change_corr", "change_vs_photo", "outside_changed", "box_vs_dlib_mouth_pct",
               "refused"]
    print(f"model {info.source} at mouth {info.mouth_size}; speech: {args.seconds:g} s in "
          f"held-out voice {VOICE.name}")
    print(markdown_table(rows, [c for c in columns if any(c in r for r in rows)]))
    if args.out:
        write_json(args.out, {"model": str(info.source), "voice": VOICE.name, "rows": rows})


if __name__ == "__main__":
    main()
