"""An avatar: a face video prepared for a model's mouth size, ready to be driven by audio.

:meth:`Avatar.from_video` does what data preparation does for one video (the same functions:
frames resampled to ``data.fps``, OpenFace landmarks from a CSV or the detector fallback, the
steady crop track of :func:`~dinet_platform.media.crops.plan_crops`), then fixes the five
reference frames the way evaluation does for a whole video (spread evenly over it). From there:

- :meth:`Avatar.references` -- the stacked references ``(1, 15, H, W)`` for
  ``engine.encode_reference`` (once per avatar);
- :meth:`Avatar.sources` -- the mouth-masked source crops of frames ``i`` (what training feeds
  as ``source``: the crop with the mouth box zeroed);
- :meth:`Avatar.paste` -- a generated crop blended back into full frame ``i`` (:mod:`.blend`:
  only the mouth box, feathered; the rest of the frame is untouched).

:meth:`Avatar.save` / :meth:`Avatar.load` store it as a directory (``avatar.json``,
``track.npz`` loaded with ``allow_pickle=False``, and a copy of the source video, which
decodes to the same frames every time); no pickle. Serve keeps avatars this way and rebuilds
reference features from :meth:`references` on a cache miss.

Frames are held in memory (full resolution): ``max_bytes`` bounds that with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dinet_platform.config.schema import DataConfig
from dinet_platform.files import replace_dir
from dinet_platform.geometry import CropGeometry, crop_geometry, mouth_mask
from dinet_platform.media.crops import CropError, CropTrack, cut_crop, plan_crops
from dinet_platform.media.images import write_lossless_video
from dinet_platform.media.io import probe_video, resample_indices
from dinet_platform.media.landmarks import video_landmarks
from dinet_platform.media.openface import LandmarkError
from dinet_platform.media.opening import (
    CONTAINER_SUFFIXES,
    MediaError,
    MediaLimitError,
    MediaLimits,
    media_container,
)
from dinet_platform.runtime.blend import (
    DEFAULT_FEATHER,
    feather_mask,
    mouth_box_in_region,
    paste,
    resize_to,
)

AVATAR_FORMAT = "dinet-avatar/1"
META_FILE = "avatar.json"
TRACK_FILE = "track.npz"
VIDEO_STEM = "video"
DEFAULT_MAX_BYTES = 4 << 30


class AvatarError(ValueError):
    """The video cannot become an avatar; the message names the file and the reason."""


class AvatarLimitError(AvatarError):
    """The video or images are over a :class:`~dinet_platform.media.io.MediaLimits` bound
    (an API answers 413); ``limit`` names the bound, as
    :class:`~dinet_platform.media.io.MediaLimitError` does."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def spread_references(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over the video (the avatar's reference set; the
    evaluation picks its references the same way)."""
    return ((np.arange(count) + 0.5) * num_frames / count).astype(np.int64).clip(0, num_frames - 1)


def file_digest(*paths: Path | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Avatar:
    """A face video at one mouth size (see the module doc). Build with :meth:`from_video` or,
    from a few still frames, :meth:`from_images`."""

    mouth_size: int
    fps: int
    frames: list[np.ndarray] = field(repr=False)
    """Full RGB uint8 frames at ``fps``."""
    track: CropTrack = field(repr=False)
    reference_indices: np.ndarray
    video: Path
    """The source video (decoding it again gives ``frames``)."""
    content_hash: str
    """sha256 over the video, the landmarks file and the settings: equal avatars, equal hash."""
    feather: float = DEFAULT_FEATHER
    crops: np.ndarray = field(init=False, repr=False)
    """(N, H, W, 3) uint8 crops at the model's crop size."""

    def __post_init__(self) -> None:
        self.crops = np.stack([
            cut_crop(frame, self.track, i, self.geometry) for i, frame in enumerate(self.frames)
        ])
        height, width = self.track.height, self.track.width
        box = mouth_box_in_region(self.geometry.mouth, self.geometry.crop_shape, (height, width))
        self.mask = feather_mask(height, width, box, self.feather)
        self._keep = 1.0 - mouth_mask(self.mouth_size)[0]

    # ------------------------------------------------------------------ building

    @classmethod
    def from_video(
        cls,
        video: str | Path,
        *,
        mouth_size: int,
        data: DataConfig | None = None,
        landmarks: str | Path | None = None,
        feather: float = DEFAULT_FEATHER,
        max_bytes: int = DEFAULT_MAX_BYTES,
        limits: MediaLimits | None = None,
    ) -> Avatar:
        """Prepare ``video`` (any container PyAV reads; its audio is ignored) for a model of
        ``mouth_size`` whose data settings are ``data``. ``landmarks`` is an OpenFace CSV with
        one row per source frame; without it faces are detected. Raises :class:`AvatarError`
        naming the problem.

        The decoded frames are held in memory: past ``max_bytes`` (or
        ``limits.max_decoded_bytes``) decoding stops and the video is refused. ``limits``
        (for uploads) open it only in an allowlisted container and bound its frame size, its
        frames at ``data.fps`` (``max_frames``: the avatar's frame count) and its decoded
        frames, from the headers before decoding and while decoding;
        :class:`AvatarLimitError` names the bound it passed."""
        data = data or DataConfig()
        video = Path(video)
        geometry = crop_geometry(mouth_size)
        try:
            probe = probe_video(video, cache_bytes=max_bytes, limits=limits, fps=data.fps,
                                keep_frames=True)
            assert probe.frames is not None  # keep_frames: refused when they do not fit
            source_index = resample_indices(probe.times, data.fps,
                                            limits.max_frames if limits else None)
            marks = video_landmarks(probe, landmarks, smooth_frames=data.crop_smoothing_frames,
                                    min_coverage=data.min_face_coverage)
            track = plan_crops(
                marks.points[source_index], (probe.width, probe.height), geometry,
                margin=data.crop_margin, smooth_frames=data.crop_smoothing_frames,
            )
        except MediaLimitError as exc:
            raise AvatarLimitError(exc.limit, f"video {video.name}: {exc}") from None
        except (MediaError, LandmarkError, CropError) as exc:
            raise AvatarError(f"video {video.name}: {exc}") from None
        frames = [probe.frames[int(i)] for i in source_index]
        settings = f"{AVATAR_FORMAT}:{mouth_size}:{data.fps}:{data.crop_margin}:" \
                   f"{data.crop_smoothing_frames}:{data.num_references}:{feather}"
        digest = hashlib.sha256(
            (file_digest(video, Path(landmarks) if landmarks else None) + settings).encode()
        ).hexdigest()
        return cls(
            mouth_size=mouth_size,
            fps=data.fps,
            frames=frames,
            track=track,
            reference_indices=spread_references(len(frames), data.num_references),
            video=video,
            content_hash=digest,
            feather=feather,
        )

    @classmethod
    def from_images(
        cls,
        images: list[np.ndarray],
        folder: str | Path,
        *,
        mouth_size: int,
        data: DataConfig | None = None,
        landmarks: str | Path | None = None,
        feather: float = DEFAULT_FEATHER,
        limits: MediaLimits | None = None,
    ) -> Avatar:
        """An avatar from still frames of the face (typically its five reference photos, RGB
        ``uint8``, one size), with ``landmarks`` an OpenFace CSV of one row per image (else
        faces are detected). The frames become a lossless video in ``folder``, which must
        exist until the avatar is saved; from there it is :meth:`from_video` (under the same
        ``limits``, which bound the images' count, size and bytes first:
        :class:`AvatarLimitError`). Each image's crop is placed on its own landmarks (no
        smoothing across unrelated photos)."""
        data = (data or DataConfig()).model_copy(update={"crop_smoothing_frames": 1})
        if limits is not None:
            try:
                if limits.max_frames is not None and len(images) > limits.max_frames:
                    raise MediaLimitError("max_frames", f"{len(images)} images, over the limit "
                                          f"of {limits.max_frames} frames")
                for index, image in enumerate(images):
                    limits.check_pixels(image.shape[1], image.shape[0], f"frames part {index}")
                total = sum(image.nbytes for image in images)
                if limits.max_decoded_bytes is not None and total > limits.max_decoded_bytes:
                    raise MediaLimitError("max_decoded_bytes", f"the images hold {total >> 20} "
                                          f"MiB, over the limit of "
                                          f"{limits.max_decoded_bytes >> 20} MiB")
            except MediaLimitError as exc:
                raise AvatarLimitError(exc.limit, f"frames: {exc}") from None
        try:
            video = write_lossless_video(images, Path(folder) / "frames.mkv", data.fps)
        except MediaError as exc:
            raise AvatarError(f"frames: {exc}") from None
        if limits is not None:  # the lossless video is ours: Matroska, whatever uploads may be
            limits = replace(limits, containers=limits.containers | {"matroska"})
        return cls.from_video(video, mouth_size=mouth_size, data=data, landmarks=landmarks,
                              feather=feather, limits=limits)

    # ------------------------------------------------------------------ engine inputs

    @property
    def geometry(self) -> CropGeometry:
        return crop_geometry(self.mouth_size)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the full frames."""
        height, width = self.frames[0].shape[:2]
        return width, height

    def _float(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        crops = torch.from_numpy(self.crops[np.asarray(indices, dtype=np.int64)])
        return crops.permute(0, 3, 1, 2).float().div_(255.0)

    def references(self) -> torch.Tensor:
        """(1, 3 * num_references, H, W) float32 reference crops, stacked as in training."""
        refs = self._float(self.reference_indices)
        return refs.reshape(1, -1, *refs.shape[-2:])

    def sources(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """(B, 3, H, W) float32 crops of frames ``indices`` with the mouth box zeroed."""
        return self._float(indices) * self._keep

    def paste(self, index: int, face: torch.Tensor | np.ndarray) -> np.ndarray:
        """Full frame ``index`` with the generated ``face`` (a (3, H, W) float tensor in
        [0, 1], or an (H, W, 3) uint8 array, at the crop size) blended into its mouth box."""
        if isinstance(face, torch.Tensor):
            face = (face.detach().float().clamp(0, 1).mul(255).round().byte()
                    .permute(1, 2, 0).cpu().numpy())
        if face.shape[:2] != self.geometry.crop_shape:
            raise ValueError(f"face crop is {face.shape[:2]}, expected {self.geometry.crop_shape}")
        patch = resize_to(face, self.track.height, self.track.width)
        return paste(self.frames[index], patch, int(self.track.top[index]),
                     int(self.track.left[index]), self.mask)

    def loop_index(self, step: int) -> int:
        """The avatar frame shown at output frame ``step`` when the output is longer than the
        video: forward, then backward (ping-pong), so looping never jumps."""
        count = self.num_frames
        if count == 1:
            return 0
        period = 2 * (count - 1)
        phase = step % period
        return phase if phase < count else period - phase

    # ------------------------------------------------------------------ storage

    def save(self, directory: str | Path) -> Path:
        """Write the avatar to ``directory`` (replaced atomically when it exists)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            video_name = VIDEO_STEM + _stored_suffix(self.video)
            shutil.copyfile(self.video, staging / video_name)
            np.savez(
                staging / TRACK_FILE,
                top=self.track.top, left=self.track.left,
                reference_indices=self.reference_indices,
            )
            meta = {
                "format": AVATAR_FORMAT,
                "mouth_size": self.mouth_size,
                "fps": self.fps,
                "num_frames": self.num_frames,
                "frame_size": list(self.frame_size),
                "video": video_name,
                "content_hash": self.content_hash,
                "feather": self.feather,
                "radius": self.track.radius,
                "crop_height": self.track.height,
                "crop_width": self.track.width,
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=2))
            replace_dir(staging, directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Avatar:
        """An avatar written by :meth:`save` (same frames, crops and references)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta.get("format") != AVATAR_FORMAT:
                raise ValueError(f"unsupported avatar format {meta.get('format')!r}")
            with np.load(directory / TRACK_FILE, allow_pickle=False) as arrays:
                top, left = arrays["top"], arrays["left"]
                references = arrays["reference_indices"]
            video = directory / meta["video"]
            probe = probe_video(video, cache_bytes=DEFAULT_MAX_BYTES)
            if probe.frames is None:
                raise MediaError("too long to hold in memory")
            source_index = resample_indices(probe.times, meta["fps"])
        except (OSError, KeyError, ValueError, MediaError) as exc:
            raise AvatarError(f"avatar {directory}: {exc}") from None
        frames = [probe.frames[int(i)] for i in source_index]
        if len(frames) != meta["num_frames"]:
            raise AvatarError(f"avatar {directory}: video decodes to {len(frames)} frames, "
                              f"expected {meta['num_frames']}")
        track = CropTrack(float(meta["radius"]), top, left, int(meta["crop_height"]),
                          int(meta["crop_width"]))
        return cls(
            mouth_size=int(meta["mouth_size"]), fps=int(meta["fps"]), frames=frames,
            track=track, reference_indices=references, video=video,
            content_hash=meta["content_hash"], feather=float(meta["feather"]),
        )


def _stored_suffix(video: Path) -> str:
    """The suffix of the avatar's copy of ``video``: chosen from its bytes for the containers
    :func:`~dinet_platform.media.io.media_container` knows, never a client's file name."""
    try:
        return CONTAINER_SUFFIXES[media_container(video)]
    except MediaError:
        return video.suffix.lower()


def remove_avatar(directory: str | Path) -> None:
    """Delete a saved avatar directory (missing is fine)."""
    directory = Path(directory)
    if directory.exists():
        trash = directory.with_name(f".{directory.name}.del-{os.getpid()}")
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
