"""Facial landmarks per source frame: from an OpenFace 2 CSV (:mod:`.openface`), or detected.

All landmarks use the iBUG 68-point layout (see :mod:`.openface`).

OpenFace is what DINet's data preparation uses and is far more accurate. Without a CSV the faces
are detected, by the best detector this machine has (:func:`face_detector_name`):

* ``"dlib68"``: dlib's HOG face detector and its 68-point shape predictor (the model file ships in
  the ``face-recognition-models`` package; ``pip install -e '.[landmarks]'``). Real landmarks in
  the same iBUG layout, lips included. The model's training data (iBUG 300-W) excludes
  commercial use.
* ``"haar+lips"``: the fallback. OpenCV's Haar cascade finds the face; the lips (a colour "mouth
  map") are looked for only inside the face box, where a mouth can be, and move a fixed
  mean-face template so that its mouth lies on them: a *geometric* estimate of nose, mouth and
  chin. Template mouths do not move with speech, which is fine for cropping (the crop only needs
  where the mouth is and how big) but not for anything that reads lip shape.
* ``"lips"``: the fallback on an OpenCV build without cascade files: lips alone, accepted only
  where the face they imply lies in the frame, is mostly skin and has two dark eyes above them.

Every detector refuses a frame rather than guess: no face (:data:`NO_FACE`), or several faces.
When too few frames of a video have a face the video is refused with the reasons counted
(:func:`fill_invalid`).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinet_platform.media.face_fallback import fallback_face_box, landmarks_from_box, resized
from dinet_platform.media.io import VideoProbe, iter_frames
from dinet_platform.media.openface import (
    MOUTH_POINTS,
    NO_FACE,
    FaceRefused,
    LandmarkError,
    Landmarks,
    fill_invalid,
    read_openface_csv,
    several_faces,
)

_CASCADE: Any = None
HAAR_FILE = "haarcascade_frontalface_default.xml"
_DLIB: Any = None
DLIB_MODEL = "shape_predictor_68_face_landmarks.dat"
DLIB_MODEL_PACKAGE = "face_recognition_models"


def _cascade() -> Any:
    """OpenCV's Haar face cascade, or None when this OpenCV build has none.

    OpenCV 5 moved ``CascadeClassifier`` out of the main package and its wheels ship no cascade
    files, so the fallback must not depend on it: the lips alone take over then.
    """
    global _CASCADE
    if _CASCADE is None:
        _CASCADE = False
        path = Path(getattr(cv2, "data", None).haarcascades if hasattr(cv2, "data") else "")
        if hasattr(cv2, "CascadeClassifier") and (path / HAAR_FILE).is_file():
            cascade = cv2.CascadeClassifier(str(path / HAAR_FILE))
            _CASCADE = cascade if not cascade.empty() else False
    return _CASCADE or None


def dlib_model_path() -> Path | None:
    """The 68-point model file of the installed ``face-recognition-models``, or None.

    Found without importing the package: its ``__init__`` needs ``pkg_resources``, which recent
    setuptools no longer has.
    """
    try:
        spec = importlib.util.find_spec(DLIB_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / DLIB_MODEL
        if path.is_file():
            return path
    return None


def _dlib() -> tuple[Any, Any] | None:
    """dlib's (face detector, 68-point shape predictor), loaded once; None when not installed."""
    global _DLIB
    if _DLIB is None:
        _DLIB = False
        path = dlib_model_path()
        if path is not None:
            try:
                import dlib

                _DLIB = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)))
            except (ImportError, RuntimeError, OSError):
                _DLIB = False
    return _DLIB or None


DETECTORS = ("dlib68", "fallback")
_DLIB_SPURIOUS = 0.2  # a second detection scoring under this share of the best is not a face


def face_detector_name(detector: str | None = None) -> str:
    """Which detector finds faces here: "dlib68" when dlib and its model are installed (and
    ``detector`` is not "fallback"), else the fallback: "haar+lips", or "lips" without a cascade.
    """
    if detector not in (None, *DETECTORS):
        raise ValueError(f"unknown face detector {detector!r}; choose from {DETECTORS}")
    if detector != "fallback" and _dlib() is not None:
        return "dlib68"
    if detector == "dlib68":
        raise LandmarkError(
            "the dlib68 detector needs dlib and its model: pip install -e '.[landmarks]'"
        )
    return "haar+lips" if _cascade() is not None else "lips"


# ---------------------------------------------------------------------------------- dlib68


