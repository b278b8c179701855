"""DINet crop geometry: the one place that maps a mouth size to crop and mask boxes.

Data preparation, training, evaluation and serving all call :func:`crop_geometry`, so a face
crop made by one is exactly what the others expect.

For mouth size ``m`` the radius is ``r = m // 2`` and ``q = r // 4``; the face crop is
``3r + q`` high and ``2r + 2q`` wide, and the mouth box (the region DINet masks in the source
and regenerates) is ``m x m`` starting at row ``r`` and column ``q``. That is the public DINet
layout (integer division as in its data loader): m=64 -> 104x80, m=128 -> 208x160,
m=160 -> 260x200, m=256 -> 416x320.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices, for ``tensor[..., rows, cols]``."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


@dataclass(frozen=True)
class CropGeometry:
    mouth_size: int
    radius: int
    crop_height: int
    crop_width: int
    mouth: Box

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.crop_height, self.crop_width


def crop_geometry(mouth_size: int) -> CropGeometry:
    """Crop and mouth-box geometry for a DINet mouth size (a positive multiple of 4)."""
    if isinstance(mouth_size, bool) or not isinstance(mouth_size, int):
        raise TypeError(f"mouth_size must be an int, got {mouth_size!r}")
    if mouth_size <= 0 or mouth_size % 4 != 0:
        raise ValueError(f"mouth_size must be a positive multiple of 4, got {mouth_size}")
    radius = mouth_size // 2
    quarter = radius // 4
    return CropGeometry(
        mouth_size=mouth_size,
        radius=radius,
        crop_height=3 * radius + quarter,
        crop_width=2 * radius + 2 * quarter,
        mouth=Box(top=radius, left=quarter, height=mouth_size, width=mouth_size),
    )


def mouth_size_of_crop(height: int, width: int) -> int:
    """The mouth size whose crop is ``height x width`` (the inverse of :func:`crop_geometry`)."""
    guess = round(height * 8 / 13 / 4) * 4
    for size in (guess - 4, guess, guess + 4):
        if size > 0 and crop_geometry(size).crop_shape == (height, width):
            return size
    raise ValueError(f"{height}x{width} is not the crop of any DINet mouth size")


# The mouth box as fractions of the crop. For every mouth size that is a multiple of 32 these
# are exact (H = 13q, W = 10q with q = m / 8): rows [4q, 12q), columns [q, 9q).
MOUTH_TOP, MOUTH_BOTTOM = 4 / 13, 12 / 13
MOUTH_LEFT, MOUTH_RIGHT = 1 / 10, 9 / 10


def mouth_prior(height: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """A (1, 1, height, width) 0/1 mask of the mouth box on a map of the whole crop at any
    resolution (feature maps inside the network included)."""
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    inside_rows = (rows >= MOUTH_TOP) & (rows < MOUTH_BOTTOM)
    inside_cols = (cols >= MOUTH_LEFT) & (cols < MOUTH_RIGHT)
    mask = (inside_rows[:, None] & inside_cols[None, :]).to(dtype or torch.float32)
    return mask.view(1, 1, height, width)


def mouth_mask(mouth_size: int, *, device=None, dtype=None) -> torch.Tensor:
    """A (1, 1, H, W) 0/1 mask of the mouth box on the crop of ``mouth_size``."""
    geometry = crop_geometry(mouth_size)
    mask = torch.zeros(1, 1, *geometry.crop_shape, device=device, dtype=dtype or torch.float32)
    rows, cols = geometry.mouth.slices()
    mask[..., rows, cols] = 1.0
    return mask
