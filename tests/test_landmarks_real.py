"""Face landmarks on real photos: the dlib 68-point detector and the fallback (Haar + lips, or
lips alone) find the mouth on the face, never beside the head or on the neck, and refuse images
without a face or with several.

The photos ship inside installed packages: scikit-image's ``astronaut`` (Eileen Collins) and
``coffee`` / ``chelsea`` (a cat) / ``grass``, and matplotlib's ``grace_hopper.jpg``. The mouth
centres and face widths below were measured with dlib's 68-point model (points 48-67; face
width = jaw points 0 to 16) and checked by eye, so the fallback is held to them even where dlib
is not installed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from dinet_platform.media import landmarks as lm
from dinet_platform.media.face_fallback import landmarks_from_box
from dinet_platform.media.images import write_lossless_video
from dinet_platform.media.io import probe_video
from dinet_platform.media.landmarks import (
    detect_face,
    detect_face_box,
    dlib_face,
    face_detector_name,
    video_landmarks,
)
from dinet_platform.media.openface import (
    NO_FACE,
    SEVERAL_FACES,
    FaceRefused,
    LandmarkError,
    read_openface_csv,
)
from dinet_platform.synth.videos import synthesize_video

pytestmark = pytest.mark.unit

skimage_data = pytest.importorskip("skimage.data")

HAVE_DLIB = lm._dlib() is not None
needs_dlib = pytest.mark.skipif(
    not HAVE_DLIB, reason="dlib68 not installed (pip install -e '.[landmarks]')"
)
FALLBACKS = ("haar+lips", "lips")
TOLERANCE = 0.10  # of the face width


def _hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        data = np.frombuffer(handle.read(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _half(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


PHOTOS = {
    "astronaut": skimage_data.astronaut,
    "astronaut_mirrored": lambda: np.ascontiguousarray(skimage_data.astronaut()[:, ::-1]),
    "hopper": _hopper,
    "hopper_half": lambda: _half(_hopper()),
}
# name: (mouth centre x, y; face width), all px, from dlib68
TRUTH = {
    "astronaut": (222.8, 145.2, 93.0),
    "astronaut_mirrored": (288.2, 145.2, 92.0),
    "hopper": (268.8, 278.9, 188.0),
    "hopper_half": (134.2, 139.4, 94.0),
}
NO_FACES = {
    "coffee": skimage_data.coffee,
    "cat": skimage_data.chelsea,
    "grass": lambda: np.stack([skimage_data.grass()] * 3, axis=-1),
}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load() for name, load in PHOTOS.items()}


@pytest.fixture(scope="module")
def dlib_points(photos) -> dict[str, np.ndarray]:
    """dlib's 68 points on every photo (module scope: set up before any fallback is forced)."""
    if not HAVE_DLIB:
        pytest.skip("dlib68 not installed (pip install -e '.[landmarks]')")
    return {name: dlib_face(image)[0] for name, image in photos.items()}


@pytest.fixture
def fallback(request, monkeypatch):
    """Force the fallback: no dlib, and for "lips" no Haar cascade either."""
    monkeypatch.setattr(lm, "_DLIB", False)
    if request.param == "lips":
        monkeypatch.setattr(lm, "_CASCADE", False)
    assert face_detector_name() == request.param
    return request.param


def _mouth(points: np.ndarray) -> np.ndarray:
    return points[48:68].mean(axis=0)


@needs_dlib
@pytest.mark.parametrize("name", PHOTOS)
def test_dlib68_finds_the_mouth(photos, dlib_points, name):
    points, (x, y, w, h) = dlib_face(photos[name])
    assert np.array_equal(points, dlib_points[name])
    assert points.shape == (68, 2) and points.dtype == np.float32
    assert face_detector_name() == "dlib68"
    cx, cy, width = TRUTH[name]
    assert np.linalg.norm(_mouth(points) - (cx, cy)) < 0.03 * width
    # the iBUG layout: mouth below the nose, corners 48/54 left/right, chin lowest
    assert points[33, 1] < _mouth(points)[1] < points[8, 1]
    assert points[48, 0] < cx < points[54, 0]
    assert x <= cx <= x + w and y <= cy <= y + h


@pytest.mark.parametrize("fallback", FALLBACKS, indirect=True)
@pytest.mark.parametrize("name", PHOTOS)
def test_fallback_mouth_is_on_the_face_or_refused(photos, name, fallback):
    image = photos[name]
    cx, cy, width = TRUTH[name]
    try:
        points = detect_face(image)
    except FaceRefused as exc:
        assert exc.reason in (NO_FACE, SEVERAL_FACES)
        assert fallback == "lips", f"the Haar fallback refused a clear face: {exc}"
        return
    error = np.linalg.norm(_mouth(points) - (cx, cy))
    assert error <= TOLERANCE * width, f"{fallback} mouth {error:.1f} px off on {name}"
    assert np.allclose(points, landmarks_from_box(*detect_face_box(image)))


