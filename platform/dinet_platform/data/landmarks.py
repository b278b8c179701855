"""Facial landmarks per source frame: OpenFace 2 CSVs, or a detector fallback (Haar + lips).

All landmarks use the iBUG 68-point layout as ``(N, 68, 2)`` float32 arrays in source-pixel
coordinates (x right, y down). The points the crop needs are 29 (nose bridge: top of the mouth
box), 33 (under the nose: the crop's horizontal centre), 48/54 (mouth corners) and the lowest
point (chin).

OpenFace is what DINet's data preparation uses and is far more accurate. The fallback exists
so a user without OpenFace still gets a dataset: it finds the face per frame (OpenCV's Haar
cascade where the OpenCV build ships one) and the lips (a colour "mouth map"), and places a
fixed mean-face template so that its mouth lies on the detected lips: a *geometric* estimate of
nose, mouth and chin. Template mouths do not move with speech, which is fine for cropping (the
crop only needs where the mouth is and how big) but not for anything that reads lip shape.
When the lips cannot be found in enough frames the video is skipped ("no face found").
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinet_platform.data.media import VideoProbe, iter_frames

NOSE_BRIDGE, NOSE_BOTTOM, MOUTH_LEFT, MOUTH_RIGHT = 29, 33, 48, 54
MOUTH_POINTS = slice(48, 68)


class LandmarkError(Exception):
    """Landmarks are missing or do not fit the video; the message is the user-facing reason."""


@dataclass
class Landmarks:
    points: np.ndarray
    """(N, 68, 2) float32 source-pixel coordinates, one row per source frame."""
    valid: np.ndarray
    """(N,) bool: the detector's own success flag (False rows were interpolated)."""
    source: str
    """"openface", or the fallback detector (see :func:`face_detector_name`)."""


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
        raise LandmarkError(
            f"no face found in {100 * (1 - coverage):.0f}% of frames "
            f"(need a face in at least {100 * min_coverage:.0f}%)"
        )
    if valid.all():
        return landmarks
    frames = np.arange(len(valid))
    flat = landmarks.points.reshape(len(valid), -1).copy()
    for k in range(flat.shape[1]):
        flat[~valid, k] = np.interp(frames[~valid], frames[valid], flat[valid, k])
    return Landmarks(flat.reshape(landmarks.points.shape), valid, landmarks.source)


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


_CASCADE: Any = None
HAAR_FILE = "haarcascade_frontalface_default.xml"


def _cascade() -> Any:
    """OpenCV's Haar face cascade, or None when this OpenCV build has none.

    OpenCV 5 moved ``CascadeClassifier`` out of the main package and its wheels ship no cascade
    files, so the fallback must not depend on it: :func:`detect_mouth` alone takes over then.
    """
    global _CASCADE
    if _CASCADE is None:
        _CASCADE = False
        path = Path(getattr(cv2, "data", None).haarcascades if hasattr(cv2, "data") else "")
        if hasattr(cv2, "CascadeClassifier") and (path / HAAR_FILE).is_file():
            cascade = cv2.CascadeClassifier(str(path / HAAR_FILE))
            _CASCADE = cascade if not cascade.empty() else False
    return _CASCADE or None


def face_detector_name() -> str:
    """Which fallback detector this machine has: "haar+lips", or "lips" without a cascade."""
    return "haar+lips" if _cascade() is not None else "lips"


# Skin in YCrCb (Chai & Ngan): holds from dark to light skin under ordinary light.
_SKIN_LOW = np.array([0, 133, 77], dtype=np.uint8)
_SKIN_HIGH = np.array([255, 173, 127], dtype=np.uint8)
# Template proportions used to turn a mouth into a face box (see _template).
_MOUTH_WIDTH, _MOUTH_ROW = 0.38, 0.81


