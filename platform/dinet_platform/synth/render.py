"""Drawing synthetic faces with OpenCV, frame after frame, from the geometry in
:mod:`~dinet_platform.synth.face`.

Every point of a frame (polygons and the 68 landmarks alike) goes through one affine transform
per frame, so what the CSV reports is exactly where things were drawn.
"""

from __future__ import annotations

import cv2
import numpy as np

from dinet_platform.synth.face import (
    BGR,
    CONTOUR_THETA,
    JAW_THETA,
    LIP_U,
    NOSE_TIP,
    Identity,
    MouthCurves,
    MouthShape,
    Pose,
    arc,
    brow_points,
    eye_landmarks,
    eye_lids,
    face_contour,
    mouth_curves,
    mouth_landmarks,
    nose_points,
    rgb_to_bgr,
    shade,
)

SHIFT = 4  # sub-pixel drawing: OpenCV coordinates are fixed point with 4 fractional bits
ONE = 1 << SHIFT


Primitive = tuple[np.ndarray, BGR, int]
"""Canonical points, colour, thickness (``FILL`` for a filled polygon, else a polyline)."""
FILL = -1


def _band(x: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Closed polygon between two curves sampled at the same x."""
    return np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])


class FaceRenderer:
    """Draws one identity frame after frame.

    Background, body and lighting are images built once; the head's static features are
    canonical polygons built once. Per frame only the jaw, eyes (blinks) and mouth are
    recomputed, everything is moved by one affine transform, and a frame costs a few dozen
    small anti-aliased polygon fills.
    """

    def __init__(self, ident: Identity, rng: np.random.Generator) -> None:
        self.ident = ident
        self.background = _background(ident, rng)
        self.lighting = _lighting(ident, rng)
        self._behind = self._behind_head()
        self._features = self._static_features()
        bridge, base = nose_points(ident)
        self._static_marks = np.concatenate(
            [brow_points(ident, -1), brow_points(ident, 1), bridge, base]
        )
        self._eyes: dict[float, tuple[list[Primitive], np.ndarray]] = {}

    def render(
        self, pose: Pose, shape: MouthShape, openness: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """BGR frame and its 68 landmarks (image coordinates) for one head pose and mouth."""
        ident = self.ident
        curves = mouth_curves(ident, shape)
        eyes, eye_points = self._eye_state(openness)
        face = (face_contour(ident, CONTOUR_THETA, curves.gap), ident.skin, FILL)
        prims = [*self._behind, face, *self._features, *eyes, *self._mouth(curves, shape)]
        marks = np.concatenate(
            [
                face_contour(ident, JAW_THETA, curves.gap),
                self._static_marks,
                eye_points,
                mouth_landmarks(curves),
            ]
        )
        # one transform for every point of the frame, drawn and reported alike
        m = pose.matrix(ident.centre)
        points = np.concatenate([p for p, _, _ in prims] + [marks]) @ m[:, :2].T + m[:, 2]
        fixed = np.round(points * ONE).astype(np.int32)
        img = self.background.copy()
        start = 0
        for shape_points, colour, thickness in prims:
            poly = fixed[start : start + len(shape_points)]
            start += len(shape_points)
            if thickness == FILL:
                cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, SHIFT)
            else:
                cv2.polylines(img, [poly], False, colour, thickness, cv2.LINE_AA, SHIFT)
        img = cv2.multiply(img, self.lighting, scale=1.0 / 128)
        return img, points[-68:]

    def _behind_head(self) -> list[Primitive]:
        ident = self.ident
        cx, cy = ident.centre
        a, b = ident.axes
        prims: list[Primitive] = [(_ellipse((cx, cy - 0.1 * b), (a * 1.07, b)), ident.hair, FILL)]
        for side in (-1, 1):
            ear = _ellipse((cx + side * a * 0.97, cy - 0.02 * b), (0.13 * a, 0.2 * b), 24)
            prims.append((ear, ident.skin_shadow, FILL))
        return prims

    def _static_features(self) -> list[Primitive]:
        """Hair fringe, brows and nose: they move with the head but never change shape."""
        ident = self.ident
        cx, cy = ident.centre
        b, nose_w = ident.axes[1], ident.nose_width
        tip_y = cy + NOSE_TIP * b
        brow_thickness = max(2, round(0.25 * ident.eye_size))
        prims: list[Primitive] = [(_fringe(ident), ident.hair, FILL)]
        prims += [(brow_points(ident, side), ident.hair, brow_thickness) for side in (-1, 1)]
        side_line = np.array(
            [[cx + 0.35 * nose_w, cy - 0.05 * b], [cx + 0.6 * nose_w, tip_y - 0.02 * b]]
        )
        prims.append((side_line, shade(ident.skin, 0.88), 2))
        u = np.linspace(-1, 1, 9)
        base = np.stack([cx + nose_w * u, tip_y + 0.05 * b - 0.025 * b * u**2], 1)
        prims.append((base, shade(ident.skin, 0.7), 2))
        for s in (-1, 1):
            nostril = _ellipse(
                (cx + s * 0.5 * nose_w, tip_y + 0.035 * b), (0.22 * nose_w, 0.1 * nose_w), 16
            )
            prims.append((nostril, shade(ident.skin, 0.45), FILL))
        prims.append(
            (_ellipse((cx, tip_y), (0.25 * nose_w,) * 2, 16), shade(ident.skin, 1.08), FILL)
        )
        return prims

    def _eye_state(self, openness: float) -> tuple[list[Primitive], np.ndarray]:
        """Eye primitives and landmarks, cached per openness (eyes are open most frames)."""
        key = round(openness, 3)
        if key not in self._eyes:
            self._eyes[key] = (self._eye_primitives(key), eye_landmarks(self.ident, key))
        return self._eyes[key]

    def _eye_primitives(self, openness: float) -> list[Primitive]:
        ident = self.ident
        prims: list[Primitive] = []
        for side in (-1, 1):
            x, top, bottom = eye_lids(ident, side, openness)
            prims.append((_band(x, top, bottom), (235, 238, 240), FILL))
            # iris and pupil: circles clipped to the lids, so a blink covers them
            mid = len(x) // 2
            centre = (float(x[mid]), float((top[mid] + bottom[mid]) / 2))
            for radius, colour in ((0.42, ident.iris), (0.18, (15, 15, 15))):
                circle = _ellipse(centre, (radius * ident.eye_size,) * 2, 24)
                circle[:, 1] = np.clip(
                    circle[:, 1],
                    np.interp(circle[:, 0], x, top),
                    np.interp(circle[:, 0], x, bottom),
                )
                prims.append((circle, colour, FILL))
            prims.append((np.stack([x, top], 1), (25, 20, 20), 2))
        return prims

    def _mouth(self, c: MouthCurves, shape: MouthShape) -> list[Primitive]:
        """Lips, then (when open) the dark interior, tongue, lower and upper teeth, then the
        lip seam, which is all that shows of a closed mouth."""
        ident = self.ident
        inner_top_outer = np.interp(c.outer_x, c.inner_x, c.inner_top)
        prims: list[Primitive] = [
            (_band(c.outer_x, c.outer_top, c.outer_bottom), ident.lip, FILL),
            (_band(c.outer_x, c.outer_top, inner_top_outer), ident.lip_upper, FILL),
        ]
        if c.gap > 0.5:
            x, top, bottom = c.inner_x, c.inner_top, c.inner_bottom
            prims.append((_band(x, top, bottom), ident.mouth_dark, FILL))
            inside = np.abs(LIP_U) <= 0.7
            if shape.tongue > 0.05 and c.gap > 3:
                level = min(1.3 * shape.tongue, 1.0)
                colour = tuple(
                    int(d + (t - d) * level)
                    for d, t in zip(ident.mouth_dark, ident.tongue, strict=True)
                )
                hump = np.maximum(bottom - 0.45 * c.gap * arc(LIP_U / 0.7, 0.5), top)
                prims.append((_band(x[inside], hump[inside], bottom[inside]), colour, FILL))
            teeth = min(max(shape.teeth, 0.0), 1.0)
            if teeth > 0.05:
                # incisor edges are straight lines; the lips' curves hide the teeth at the sides
                mid = len(LIP_U) // 2
                upper_h = min(teeth * 0.13 * ident.mouth_width, 0.55 * c.gap)
                lower_h = min(teeth * 0.08 * ident.mouth_width, 0.45 * c.gap) * teeth
                if lower_h > 0.5:
                    edge = np.clip(bottom[mid] - lower_h, top, bottom)
                    prims.append(
                        (_band(x[inside], edge[inside], bottom[inside]), ident.teeth, FILL)
                    )
                edge = np.clip(top[mid] + upper_h, top, bottom)
                prims.append((_band(x[inside], top[inside], edge[inside]), ident.teeth, FILL))
        prims.append((np.stack([c.inner_x, c.inner_top], 1), shade(ident.lip, 0.55), 1))
        return prims


def _ellipse(centre: tuple[float, float], axes: tuple[float, float], n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n + 1)[:-1]
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], 1)


def _fringe(ident: Identity) -> np.ndarray:
    """Hair over the forehead: the top arc of the head closed by a curved hairline."""
    cx, cy = ident.centre
    a, b = ident.axes
    arc = np.linspace(np.pi + 0.3, 2 * np.pi - 0.3, 24)
    top = np.stack([cx + a * 1.005 * np.cos(arc), cy + b * 1.005 * np.sin(arc)], 1)
    xs = np.linspace(top[-1, 0], top[0, 0], 12)
    hairline = cy - ident.hairline * b + 0.25 * b * ((xs - cx) / a) ** 2
    return np.concatenate([top, np.stack([xs, np.minimum(hairline, cy - 0.3 * b)], 1)])


def _fill(img: np.ndarray, points: np.ndarray, colour: BGR) -> None:
    fixed = np.round(points * ONE).astype(np.int32)
    cv2.fillPoly(img, [fixed], colour, cv2.LINE_AA, SHIFT)


def _background(ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """A wall: two-colour gradient with blotchy low-frequency texture, plus a static torso."""
    h, w = ident.height, ident.width
    c1, c2 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle) + 0.75) / 1.5
    img = c1[None, None, :] * (1 - ramp[..., None]) + c2[None, None, :] * ramp[..., None]
    blotch = cv2.resize(
        rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    img += rng.uniform(4, 14) * blotch[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    cx, cy = ident.centre
    a, b = ident.axes
    neck = np.array(
        [
            [cx - 0.42 * a, cy + 0.5 * b],
            [cx + 0.42 * a, cy + 0.5 * b],
            [cx + 0.48 * a, h + 2],
            [cx - 0.48 * a, h + 2],
        ]
    )
    _fill(img, neck, shade(ident.skin, 0.75))
    shirt = rgb_to_bgr(rng.uniform(20, 230, 3))
    top = cy + 1.1 * b + 0.2 * a
    body = np.array(
        [
            [cx - 2.2 * a, h + 2],
            [cx - 1.6 * a, top + 0.2 * a],
            [cx - 0.5 * a, top],
            [cx, top + 0.25 * a],
            [cx + 0.5 * a, top],
            [cx + 1.6 * a, top + 0.2 * a],
            [cx + 2.2 * a, h + 2],
        ]
    )
    _fill(img, body, shirt)
    return img


def _lighting(ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """Static directional light and vignette as a per-pixel gain (x128, uint8) for cv2.multiply.

    The light is fixed in the scene, so the head moves under it, as in a real room.
    """
    h, w = ident.height, ident.width
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.25)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = xx / w - 0.5, yy / h - 0.5
    gain = 1.0 + strength * 2 * (nx * np.cos(angle) + ny * np.sin(angle))
    gain *= 1.0 - 0.25 * (nx**2 + ny**2)
    gain8 = np.clip(np.round(gain * 128), 0, 255).astype(np.uint8)
    return np.repeat(gain8[..., None], 3, axis=2)