@pytest.mark.parametrize("fallback", FALLBACKS, indirect=True)
def test_fallback_stays_inside_dlibs_face(photos, dlib_points, fallback):
    """Measured live against dlib on every photo: the fallback's mouth box lies inside the box
    of dlib's 68 points, and its centre within 10 % of the face width of dlib's mouth centre."""
    for name, image in photos.items():
        truth = dlib_points[name]
        try:
            points = detect_face(image)
        except FaceRefused:
            continue
        low, high = truth.min(axis=0), truth.max(axis=0)
        mouth = points[48:68]
        assert (mouth >= low).all() and (mouth <= high).all(), name
        width = truth[16, 0] - truth[0, 0]
        assert np.linalg.norm(_mouth(points) - _mouth(truth)) <= TOLERANCE * width, name


@pytest.mark.parametrize("detector", ["dlib68", *FALLBACKS])
@pytest.mark.parametrize("name", NO_FACES)
def test_images_without_a_face_are_refused(name, detector, monkeypatch):
    if detector == "dlib68" and not HAVE_DLIB:
        pytest.skip("dlib68 not installed")
    if detector != "dlib68":
        monkeypatch.setattr(lm, "_DLIB", False)
    if detector == "lips":
        monkeypatch.setattr(lm, "_CASCADE", False)
    assert face_detector_name() == detector
    with pytest.raises(FaceRefused, match="no face found") as refused:
        detect_face(NO_FACES[name]())
    assert refused.value.reason == NO_FACE


@pytest.mark.parametrize("detector", ["dlib68", "haar+lips"])
def test_several_faces_are_refused(photos, detector, monkeypatch):
    if detector == "dlib68" and not HAVE_DLIB:
        pytest.skip("dlib68 not installed")
    if detector != "dlib68":
        monkeypatch.setattr(lm, "_DLIB", False)
    astronaut = photos["astronaut"]
    hopper = cv2.resize(photos["hopper"], (437, 512), interpolation=cv2.INTER_AREA)
    pair = np.concatenate([astronaut, hopper], axis=1)
    with pytest.raises(FaceRefused, match=r"several faces: 2 found") as refused:
        detect_face(pair)
    assert refused.value.reason == SEVERAL_FACES


@pytest.mark.parametrize("detector", ["dlib68", "fallback"])
def test_video_of_photos_gets_landmarks_or_a_clear_reason(photos, detector, tmp_path: Path):
    if detector == "dlib68" and not HAVE_DLIB:
        pytest.skip("dlib68 not installed")
    face = photos["hopper_half"]
    probe = probe_video(write_lossless_video([face] * 4, tmp_path / "face.mkv", 25))
    marks = video_landmarks(probe, None, smooth_frames=3, min_coverage=0.8, detector=detector)
    assert marks.points.shape == (4, 68, 2) and marks.valid.all()
    assert marks.source == ("dlib68" if detector == "dlib68" else face_detector_name("fallback"))
    cx, cy, width = TRUTH["hopper_half"]
    error = np.linalg.norm(marks.points[:, 48:68].mean(axis=1) - (cx, cy), axis=1)
    assert (error <= TOLERANCE * width).all()

    pair = np.concatenate([face, face], axis=1)
    probe = probe_video(write_lossless_video([pair] * 3, tmp_path / "pair.mkv", 25))
    with pytest.raises(LandmarkError) as refused:
        video_landmarks(probe, None, smooth_frames=3, min_coverage=0.8, detector=detector)
    message = str(refused.value)
    assert "a face in only 0% of frames" in message
    assert "several faces in 3 frames" in message and "crop to one face" in message


@pytest.mark.parametrize("fallback", FALLBACKS, indirect=True)
def test_fallback_finds_the_lips_of_a_synthetic_face(fallback, tmp_path: Path):
    """Lips alone refuse every real photo above; on the synthetic faces (red lips, plain skin)
    both fallbacks find them: the mouth centre within 10 % of the face width of the truth."""
    clip = synthesize_video(tmp_path, "face", 0.2, seed=3, size=160)
    truth = read_openface_csv(clip.landmarks).points
    marks = video_landmarks(probe_video(clip.video), None, smooth_frames=3, min_coverage=0.8)
    assert marks.source == fallback
    width = truth[:, 16, 0] - truth[:, 0, 0]
    error = np.linalg.norm(marks.points[:, 48:68].mean(axis=1) - truth[:, 48:68].mean(axis=1),
                           axis=1)
    assert (error <= TOLERANCE * width).all(), error / width