def detect_mouth(frame: np.ndarray) -> tuple[float, float, float] | None:
    """``(centre_x, centre_y, width)`` of the lips in an RGB frame, or None.

    Lips are redder than the skin around them: Hsu et al.'s mouth map
    ``Cr^2 * (Cr^2 - eta * Cr/Cb)^2`` over skin pixels, thresholded at its top 3 %, gives lip
    blobs. A candidate must be wider than tall and surrounded by skin (a red object in the
    background is not), and the largest such blob wins.
    """
    ycrcb = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)
    skin = cv2.inRange(ycrcb, _SKIN_LOW, _SKIN_HIGH) > 0
    if skin.sum() < 100:
        return None
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
    best, best_area = None, 0
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < 20 or not 1.3 <= w / max(h, 1) <= 8:
            continue
        x0, x1, y0, y1 = x - w // 2, x + w + w // 2, y - 2 * h, y + 3 * h
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            continue  # a face whose surroundings are cut off is not usable anyway
        ring = skin[y0:y1, x0:x1].copy()
        ring[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = True
        if ring.mean() >= 0.75 and area > best_area:
            best, best_area = k, area
    if best is None:
        return None
    return float(centres[best][0]), float(centres[best][1]), float(stats[best][2])


def detect_face_box(frame: np.ndarray, max_side: int = 320) -> tuple[float, ...] | None:
    """A Haar-style ``(x, y, w, h)`` face box for the face in an RGB frame, or None.

    With a Haar cascade: the largest face, refined by the lips found inside it. Without one
    (OpenCV 5 wheels): the box the template would need to put its mouth on the detected lips.
    """
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = frame
    if scale < 1.0:
        small = cv2.resize(frame, (round(width * scale), round(height * scale)), cv2.INTER_AREA)
    cascade = _cascade()
    box: tuple[float, ...] | None = None
    region = (0, 0)
    if cascade is not None:
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        if len(faces) == 0:
            return None
        x, y, w, h = (int(v) for v in max(faces, key=lambda f: f[2] * f[3]))
        box = (x, y, w, h)
        top = y + h // 2
        small, region = small[top : y + h + h // 4, x : x + w], (x, top)
    mouth = detect_mouth(small) if small.size else None
    if mouth is not None:
        cx, cy, mouth_w = mouth[0] + region[0], mouth[1] + region[1], mouth[2]
        w = mouth_w / _MOUTH_WIDTH
        box = (cx - 0.5 * w, cy - _MOUTH_ROW * w, w, w)
    if box is None:
        return None
    return tuple(float(v) / scale for v in box)


def detected_landmarks(probe: VideoProbe, smooth_frames: int = 5) -> Landmarks:
    """Template landmarks from a detected face box in every source frame of a video.

    Box sides and positions are median-filtered over ``smooth_frames`` so the detector's
    frame-to-frame wobble does not become crop jitter. ``source`` names the detector used.
    """
    boxes = np.zeros((probe.num_source_frames, 4), dtype=np.float64)
    valid = np.zeros(probe.num_source_frames, dtype=bool)
    for index, frame in iter_frames(probe):
        if index >= len(valid):
            break
        box = detect_face_box(frame)
        if box is not None:
            boxes[index], valid[index] = box, True
    if valid.any() and smooth_frames > 1:
        frames = np.arange(len(valid))
        filled = np.stack(
            [np.interp(frames, frames[valid], boxes[valid, k]) for k in range(4)], axis=1
        )
        half = smooth_frames // 2
        padded = np.pad(filled, ((half, half), (0, 0)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, smooth_frames, axis=0)
        boxes = np.median(windows, axis=-1)
    points = np.stack([landmarks_from_box(*box) for box in boxes])
    return Landmarks(points, valid, face_detector_name())


def video_landmarks(
    probe: VideoProbe,
    csv_path: str | Path | None,
    *,
    smooth_frames: int,
    min_coverage: float,
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
        marks = detected_landmarks(probe, smooth_frames)
    return fill_invalid(marks, min_coverage)