def dlib_face(frame: np.ndarray, max_side: int = 640) -> tuple[np.ndarray, tuple[float, ...]]:
    """``(points, box)`` of the one face in an RGB frame: dlib's 68 points (iBUG layout, source
    pixels) and its face box ``(x, y, w, h)``. Raises :class:`FaceRefused` ("no face found",
    "several faces: ...") when there is not exactly one face.

    Faces are looked for on a copy at most ``max_side`` px, upsampled once when nothing is found
    at that size (or when it is under 400 px), so faces down to ~1/16 of the longer side are
    found; the points are fitted on the full-resolution frame. Detections scoring under a fifth
    of the best one are spurious (a mission patch on a spacesuit), not another face.
    """
    models = _dlib()
    if models is None:
        raise LandmarkError("dlib68 is not installed: pip install -e '.[landmarks]'")
    detector, predictor = models
    import dlib

    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    small, scale = resized(gray, max_side)
    rects: list[Any] = []
    scores: list[float] = []
    for upsample in (1,) if max(small.shape[:2]) < 400 else (0, 1):
        rects, scores, _ = detector.run(small, upsample, 0.0)
        if len(rects):
            break
    if len(rects) == 0:
        raise FaceRefused(NO_FACE)
    best = max(scores)
    boxes = [
        (r.left(), r.top(), r.width(), r.height())
        for r, score in sorted(zip(rects, scores, strict=True), key=lambda rs: -rs[1])
        if score >= _DLIB_SPURIOUS * best
    ]
    if len(boxes) > 1:
        raise several_faces(boxes, scale)
    x, y, w, h = (v / scale for v in boxes[0])
    rect = dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
    shape = predictor(gray, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    return points, (x, y, w, h)


def detect_face_box(frame: np.ndarray, max_side: int = 320) -> tuple[float, ...]:
    """The fallback's ``(x, y, w, h)`` face box for the one face in an RGB frame (see
    :func:`~dinet_platform.media.face_fallback.fallback_face_box`), with this machine's Haar
    cascade when it has one."""
    return fallback_face_box(frame, _cascade(), max_side)


def detect_face(frame: np.ndarray, detector: str | None = None) -> np.ndarray:
    """The 68 points of the one face in an RGB frame, by :func:`face_detector_name`'s detector:
    dlib's points, or the template in the fallback's face box. Raises :class:`LandmarkError`."""
    if face_detector_name(detector) == "dlib68":
        return dlib_face(frame)[0]
    return landmarks_from_box(*detect_face_box(frame))


def detected_landmarks(
    probe: VideoProbe, smooth_frames: int = 5, detector: str | None = None
) -> Landmarks:
    """Detected landmarks in every source frame of a video (see :func:`face_detector_name`).

    Frames where the detector refuses are invalid (``failures`` counts the reasons). Template
    boxes, or dlib's points outside the mouth, are median-filtered over ``smooth_frames`` so the
    detector's frame-to-frame wobble does not become crop jitter; dlib's mouth points are kept
    per frame (they follow speech). ``source`` names the detector used.
    """
    source = face_detector_name(detector)
    dlib68 = source == "dlib68"
    count = probe.num_source_frames
    values = np.zeros((count, 136 if dlib68 else 4), dtype=np.float64)
    valid = np.zeros(count, dtype=bool)
    failures: Counter[str] = Counter()
    for index, frame in iter_frames(probe):
        if index >= count:
            break
        try:
            if dlib68:
                values[index] = dlib_face(frame)[0].reshape(-1)
            else:
                values[index] = detect_face_box(frame)
            valid[index] = True
        except FaceRefused as exc:
            failures[exc.reason] += 1
    if valid.any() and smooth_frames > 1:
        frames = np.arange(count)
        filled = np.stack(
            [np.interp(frames, frames[valid], values[valid, k]) for k in range(values.shape[1])],
            axis=1,
        )
        half = smooth_frames // 2
        padded = np.pad(filled, ((half, half), (0, 0)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, smooth_frames, axis=0)
        smoothed = np.median(windows, axis=-1)
        if dlib68:  # mouth points keep their per-frame motion
            mouth = np.zeros((68, 2), dtype=bool)
            mouth[MOUTH_POINTS] = True
            mouth = mouth.reshape(-1)
            smoothed[:, mouth] = filled[:, mouth]
        values = smoothed
    if dlib68:
        points = values.reshape(count, 68, 2).astype(np.float32)
    else:
        points = np.stack([landmarks_from_box(*box) for box in values]) if count else np.zeros(
            (0, 68, 2), np.float32)
    return Landmarks(points, valid, source, dict(failures))


def video_landmarks(
    probe: VideoProbe,
    csv_path: str | Path | None,
    *,
    smooth_frames: int,
    min_coverage: float,
    detector: str | None = None,
) -> Landmarks:
    """Landmarks for every source frame of a video: its OpenFace CSV (one row per source frame)
    when given, else detected; invalid frames interpolated (see :func:`fill_invalid`). Data
    preparation and inference avatars both take faces from videos this way."""
    if csv_path is not None:
        marks = read_openface_csv(csv_path)
        if len(marks.points) != probe.num_source_frames:
            raise LandmarkError(
                f"landmarks CSV {Path(csv_path).name} has {len(marks.points)} frames, "
                f"the video has {probe.num_source_frames}"
            )
    else:
        marks = detected_landmarks(probe, smooth_frames, detector)
    return fill_invalid(marks, min_coverage)
