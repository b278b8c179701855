"""Facial landmarks as data: the iBUG 68-point layout, OpenFace 2 CSVs, and filling the frames a
detector refused (:mod:`.landmarks` finds faces when there is no CSV).

All landmarks are ``(N, 68, 2)`` float32 arrays in source-pixel coordinates (x right, y down).
The points the crop needs are 29 (nose bridge: top of the mouth box), 33 (under the nose: the
crop's horizontal centre), 48/54 (mouth corners) and the lowest point (chin).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOSE_BRIDGE, NOSE_BOTTOM, MOUTH_LEFT, MOUTH_RIGHT = 29, 33, 48, 54
MOUTH_POINTS = slice(48, 68)


NO_FACE, SEVERAL_FACES = "no face found", "several faces"
"""The reasons a detector gives for refusing a frame (:class:`FaceRefused`)."""


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


def several_faces(boxes: list[tuple[float, ...]], scale: float) -> FaceRefused:
    where = ", ".join(
        f"({x / scale:.0f},{y / scale:.0f} {w / scale:.0f}px)" for x, y, w, *_ in boxes[:4]
    )
    return FaceRefused(SEVERAL_FACES, f"{len(boxes)} found (x,y width: {where})")
