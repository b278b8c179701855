"""Facial landmarks per source frame: OpenFace 2 CSVs, or a face detector.

All landmarks use the iBUG 68-point layout as ``(N, 68, 2)`` float32 arrays in source-pixel
coordinates (x right, y down). The points the crop needs are 29 (nose bridge: top of the mouth
box), 33 (under the nose: the crop's horizontal centre), 48/54 (mouth corners) and the lowest
point (chin).

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

import csv
import importlib.util
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinet_platform.media.io import VideoProbe, iter_frames

NOSE_BRIDGE, NOSE_BOTTOM, MOUTH_LEFT, MOUTH_RIGHT = 29, 33, 48, 54
MOUTH_POINTS = slice(48, 68)


class LandmarkError(Exception):
    """Landmarks are missing or do not fit the video; the message is the user-facing reason."""


class FaceRefused(LandmarkError):
    """A detector refused a frame. ``reason`` is short and the same for like frames ("no face
    found", "several faces"); the message adds the details (where the faces are)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Landmarks:
    points: np.ndarray
    """(N, 68, 2) float32 source-pixel coordinates, one row per source frame."""
    valid: np.ndarray
    """(N,) bool: the detector's own success flag (False rows were interpolated)."""
    source: str
    """"openface", or the detector used (see :func:`face_detector_name`)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Why the detector refused frames: reason -> number of frames (empty for OpenFace)."""


def read_openface_csv(path: str | Path, min_confidence: float = 0.5) -> Landmarks:
    """Read an OpenFace 2 ``FeatureExtraction`` CSV (header ``frame, face_id, ...``).

    Only the first face (lowest ``face_id``) of each frame is kept. Rows whose ``success`` is 0
    or whose ``confidence`` is below ``min_confidence`` count as invalid.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle, skipinitialspace=True)
            header = [name.strip() for name in next(reader)]
            rows = [row for row in reader if row]
    except (OSError, StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise LandmarkError(f"unreadable landmarks CSV {path.name}: {exc}") from exc
    column = {name: i for i, name in enumerate(header)}
    needed = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    missing = [name for name in needed if name not in column]
    if missing:
        raise LandmarkError(
            f"landmarks CSV {path.name} lacks OpenFace 68-point columns (e.g. {missing[0]})"
        )
    try:
        table = np.asarray([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise LandmarkError(f"landmarks CSV {path.name} has a non-numeric value: {exc}") from exc
    if table.ndim != 2 or len(table) == 0 or table.shape[1] != len(header):
        raise LandmarkError(f"landmarks CSV {path.name} has no rows or ragged rows")
    if "frame" in column:
        frame = table[:, column["frame"]]
        face = table[:, column["face_id"]] if "face_id" in column else np.zeros(len(table))
        order = np.lexsort((face, frame))
        table = table[order]
        keep = np.concatenate([[True], np.diff(table[:, column["frame"]]) != 0])
        table = table[keep]
    xs = table[:, [column[f"x_{i}"] for i in range(68)]]
    ys = table[:, [column[f"y_{i}"] for i in range(68)]]
    points = np.stack([xs, ys], axis=-1).astype(np.float32)
    valid = np.ones(len(table), dtype=bool)
    if "success" in column:
        valid &= table[:, column["success"]] > 0.5
    if "confidence" in column:
        valid &= table[:, column["confidence"]] >= min_confidence
    return Landmarks(points, valid, "openface")


def fill_invalid(landmarks: Landmarks, min_coverage: float) -> Landmarks:
    """Interpolate invalid frames linearly in time from the nearest valid ones.

    Raises :class:`LandmarkError` ("no face found") when fewer than ``min_coverage`` of the
    frames have a valid face: interpolating across long gaps would crop the wrong place.
    """
    valid = landmarks.valid
    coverage = float(valid.mean()) if len(valid) else 0.0
    if coverage < min_coverage:
        need = f"need a face in at least {100 * min_coverage:.0f}%"
        if not landmarks.failures:
            raise LandmarkError(f"no face found in {100 * (1 - coverage):.0f}% of frames ({need})")
        why = ", ".join(
            f"{reason} in {count} frame{'s' if count != 1 else ''}"
            for reason, count in sorted(landmarks.failures.items(), key=lambda kv: -kv[1])
        )
        hint = "; crop to one face" if SEVERAL_FACES in landmarks.failures else ""
        raise LandmarkError(
            f"a face in only {100 * coverage:.0f}% of frames ({need}); "
            f"{landmarks.source}: {why}{hint}"
        )
    if valid.all():
        return landmarks
    frames = np.arange(len(valid))
    flat = landmarks.points.reshape(len(valid), -1).copy()
    for k in range(flat.shape[1]):
        flat[~valid, k] = np.interp(frames[~valid], frames[valid], flat[valid, k])
    return Landmarks(
        flat.reshape(landmarks.points.shape), valid, landmarks.source, landmarks.failures
    )


def _template() -> np.ndarray:
    """A mean frontal face in units of an OpenCV Haar face box (0..1 across, 0..1 down)."""
    pts = np.zeros((68, 2), dtype=np.float64)
    for k in range(17):  # jaw: lower half-ellipse from ear to ear through the chin (~1.07)
        theta = math.pi + math.pi * k / 16
        pts[k] = (0.5 + 0.47 * math.cos(theta), 0.45 - 0.62 * math.sin(theta))
    for k in range(5):  # brows
        arch = 0.02 * math.sin(math.pi * k / 4)
        pts[17 + k] = (0.15 + 0.075 * k, 0.29 - arch)
        pts[22 + k] = (0.55 + 0.075 * k, 0.29 - arch)
    for k in range(4):  # nose bridge 27..30 (29 = top of DINet's mouth box)
        pts[27 + k] = (0.5, 0.38 + 0.08 * k)
    for k in range(5):  # under the nose 31..35 (33 = crop centre)
        pts[31 + k] = (0.40 + 0.05 * k, 0.68 - 0.01 * (2 - abs(k - 2)))
    for base, cx in ((36, 0.31), (42, 0.69)):  # eyes
        for k in range(6):
            theta = math.pi - math.pi * k / 3
            pts[base + k] = (cx + 0.09 * math.cos(theta), 0.40 - 0.035 * math.sin(theta))
    for k in range(12):  # outer lip 48..59: left corner, upper lip, right corner, lower lip
        theta = math.pi - 2 * math.pi * k / 12
        pts[48 + k] = (0.5 + 0.19 * math.cos(theta), 0.81 - 0.06 * math.sin(theta))
    for k in range(8):  # inner lip 60..67
        theta = math.pi - 2 * math.pi * k / 8
        pts[60 + k] = (0.5 + 0.13 * math.cos(theta), 0.81 - 0.025 * math.sin(theta))
    return pts


FACE_TEMPLATE = _template()


def landmarks_from_box(x: float, y: float, w: float, h: float) -> np.ndarray:
    """The 68-point template placed in a face box; the geometric mouth estimate."""
    return (FACE_TEMPLATE * np.array([w, h]) + np.array([x, y])).astype(np.float32)


NO_FACE, SEVERAL_FACES = "no face found", "several faces"
"""The reasons a detector gives for refusing a frame (:class:`FaceRefused`)."""

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


def _resized(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``frame`` shrunk (area interpolation) so its longer side is at most ``max_side``."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return frame, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


def _several(boxes: list[tuple[float, ...]], scale: float) -> FaceRefused:
    where = ", ".join(
        f"({x / scale:.0f},{y / scale:.0f} {w / scale:.0f}px)" for x, y, w, *_ in boxes[:4]
    )
    return FaceRefused(SEVERAL_FACES, f"{len(boxes)} found (x,y width: {where})")


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
    small, scale = _resized(gray, max_side)
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
        raise _several(boxes, scale)
    x, y, w, h = (v / scale for v in boxes[0])
    rect = dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
    shape = predictor(gray, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    return points, (x, y, w, h)


# ------------------------------------------------------------------------------- fallback

# Skin in YCrCb (Chai & Ngan): holds from dark to light skin under ordinary light.
_SKIN_LOW = np.array([0, 133, 77], dtype=np.uint8)
_SKIN_HIGH = np.array([255, 173, 127], dtype=np.uint8)
# Template proportions used to place lips in a face box (see _template).
_MOUTH_WIDTH, _MOUTH_ROW = 0.38, 0.81
# Where lips may lie in a Haar face box (fractions of its side): centre column +-, rows, width.
_LIPS_DX, _LIPS_ROWS, _LIPS_WIDTH = 0.15, (0.65, 0.95), (0.15, 0.6)
# A Haar box on a colour frame is a face only when this much of its centre is skin.
_FACE_SKIN = 0.45
# Lips alone (no cascade): the lips span at least this share of the frame's longer side (at the
# detection size), and eyes are darker than this share of the cheeks (see _has_eyes).
_MIN_LIPS, _EYE_DARKNESS = 0.04, 0.7


def _skin(frame: np.ndarray) -> np.ndarray:
    return cv2.inRange(cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb), _SKIN_LOW, _SKIN_HIGH) > 0


def _is_colour(frame: np.ndarray) -> bool:
    """False for grey frames (or grey stored as RGB), where skin colour says nothing."""
    ycrcb = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)
    return float(np.abs(ycrcb[..., 1:].astype(np.float32) - 128).mean()) > 2.0


def _skin_fraction(skin: np.ndarray, box: tuple[float, ...]) -> float:
    """Skin share of the centre of a face box (cheeks, nose, mouth: not hair or background)."""
    x, y, w, h = box[:4]
    rows = slice(max(0, round(y + 0.3 * h)), max(0, round(y + 0.9 * h)))
    cols = slice(max(0, round(x + 0.2 * w)), max(0, round(x + 0.8 * w)))
    part = skin[rows, cols]
    return float(part.mean()) if part.size else 0.0


def lip_candidates(frame: np.ndarray) -> list[tuple[float, float, float, float, int]]:
    """Lip-like blobs in an RGB frame as ``(centre_x, centre_y, width, height, area)``, largest
    first.

    Lips are redder than the skin around them: Hsu et al.'s mouth map
    ``Cr^2 * (Cr^2 - eta * Cr/Cb)^2`` over skin pixels, thresholded at its top 3 %, gives lip
    blobs. A candidate must be wider than tall and surrounded by skin (a red object in the
    background is not).
    """
    ycrcb = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)
    skin = cv2.inRange(ycrcb, _SKIN_LOW, _SKIN_HIGH) > 0
    if skin.sum() < 100:
        return []
    cr = ycrcb[..., 1].astype(np.float64)
    cb = ycrcb[..., 2].astype(np.float64)
    cr2 = (cr / 255.0) ** 2
    ratio = cr / np.maximum(cb, 1.0)
    cr2, ratio = cr2 / cr2[skin].max(), ratio / ratio[skin].max()
    eta = 0.95 * cr2[skin].mean() / max(ratio[skin].mean(), 1e-9)
    mouth_map = np.where(skin, cr2 * (cr2 - eta * ratio) ** 2, 0.0)
    lips = (mouth_map >= np.quantile(mouth_map[skin], 0.97)).astype(np.uint8)
    lips = cv2.morphologyEx(lips, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, _, stats, centres = cv2.connectedComponentsWithStats(lips)
    height, width = skin.shape
    found = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < 20 or not 1.3 <= w / max(h, 1) <= 8:
            continue
        x0, x1, y0, y1 = x - w // 2, x + w + w // 2, y - 2 * h, y + 3 * h
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            continue  # a face whose surroundings are cut off is not usable anyway
        ring = skin[y0:y1, x0:x1].copy()
        ring[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = True
        if ring.mean() >= 0.75:
            found.append((float(centres[k][0]), float(centres[k][1]), float(w), float(h), area))
    return sorted(found, key=lambda c: -c[4])


def detect_mouth(frame: np.ndarray) -> tuple[float, float, float] | None:
    """``(centre_x, centre_y, width)`` of the largest lip-like blob in an RGB frame, or None.
    Any red blob in skin qualifies: callers must check it lies where a face's mouth can be."""
    found = lip_candidates(frame)
    return found[0][:3] if found else None


def _lips_in_face(frame: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float] | None:
    """The centre of the lips inside a face box, in frame pixels, or None when no lip blob lies
    where this box's mouth can be (the box is then used as it is).

    The mouth map is computed on the box widened by a quarter and extended half a box down (the
    lips' test looks at the skin around them), but only blobs whose centre lies in the box's
    mouth band count: never the neck below the chin or the background beside the head.
    """
    x, y, w, h = box
    height, width = frame.shape[:2]
    x0, y0 = max(0, x - w // 4), max(0, y)
    x1, y1 = min(width, x + w + w // 4), min(height, y + h + h // 2)
    if x1 <= x0 or y1 <= y0:
        return None
    for cx, cy, lip_w, _, _ in lip_candidates(frame[y0:y1, x0:x1]):
        cx, cy = cx + x0 - x, cy + y0 - y  # relative to the face box
        if (
            abs(cx - 0.5 * w) <= _LIPS_DX * w
            and _LIPS_ROWS[0] * h <= cy <= _LIPS_ROWS[1] * h
            and _LIPS_WIDTH[0] * w <= lip_w <= _LIPS_WIDTH[1] * w
        ):
            return x + cx, y + cy
    return None


def _box_from_cascade(small: np.ndarray, cascade: Any, scale: float) -> tuple[float, ...]:
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    boxes = [tuple(int(v) for v in face) for face in faces]
    if boxes and _is_colour(small):
        skin = _skin(small)
        boxes = [box for box in boxes if _skin_fraction(skin, box) >= _FACE_SKIN]
    if not boxes:
        raise FaceRefused(NO_FACE)
    if len(boxes) > 1:
        raise _several(sorted(boxes, key=lambda b: -b[2]), scale)
    x, y, w, h = boxes[0]
    lips = _lips_in_face(small, (x, y, w, h))
    if lips is None:
        return float(x), float(y), float(w), float(h)
    return lips[0] - 0.5 * w, lips[1] - _MOUTH_ROW * h, float(w), float(h)


def _has_eyes(gray: np.ndarray, box: tuple[float, ...]) -> bool:
    """Whether a face box has two dark eyes (or brows) above its cheeks: the darkest tenth of
    each eye window is well below the cheeks' median. A red patch on fur or on an arm has not."""
    x, y, w, h = box[:4]

    def window(rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
        return gray[round(y + rows[0] * h) : round(y + rows[1] * h),
                    round(x + cols[0] * w) : round(x + cols[1] * w)].ravel()

    cheeks = np.concatenate([window((0.55, 0.7), (0.15, 0.35)), window((0.55, 0.7), (0.65, 0.85))])
    eyes = [window((0.25, 0.5), (0.15, 0.45)), window((0.25, 0.5), (0.55, 0.85))]
    if cheeks.size == 0 or any(eye.size == 0 for eye in eyes):
        return False
    cheek = float(np.median(cheeks))
    return all(float(np.percentile(eye, 10)) < _EYE_DARKNESS * cheek for eye in eyes)


def _box_from_lips(small: np.ndarray, scale: float) -> tuple[float, ...]:
    """Without a cascade: the face box whose template mouth lies on the lips. Accepted only when
    that box lies inside the frame, is not tiny, is mostly skin and has two dark eyes above the
    mouth (a face, not a red patch on fur or on an arm); two such faces are refused."""
    height, width = small.shape[:2]
    skin = _skin(small)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    faces: list[tuple[float, ...]] = []
    for cx, cy, lip_w, _, _ in lip_candidates(small):
        w = lip_w / _MOUTH_WIDTH
        box = (cx - 0.5 * w, cy - _MOUTH_ROW * w, w, w)
        if (
            lip_w >= _MIN_LIPS * max(height, width)
            and box[0] >= 0 and box[1] >= 0 and box[0] + w <= width and box[1] + w <= height
            and _skin_fraction(skin, box) >= 0.6
            and _has_eyes(gray, box)
        ):
            faces.append(box)
    if not faces:
        raise FaceRefused(NO_FACE)
    first = faces[0]
    others = [b for b in faces[1:]
              if abs(b[0] - first[0]) > first[2] or abs(b[1] - first[1]) > first[3]]
    if others:
        raise _several([first, *others], scale)
    return first


def detect_face_box(frame: np.ndarray, max_side: int = 320) -> tuple[float, ...]:
    """The fallback's Haar-style ``(x, y, w, h)`` face box for the one face in an RGB frame.

    With a Haar cascade: the face, moved so the template mouth lies on the lips when lips are
    found inside the box where its mouth can be. Without one (OpenCV 5 wheels): the box the
    template needs to put its mouth on the lips. Raises :class:`LandmarkError` ("no face found",
    "several faces: ...") rather than guess.
    """
    small, scale = _resized(frame, max_side)
    cascade = _cascade()
    if cascade is not None:
        box = _box_from_cascade(small, cascade, scale)
    else:
        box = _box_from_lips(small, scale)
    return tuple(float(v) / scale for v in box)


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
