"""Synthetic faces as geometry: who the person is, how the head moves, where every feature is.

Every feature is a parametric curve in *canonical* face coordinates (pixels, head upright and
centred). The renderer (:mod:`~dinet_platform.synth.render`) draws the same samples that
the landmarks are taken from, and moves both with the same per-frame head transform, so the
landmarks in the CSV lie exactly on the drawn features (no detector in the loop, no drift).

iBUG 68 layout used: jaw 0-16, brows 17-21 / 22-26, nose bridge 27-30 (tip 30), nose base
31-35, eyes 36-41 / 42-47, outer lips 48-59 (corners 48, 54; top 51; bottom 57), inner lips
60-67 (corners 60, 64; top 62; bottom 66). "Left" points are on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BGR = tuple[int, int, int]
NOSE_TIP = 0.17  # nose tip below the face centre, in face half-heights


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic person look different from another."""

    width: int
    height: int
    centre: tuple[float, float]
    axes: tuple[float, float]
    chin: float
    skin: BGR
    skin_shadow: BGR
    lip: BGR
    lip_upper: BGR
    teeth: BGR
    tongue: BGR
    mouth_dark: BGR
    hair: BGR
    iris: BGR
    mouth_width: float
    lip_upper_thickness: float
    lip_lower_thickness: float
    mouth_y: float
    eye_dx: float
    eye_size: float
    brow_raise: float
    hairline: float
    nose_width: float


@dataclass(frozen=True)
class Pose:
    """Head pose of one frame: rotation (degrees) and scale about the face centre, then shift."""

    angle: float
    scale: float
    dx: float
    dy: float

    def matrix(self, centre: tuple[float, float]) -> np.ndarray:
        """2x3 affine mapping canonical points to image points."""
        rot = cv2.getRotationMatrix2D(centre, -self.angle, self.scale)
        rot[:, 2] += (self.dx, self.dy)
        return rot


@dataclass(frozen=True)
class MouthShape:
    """Mouth parameters of one frame (viseme space; see ``audio.Viseme``)."""

    opening: float
    width: float
    rounding: float
    teeth: float
    tongue: float


def rgb_to_bgr(rgb: np.ndarray) -> BGR:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in rgb)
    return (b, g, r)


def shade(colour: BGR, factor: float) -> BGR:
    b, g, r = (int(np.clip(round(c * factor), 0, 255)) for c in colour)
    return (b, g, r)


def random_identity(rng: np.random.Generator, width: int, height: int) -> Identity:
    """A random person sized to the frame: at 256x256 the neutral mouth is 64-74 px wide, so
    visemes span ~50-85 px, and the face fills most of the frame as a face crop would."""
    unit = min(width, height) / 256.0
    a = rng.uniform(66, 78) * unit
    b = a * rng.uniform(1.2, 1.34)
    # skin from dark to light along a natural tone line, with a little hue variation
    tone = rng.uniform(0.0, 1.0)
    dark, light = np.array([92, 58, 42]), np.array([242, 204, 180])
    skin_rgb = dark + tone * (light - dark) + rng.uniform(-1, 1) * np.array([8, 0, -8])
    skin_rgb += rng.normal(0, 3, 3)
    lip_rgb = skin_rgb * rng.uniform(0.55, 0.75) + np.array([rng.uniform(20, 60), 0, 10])
    skin = rgb_to_bgr(skin_rgb)
    lip = rgb_to_bgr(lip_rgb)
    return Identity(
        width=width,
        height=height,
        centre=(width / 2 + rng.uniform(-6, 6) * unit, height * 0.47 + rng.uniform(-5, 5) * unit),
        axes=(float(a), float(b)),
        chin=float(rng.uniform(0.95, 1.05)),
        skin=skin,
        skin_shadow=shade(skin, 0.82),
        lip=lip,
        lip_upper=shade(lip, 0.85),
        teeth=rgb_to_bgr(np.array([242, 236, 215]) * rng.uniform(0.9, 1.0)),
        tongue=rgb_to_bgr(np.array([200, 85, 95]) * rng.uniform(0.8, 1.0)),
        mouth_dark=rgb_to_bgr(np.array([45, 18, 25]) * rng.uniform(0.6, 1.2)),
        hair=rgb_to_bgr(
            rng.choice(
                [
                    [30, 22, 18],
                    [70, 45, 25],
                    [130, 95, 55],
                    [200, 170, 110],
                    [110, 110, 110],
                    [20, 20, 24],
                ]
            )
            * rng.uniform(0.8, 1.1)
        ),
        iris=rgb_to_bgr(rng.choice([[70, 45, 25], [60, 100, 140], [80, 110, 70], [40, 30, 25]])),
        mouth_width=float(rng.uniform(64, 74) * unit),
        lip_upper_thickness=float(rng.uniform(0.11, 0.16) * 68 * unit),
        lip_lower_thickness=float(rng.uniform(0.15, 0.21) * 68 * unit),
        mouth_y=float(rng.uniform(0.54, 0.6)),
        eye_dx=float(rng.uniform(0.40, 0.46) * a),
        eye_size=float(rng.uniform(0.17, 0.21) * a),
        brow_raise=float(rng.uniform(0.10, 0.16) * b),
        hairline=float(rng.uniform(0.50, 0.66)),
        nose_width=float(rng.uniform(0.16, 0.22) * a),
    )


def head_poses(
    rng: np.random.Generator, identity: Identity, num_frames: int, fps: float
) -> list[Pose]:
    """Small smooth head motion: a few px of drift, ±2.5 degrees of roll, ±5 % slow zoom."""
    unit = min(identity.width, identity.height) / 256.0
    t = np.arange(num_frames) / fps

    def wave(amplitude: float, low: float, high: float) -> np.ndarray:
        total = np.zeros(num_frames)
        for _ in range(2):
            freq, phase = rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
            total += np.sin(2 * np.pi * freq * t + phase)
        return amplitude * total / 2

    angle, scale = wave(2.5, 0.05, 0.4), 1.0 + 0.05 * wave(1.0, 0.03, 0.12)
    dx, dy = wave(4.0 * unit, 0.05, 0.5), wave(3.0 * unit, 0.05, 0.5)
    return [Pose(*map(float, values)) for values in zip(angle, scale, dx, dy, strict=True)]


def blink_openness(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """Eye openness per frame: 1 open, dipping to 0.1 for ~160 ms blinks every 2-6 s."""
    openness = np.ones(num_frames)
    t = np.arange(num_frames) / fps
    when = rng.uniform(0.5, 3.0)
    while when < num_frames / fps:
        openness = np.minimum(openness, 0.1 + 0.9 * np.clip(np.abs(t - when) / 0.08, 0, 1))
        when += rng.uniform(2.0, 6.0)
    return openness


def arc(u: np.ndarray, power: float) -> np.ndarray:
    """``(1 - u^2)^power``: a bump that is 1 at the centre and 0 at ``|u| >= 1``."""
    return np.maximum(1.0 - u * u, 0.0) ** power


LIP_U = np.linspace(-1.0, 1.0, 25)
"""Samples across the mouth; landmark positions (0, ±1/3, ±1/2, ±2/3, ±1) are among them."""
OUTER_TOP_IDX = (0, 4, 8, 12, 16, 20, 24)  # landmarks 48-54
OUTER_BOTTOM_IDX = (20, 16, 12, 8, 4)  # 55-59 (right to left)
INNER_TOP_IDX = (0, 6, 12, 18, 24)  # 60-64
INNER_BOTTOM_IDX = (18, 12, 6)  # 65-67
EYE_U = np.linspace(-1.0, 1.0, 13)
EYE_TOP_IDX, EYE_BOTTOM_IDX = (0, 4, 8, 12), (8, 4)
JAW_DELTA = 0.12
JAW_THETA = np.pi + JAW_DELTA - (np.pi + 2 * JAW_DELTA) * np.arange(17) / 16
"""Jaw landmarks 0-16: from just above ear level on the image left, round the chin (8)."""
CONTOUR_THETA = np.linspace(0, 2 * np.pi, 73)[:-1]


@dataclass(frozen=True)
class MouthCurves:
    """The lips of one frame, sampled at ``LIP_U`` (canonical coordinates)."""

    inner_x: np.ndarray
    inner_top: np.ndarray
    inner_bottom: np.ndarray
    outer_x: np.ndarray
    outer_top: np.ndarray
    outer_bottom: np.ndarray
    gap: float


def mouth_curves(ident: Identity, shape: MouthShape) -> MouthCurves:
    """Lip curves for a mouth shape.

    The upper inner lip sits ``0.25 * gap`` above the lip line and the lower one ``0.75 * gap``
    below it, because the jaw (not the upper lip) does most of the opening.
    """
    cx, cy = ident.centre
    mx, my = cx, cy + ident.mouth_y * ident.axes[1]
    half = ident.mouth_width * shape.width / 2
    inner_half = half * (0.88 - 0.12 * shape.rounding)
    gap = max(shape.opening, 0.0) * ident.mouth_width
    power = 0.9 - 0.45 * shape.rounding  # rounded lips: oval opening; spread lips: a lens
    bulge = 1.0 + 0.35 * shape.rounding
    u = LIP_U
    inner = arc(u, power)
    outer_inner = arc(np.clip(u * half / inner_half, -1, 1), power)
    cupid = 1.0 - 0.15 * np.exp(-((u / 0.2) ** 2))
    upper = ident.lip_upper_thickness * bulge * arc(u, 0.55) * cupid
    lower = ident.lip_lower_thickness * bulge * arc(u, 0.5)
    return MouthCurves(
        inner_x=mx + inner_half * u,
        inner_top=my - 0.25 * gap * inner,
        inner_bottom=my + 0.75 * gap * inner,
        outer_x=mx + half * u,
        outer_top=my - 0.25 * gap * outer_inner - upper,
        outer_bottom=my + 0.75 * gap * outer_inner + lower,
        gap=gap,
    )


def eye_lids(
    ident: Identity, side: int, openness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, upper-lid and lower-lid samples of one eye (side -1 image-left, +1 image-right)."""
    cx, cy = ident.centre
    ex, ey = cx + side * ident.eye_dx, cy - 0.12 * ident.axes[1]
    x = ex + ident.eye_size * EYE_U
    height = 0.55 * ident.eye_size * openness
    tilt = 0.08 * ident.eye_size * side * EYE_U  # outer corners slightly higher
    lid = arc(EYE_U, 0.7)
    return x, ey - height * lid - tilt, ey + 0.55 * height * lid - tilt


def face_contour(ident: Identity, theta: np.ndarray, gap: float) -> np.ndarray:
    """Head outline; the lower half drops with the jaw as the mouth opens."""
    cx, cy = ident.centre
    a, b = ident.axes
    sin = np.sin(theta)
    lower = b * ident.chin * sin + 0.7 * gap * sin**2
    return np.stack([cx + a * np.cos(theta), cy + np.where(sin > 0, lower, b * sin)], axis=1)


def brow_points(ident: Identity, side: int) -> np.ndarray:
    """Five brow points, image-left to image-right (the iBUG order of both brows)."""
    cx, cy = ident.centre
    ex, ey = cx + side * ident.eye_dx, cy - 0.12 * ident.axes[1]
    u = np.linspace(-1.1, 1.1, 5)
    x = ex + ident.eye_size * 1.15 * u
    y = ey - ident.brow_raise - 0.45 * ident.eye_size * arc(u / 1.2, 1.0)
    return np.stack([x, y], axis=1)


def nose_points(ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """Bridge points 27-30 (top to tip) and base points 31-35 (image-left to right)."""
    cx, cy = ident.centre
    b = ident.axes[1]
    tip_y = cy + NOSE_TIP * b
    bridge = np.stack([np.full(4, cx), np.linspace(cy - 0.12 * b, tip_y, 4)], axis=1)
    u = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    base = np.stack([cx + ident.nose_width * u, tip_y + 0.05 * b - 0.025 * b * u**2], axis=1)
    return bridge, base


def eye_landmarks(ident: Identity, openness: float) -> np.ndarray:
    """Points 36-47: corners and the lid samples at a third and two thirds of the width."""
    out = []
    for side in (-1, 1):
        x, top, bottom = eye_lids(ident, side, openness)
        out += [(x[i], top[i]) for i in EYE_TOP_IDX] + [(x[i], bottom[i]) for i in EYE_BOTTOM_IDX]
    return np.array(out)


def mouth_landmarks(c: MouthCurves) -> np.ndarray:
    """Points 48-67, taken from the very samples the lips are drawn with."""
    return np.array(
        [(c.outer_x[i], c.outer_top[i]) for i in OUTER_TOP_IDX]
        + [(c.outer_x[i], c.outer_bottom[i]) for i in OUTER_BOTTOM_IDX]
        + [(c.inner_x[i], c.inner_top[i]) for i in INNER_TOP_IDX]
        + [(c.inner_x[i], c.inner_bottom[i]) for i in INNER_BOTTOM_IDX]
    )


def landmarks(ident: Identity, shape: MouthShape, openness: float) -> np.ndarray:
    """The 68 iBUG points (canonical coordinates) of the face with this mouth and eye state."""
    curves = mouth_curves(ident, shape)
    bridge, base = nose_points(ident)
    return np.concatenate(
        [
            face_contour(ident, JAW_THETA, curves.gap),
            brow_points(ident, -1),
            brow_points(ident, 1),
            bridge,
            base,
            eye_landmarks(ident, openness),
            mouth_landmarks(curves),
        ]
    )
