"""Pasting a generated face crop back into the full frame without a visible box.

The original DINet pastes the whole generated crop back, and its users see the box: the crop's
edges never quite match the frame (colour drift, blur, a one-pixel offset from resizing). Here
only the mouth box (the region DINet regenerates; everything else in the crop is a copy of the
source) is blended in, through an alpha mask that is 1 in the box's interior and falls to 0 at
its border along a smoothstep of the distance to the border (a distance-transform feather).
So the seam is a gradient over ``feather`` of the box's size, not an edge, and every pixel
outside the box is copied, bit for bit, from the input frame.

Plain numpy/OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

from dinet_platform.geometry import Box

DEFAULT_FEATHER = 0.2
"""Width of the alpha ramp as a fraction of the mouth box's smaller side."""


def feather_mask(
    height: int, width: int, box: tuple[float, float, float, float], feather: float
) -> np.ndarray:
    """A ``(height, width)`` float32 alpha mask: 0 outside ``box`` (``top, left, box_height,
    box_width`` in pixels of this map), ramping up over ``feather`` x the box's smaller side
    inside it (smoothstep of the Euclidean distance to the box border), 1 in the interior."""
    if not 0.0 < feather <= 0.5:
        raise ValueError(f"feather must be in (0, 0.5], got {feather}")
    top, left, box_h, box_w = box
    rows = slice(max(0, round(top)), min(height, round(top + box_h)))
    cols = slice(max(0, round(left)), min(width, round(left + box_w)))
    inside = np.zeros((height + 2, width + 2), np.uint8)  # 1 px zero border: distance to it
    inside[rows.start + 1 : rows.stop + 1, cols.start + 1 : cols.stop + 1] = 1
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ramp = max(1.0, feather * min(rows.stop - rows.start, cols.stop - cols.start))
    t = np.clip(distance / ramp, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def mouth_box_in_region(box: Box, crop_shape: tuple[int, int], region_shape: tuple[int, int]
                        ) -> tuple[float, float, float, float]:
    """The crop's mouth box mapped into a source-frame region of ``region_shape`` (h, w)."""
    scale_y = region_shape[0] / crop_shape[0]
    scale_x = region_shape[1] / crop_shape[1]
    return box.top * scale_y, box.left * scale_x, box.height * scale_y, box.width * scale_x


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``image`` (h, w, 3) to (height, width): area when shrinking, cubic otherwise."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[1] > width
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )


def paste(frame: np.ndarray, patch: np.ndarray, top: int, left: int, mask: np.ndarray
          ) -> np.ndarray:
    """A copy of ``frame`` (H, W, 3 uint8) with ``patch`` (h, w, 3 uint8, same size as
    ``mask``) alpha-blended in at ``(top, left)``. Only the bounding box of ``mask > 0`` is
    written, so every other pixel is the input's, bit for bit."""
    out = frame.copy()
    nonzero_rows = np.flatnonzero(mask.max(axis=1) > 0)
    nonzero_cols = np.flatnonzero(mask.max(axis=0) > 0)
    if len(nonzero_rows) == 0:
        return out
    r0, r1 = int(nonzero_rows[0]), int(nonzero_rows[-1]) + 1
    c0, c1 = int(nonzero_cols[0]), int(nonzero_cols[-1]) + 1
    alpha = mask[r0:r1, c0:c1, None]
    target = out[top + r0 : top + r1, left + c0 : left + c1]
    mixed = alpha * patch[r0:r1, c0:c1].astype(np.float32) + (1.0 - alpha) * target
    target[...] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out
