"""DINet face crops from landmarks, steady across a clip.

DINet's data preparation (``compute_crop_radius``) sizes the crop from two landmark distances:
nose bridge (point 29) to the lowest landmark (chin), and mouth width (48 -> 54); the radius is
half the larger one times a margin. The crop is then ``3R + R/4`` high from ``R`` above point 29
and ``2R + R/2`` wide around point 33, which is exactly :func:`crop_geometry`'s layout: the mouth
box is the ``2R x 2R`` square under the nose.

Unlike the original (one radius per clip, random margin, crop centre from raw per-frame
landmarks) we use the *median* radius over the whole video and a temporally smoothed centre, so
landmark noise does not turn into crop jitter or zoom pumping (a top user complaint), and a
fixed margin so re-running preparation gives identical crops.

Crops are cut in integer source pixels (the rounded centre moves at most half a source pixel)
and resized with area interpolation when shrinking, which anti-aliases instead of the aliasing
of bilinear warps.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dinet_platform.geometry import CropGeometry
from dinet_platform.media.openface import MOUTH_LEFT, MOUTH_RIGHT, NOSE_BOTTOM, NOSE_BRIDGE


class CropError(Exception):
    """The crop cannot be made (e.g. it leaves the frame); message is user-facing."""


def frame_radii(points: np.ndarray, margin: float) -> np.ndarray:
    """Per-frame DINet crop radius R in source pixels: max(nose-to-chin, mouth width)/2 * margin."""
    nose_to_chin = points[:, :, 1].max(axis=1) - points[:, NOSE_BRIDGE, 1]
    mouth_width = np.linalg.norm(points[:, MOUTH_RIGHT] - points[:, MOUTH_LEFT], axis=1)
    return np.maximum(nose_to_chin, mouth_width) * margin / 2.0


def mouth_widths(points: np.ndarray) -> np.ndarray:
    """Per-frame mouth width (corner to corner) in source pixels."""
    return np.linalg.norm(points[:, MOUTH_RIGHT] - points[:, MOUTH_LEFT], axis=1)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average with edge padding (window 1 returns the input)."""
    if window <= 1 or len(values) < 2:
        return values.astype(np.float64)
    half = window // 2
    padded = np.pad(values.astype(np.float64), (half, half), mode="edge")
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.convolve(padded, kernel, mode="valid")


@dataclass
class CropTrack:
    """Where each output frame is cut from its source frame."""

    radius: float
    """Source-pixel radius R, the same for the whole video."""
    top: np.ndarray
    left: np.ndarray
    """(N,) int rows / columns of each crop's top-left corner in the source frame."""
    height: int
    width: int
    """Source-pixel size of every crop (fixed over the video)."""

    def to_crop(self, points: np.ndarray, index: int, geometry: CropGeometry) -> np.ndarray:
        """Map source-pixel points of frame ``index`` into crop pixels of ``geometry``."""
        scale = np.array([geometry.crop_width / self.width, geometry.crop_height / self.height])
        origin = np.array([self.left[index], self.top[index]], dtype=np.float64)
        return ((points - origin) * scale).astype(np.float32)


def plan_crops(
    points: np.ndarray,
    frame_size: tuple[int, int],
    geometry: CropGeometry,
    *,
    margin: float = 1.1,
    smooth_frames: int = 5,
) -> CropTrack:
    """Plan a steady crop for every frame from its (N, 68, 2) landmarks.

    ``frame_size`` is ``(width, height)``. Raises :class:`CropError` when the face is degenerate
    or the crop leaves the frame on any frame (padding would teach the model black borders).
    """
    frame_w, frame_h = frame_size
    radius = float(np.median(frame_radii(points, margin)))
    if not np.isfinite(radius) or radius < 2.0:
        raise CropError(f"face too small or degenerate landmarks (crop radius {radius:.1f} px)")
    # Source-pixel crop size with exactly the aspect of the stored crop.
    scale = geometry.radius / radius
    height = round(geometry.crop_height / scale)
    width = round(geometry.crop_width / scale)
    centre_x = _smooth(points[:, NOSE_BOTTOM, 0], smooth_frames)
    centre_y = _smooth(points[:, NOSE_BRIDGE, 1], smooth_frames)
    # Column offset of the mouth box centre inside the crop is r + r/4 (crop_geometry).
    offset_x = (geometry.mouth.left + geometry.mouth.width / 2) / scale
    offset_y = geometry.mouth.top / scale
    left = np.round(centre_x - offset_x).astype(np.int64)
    top = np.round(centre_y - offset_y).astype(np.int64)
    overflow = np.maximum.reduce(
        [-left, -top, left + width - frame_w, top + height - frame_h, np.zeros_like(left)]
    )
    if overflow.max() > 0:
        worst = int(np.argmax(overflow))
        raise CropError(
            f"crop leaves the frame by {int(overflow[worst])} px at frame {worst} "
            f"(crop {width}x{height} px in a {frame_w}x{frame_h} video)"
        )
    return CropTrack(radius, top, left, height, width)


def cut_crop(frame: np.ndarray, track: CropTrack, index: int, geometry: CropGeometry) -> np.ndarray:
    """The RGB crop of output frame ``index`` resized to ``geometry.crop_shape``."""
    top, left = int(track.top[index]), int(track.left[index])
    region = frame[top : top + track.height, left : left + track.width]
    size = (geometry.crop_width, geometry.crop_height)
    shrinking = track.width > geometry.crop_width
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def resize_crop(image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Resize a stored crop (any mouth size) to the crop shape of ``geometry``."""
    height, width = geometry.crop_shape
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[1] > width
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )
