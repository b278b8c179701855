"""The fallback face finder, for machines without dlib: a mean-face template placed on the lips.

OpenCV's Haar cascade finds the face; the lips (a colour "mouth map") are looked for only
inside the face box, where a mouth can be, and move a fixed mean-face template so that its
mouth lies on them: a *geometric* estimate of nose, mouth and chin. Without cascade files
(OpenCV 5 wheels) the lips alone are accepted only where the face they imply lies in the
frame, is mostly skin and has two dark eyes above them. Every function refuses a frame with
:class:`~dinet_platform.media.openface.FaceRefused` rather than guess.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from dinet_platform.media.openface import NO_FACE, FaceRefused, several_faces


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


def resized(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``frame`` shrunk (area interpolation) so its longer side is at most ``max_side``."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return frame, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


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
        raise several_faces(sorted(boxes, key=lambda b: -b[2]), scale)
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
        raise several_faces([first, *others], scale)
    return first


def fallback_face_box(frame: np.ndarray, cascade: Any, max_side: int = 320) -> tuple[float, ...]:
    """The fallback's Haar-style ``(x, y, w, h)`` face box for the one face in an RGB frame.

    With a Haar cascade: the face, moved so the template mouth lies on the lips when lips are
    found inside the box where its mouth can be. Without one (OpenCV 5 wheels): the box the
    template needs to put its mouth on the lips. Raises :class:`LandmarkError` ("no face found",
    "several faces: ...") rather than guess.
    """
    small, scale = resized(frame, max_side)
    if cascade is not None:
        box = _box_from_cascade(small, cascade, scale)
    else:
        box = _box_from_lips(small, scale)
    return tuple(float(v) / scale for v in box)
