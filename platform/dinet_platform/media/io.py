"""Decoding video and audio with PyAV, and resampling video to the training frame rate.

Everything here raises :class:`MediaError` with a sentence a user can act on, because the
preprocessing job turns these errors into "skipped: <reason>" entries of its manifest instead
of crashing. Frames are RGB ``uint8`` arrays; audio is mono ``float32`` in [-1, 1].

Videos are decoded twice at most: a first pass reads frame times (and keeps the frames while
they fit in ``cache_bytes``), and :func:`iter_frames` streams them again for long videos, so a
one-hour 1080p video never has to sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np


class MediaError(Exception):
    """A video or audio file that cannot be used; the message is the user-facing reason."""


@dataclass
class VideoProbe:
    """What the first decoding pass learned about a video."""

    path: Path
    width: int
    height: int
    source_fps: float
    times: np.ndarray
    """Presentation time (s) of every decoded source frame, in display order."""
    frames: list[np.ndarray] | None = field(default=None, repr=False)
    """All decoded RGB frames when they fitted in the cache budget, else None."""

    @property
    def num_source_frames(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return float(len(self.times) / self.source_fps) if len(self.times) else 0.0


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"unreadable or corrupt media file ({type(exc).__name__}: {exc})") from exc


def probe_video(path: str | Path, cache_bytes: int = 256 << 20) -> VideoProbe:
    """Decode every frame once: frame times, size, and (if small enough) the frames themselves.

    Raises :class:`MediaError` for a missing, corrupt or empty video.
    """
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        times: list[float] = []
        frames: list[np.ndarray] | None = []
        cached = 0
        width = height = 0
        for index, frame in enumerate(container.decode(stream)):
            width, height = frame.width, frame.height
            times.append(frame.time if frame.time is not None else index / float(rate or 25))
            if frames is not None:
                array = frame.to_ndarray(format="rgb24")
                cached += array.nbytes
                if cached > cache_bytes:
                    frames = None  # too long to keep: iter_frames decodes it again
                else:
                    frames.append(array)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"corrupt video stream ({type(exc).__name__}: {exc})") from exc
    finally:
        container.close()
    if not times:
        raise MediaError("video has no decodable frames")
    order = np.argsort(np.asarray(times), kind="stable")
    times_arr = np.asarray(times, dtype=np.float64)[order]
    if frames is not None:
        frames = [frames[i] for i in order]
    fps = float(rate) if rate else _fps_from_times(times_arr)
    return VideoProbe(path, width, height, fps, times_arr, frames)


def _fps_from_times(times: np.ndarray) -> float:
    if len(times) < 2:
        return 25.0
    step = float(np.median(np.diff(times)))
    return 1.0 / step if step > 0 else 25.0


def resample_indices(times: np.ndarray, fps: float) -> np.ndarray:
    """For each output frame at ``fps``, the index of the source frame nearest to its time.

    A 25 fps source maps onto itself; a 30 fps source drops every sixth frame; a 24 fps
    source repeats one frame a second. Nearest-neighbour keeps frames sharp (no blending).
    """
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    start = float(times[0])
    source_step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    duration = float(times[-1] - start) + source_step
    count = max(1, round(duration * fps))
    wanted = start + np.arange(count) / fps
    right = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1) if len(times) > 1 else None
    if right is None:
        return np.zeros(count, dtype=np.int64)
    left = right - 1
    nearest = np.where(
        np.abs(times[right] - wanted) < np.abs(wanted - times[left]) - 1e-9, right, left
    )
    return nearest.astype(np.int64)


def iter_frames(probe: VideoProbe) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(source_index, rgb_frame)`` in display order, from the cache or by re-decoding."""
    if probe.frames is not None:
        yield from enumerate(probe.frames)
        return
    # Re-decode; reorder by time exactly as probe_video did (display order).
    container = _open(probe.path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        pending: list[tuple[float, np.ndarray]] = []
        emitted = 0
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / rate
            pending.append((t, frame.to_ndarray(format="rgb24")))
            # Decoders output in display order already; the small buffer guards odd streams.
            if len(pending) > 4:
                pending.sort(key=lambda item: item[0])
                yield emitted, pending.pop(0)[1]
                emitted += 1
        pending.sort(key=lambda item: item[0])
        for _, array in pending:
            yield emitted, array
            emitted += 1
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"corrupt video stream ({type(exc).__name__}: {exc})") from exc
    finally:
        container.close()


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of ``path`` (a video or an audio file), mono at ``sample_rate``.

    Raises :class:`MediaError` when there is no audio stream or it holds no samples.
    """
    path = Path(path)
    container = _open(path)
    chunks: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path.name}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"corrupt audio stream in {path.name} ({exc})") from exc
    finally:
        container.close()
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise MediaError(f"audio stream of {path.name} has no samples")
    return samples


def resample_audio(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 ``samples`` at ``rate`` Hz, resampled to ``target`` Hz by FFmpeg's
    resampler (what :func:`read_audio` uses for files)."""
    if rate == target:
        return samples.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """An RGB ``uint8`` frame from PNG/JPEG/... bytes; :class:`MediaError` naming ``name`` if
    the bytes are not an image."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise MediaError(f"{name} is not a readable image (PNG, JPEG, ...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_lossless_video(frames: list[np.ndarray], path: str | Path, fps: int) -> Path:
    """Frames (RGB ``uint8``, one size) as an FFV1 video at ``fps``: decoding it gives the same
    pixels back, so a set of still frames can go wherever a video is expected."""
    if not frames:
        raise MediaError("no frames to write")
    height, width = frames[0].shape[:2]
    for index, frame in enumerate(frames):
        if frame.shape != (height, width, 3):
            raise MediaError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first is "
                             f"{width}x{height}: all frames must have one size")
    path = Path(path)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format="bgr0")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path
