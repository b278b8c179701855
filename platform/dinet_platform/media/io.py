"""Decoding video and audio with PyAV, and resampling video to the training frame rate.

Everything here raises :class:`~dinet_platform.media.opening.MediaError` with a sentence a
user can act on, because the preprocessing job turns these errors into "skipped: <reason>"
entries of its manifest instead of crashing. Frames are RGB ``uint8`` arrays; audio is mono
``float32`` in [-1, 1].

Videos are decoded twice at most: a first pass reads frame times (and keeps the frames while
they fit in ``cache_bytes``), and :func:`iter_frames` streams them again for long videos, so a
one-hour 1080p video never has to sit in memory. Untrusted media is read under
:class:`~dinet_platform.media.opening.MediaLimits` (see :mod:`.opening`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np

from dinet_platform.media.opening import (
    HEADER_SLACK,
    MediaError,
    MediaLimitError,
    MediaLimits,
    open_media,
)


def _stream_seconds(container: av.container.InputContainer, stream: av.stream.Stream
                    ) -> float | None:
    """The duration its headers give ``stream`` (the container's when it has one stream)."""
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _check_video_header(container: av.container.InputContainer, stream: av.video.VideoStream,
                        limits: MediaLimits, fps: float) -> None:
    width = stream.codec_context.width or 0
    height = stream.codec_context.height or 0
    limits.check_pixels(width, height)
    seconds = _stream_seconds(container, stream)
    if limits.max_frames is not None and seconds is not None:
        estimate = math.floor(seconds * fps)
        if estimate > limits.max_frames * HEADER_SLACK + 1:
            limits.check_frames(estimate, fps)
    count = stream.frames or 0
    if limits.max_source_frames is not None and count > limits.max_source_frames:
        raise MediaLimitError("max_source_frames", f"video has {count} frames, over the limit "
                              f"of {limits.max_source_frames} decoded frames")


def check_video_header(path: str | Path, limits: MediaLimits, fps: float) -> None:
    """Refuse ``path`` from its container and headers alone (nothing is decoded): not an
    allowlisted container, no video stream, or over ``limits`` at ``fps``. For an upload that
    is decoded later elsewhere (a queued dub job): the decoder enforces the limits again."""
    container = open_media(Path(path), limits)
    try:
        if not container.streams.video:
            raise MediaError("no video stream")
        _check_video_header(container, container.streams.video[0], limits, fps)
    finally:
        container.close()


class _FrameGuard:
    """Limits applied to each decoded frame, before it is converted or kept."""

    def __init__(self, limits: MediaLimits, fps: float) -> None:
        self.limits, self.fps = limits, fps
        self.first = self.last = None

    def check(self, count: int, width: int, height: int, time: float) -> None:
        limits = self.limits
        limits.check_pixels(width, height)
        if limits.max_source_frames is not None and count > limits.max_source_frames:
            raise MediaLimitError("max_source_frames", f"video has more than "
                                  f"{limits.max_source_frames} frames (the limit); stopped "
                                  "decoding there")
        if limits.max_frames is not None:
            self.first = time if self.first is None else min(self.first, time)
            self.last = time if self.last is None else max(self.last, time)
            span = self.last - self.first
            if math.floor(span * self.fps) + 1 > limits.max_frames:
                raise MediaLimitError(
                    "max_frames", f"video frames span more than {span:.1f} s: over "
                    f"{math.floor(span * self.fps) + 1} frames at {self.fps:g} fps, past the "
                    f"limit of {limits.max_frames} frames; stopped decoding there")


# ---------------------------------------------------------------------------- video


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
    limits: MediaLimits | None = field(default=None, repr=False)
    """The limits it was probed under (:func:`iter_frames` decodes under them again)."""

    @property
    def num_source_frames(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return float(len(self.times) / self.source_fps) if len(self.times) else 0.0


def probe_video(path: str | Path, cache_bytes: int = 256 << 20, *,
                limits: MediaLimits | None = None, fps: float | None = None,
                keep_frames: bool = False) -> VideoProbe:
    """Decode every frame once: frame times, size, and (if small enough) the frames themselves.

    ``cache_bytes`` bounds the RGB frames kept (and ``limits.max_decoded_bytes`` when
    smaller): past it the frames are dropped for :func:`iter_frames` to decode again, or,
    with ``keep_frames``, the video is refused (:class:`MediaLimitError`) right there.
    ``limits`` (see :class:`MediaLimits`) are checked from the headers before decoding and
    on every frame while decoding, with frame counts taken at ``fps`` (the rate the frames
    will be resampled to; default the video's own) -- the resampled count is checked exactly
    after decoding, before anything of that size is built.

    Raises :class:`MediaError` for a missing, corrupt or empty video.
    """
    path = Path(path)
    container = open_media(path, limits)
    budget = cache_bytes
    if limits is not None and limits.max_decoded_bytes is not None:
        budget = min(budget, limits.max_decoded_bytes)
    try:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        out_fps = float(fps or rate or 25)
        guard = None
        if limits is not None:
            _check_video_header(container, stream, limits, out_fps)
            guard = _FrameGuard(limits, out_fps)
        times: list[float] = []
        frames: list[np.ndarray] | None = []
        cached = 0
        width = height = 0
        for index, frame in enumerate(container.decode(stream)):
            width, height = frame.width, frame.height
            time = frame.time if frame.time is not None else index / float(rate or 25)
            if guard is not None:
                guard.check(index + 1, width, height, time)
            times.append(time)
            if frames is not None:
                cached += width * height * 3
                if cached <= budget:
                    frames.append(frame.to_ndarray(format="rgb24"))
                elif keep_frames:
                    raise MediaLimitError(
                        "max_decoded_bytes", f"too long to hold in memory (more than {index} "
                        f"frames of {width}x{height} exceed {budget >> 20} MiB): trim it")
                else:
                    frames = None  # too long to keep: iter_frames decodes it again
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"corrupt video stream ({type(exc).__name__}: {exc})") from exc
    finally:
        container.close()
    if not times:
        raise MediaError("video has no decodable frames")
    order = np.argsort(np.asarray(times), kind="stable")
    times_arr = np.asarray(times, dtype=np.float64)[order]
    if limits is not None:
        limits.check_frames(resampled_count(times_arr, out_fps), out_fps)
    if frames is not None:
        frames = [frames[i] for i in order]
    source_fps = float(rate) if rate else _fps_from_times(times_arr)
    return VideoProbe(path, width, height, source_fps, times_arr, frames, limits)


def _fps_from_times(times: np.ndarray) -> float:
    if len(times) < 2:
        return 25.0
    step = float(np.median(np.diff(times)))
    return 1.0 / step if step > 0 else 25.0


def resampled_count(times: np.ndarray, fps: float) -> int:
    """How many frames :func:`resample_indices` makes of source frames at ``times`` (s)."""
    if len(times) == 0:
        return 0
    source_step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    duration = float(times[-1] - times[0]) + source_step
    return max(1, round(duration * fps))


def resample_indices(times: np.ndarray, fps: float, max_frames: int | None = None
                     ) -> np.ndarray:
    """For each output frame at ``fps``, the index of the source frame nearest to its time.

    A 25 fps source maps onto itself; a 30 fps source drops every sixth frame; a 24 fps
    source repeats one frame a second. Nearest-neighbour keeps frames sharp (no blending).
    More than ``max_frames`` output frames is a :class:`MediaLimitError`, raised before the
    index array is built (two frames 2,000 s apart would make 100,000).
    """
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    count = resampled_count(times, fps)
    MediaLimits(max_frames=max_frames).check_frames(count, fps)
    start = float(times[0])
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
    """Yield ``(source_index, rgb_frame)`` in display order, from the cache or by re-decoding
    (under the limits it was probed with)."""
    if probe.frames is not None:
        yield from enumerate(probe.frames)
        return
    # Re-decode; reorder by time exactly as probe_video did (display order).
    limits = probe.limits
    container = open_media(probe.path, limits)
    # the frame span was checked by probe_video at the rate it was asked for
    guard = _FrameGuard(replace(limits, max_frames=None), 25.0) if limits is not None else None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        pending: list[tuple[float, np.ndarray]] = []
        emitted = 0
        for index, frame in enumerate(container.decode(stream)):
            if guard is not None:
                guard.check(index + 1, frame.width, frame.height, 0.0)
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


# ---------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioProbe:
    """What the headers of a file's first audio stream say (nothing decoded)."""

    sample_rate: int
    channels: int
    seconds: float | None
    """The header's duration; None when it has none."""


def probe_audio(path: str | Path, *, limits: MediaLimits | None = None) -> AudioProbe:
    """The first audio stream's rate, channels and duration from the headers of ``path``
    (opened under ``limits``: allowlisted container, ``max_audio_seconds`` checked against
    the header). :class:`MediaError` without an audio stream."""
    path = Path(path)
    container = open_media(path, limits)
    try:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path.name}")
        stream = container.streams.audio[0]
        seconds = _stream_seconds(container, stream)
        if limits is not None:
            _check_audio_header(seconds, limits, path.name)
        return AudioProbe(int(stream.rate or 0), int(stream.channels or 0), seconds)
    finally:
        container.close()


def _check_audio_header(seconds: float | None, limits: MediaLimits, name: str) -> None:
    limit = limits.max_audio_seconds
    if limit is not None and seconds is not None and seconds > limit * HEADER_SLACK + 1:
        limits.check_audio_seconds(seconds, f"audio of {name}")


def read_audio(path: str | Path, sample_rate: int, *, limits: MediaLimits | None = None
               ) -> np.ndarray:
    """The first audio stream of ``path`` (a video or an audio file), mono at ``sample_rate``.

    With ``limits`` (:class:`MediaLimits`) the file is opened only in an allowlisted
    container, an audio stream whose header says it is longer than ``max_audio_seconds`` is
    refused before decoding, and decoding stops with :class:`MediaLimitError` once the
    decoded samples pass it (headers can lie).

    Raises :class:`MediaError` when there is no audio stream or it holds no samples.
    """
    path = Path(path)
    container = open_media(path, limits)
    chunks: list[np.ndarray] = []
    limit = limits.max_audio_seconds if limits is not None else None
    try:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path.name}")
        stream = container.streams.audio[0]
        if limits is not None:
            _check_audio_header(_stream_seconds(container, stream), limits, path.name)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        decoded = 0.0
        for frame in container.decode(stream):
            if limit is not None:
                decoded += frame.samples / float(frame.sample_rate or stream.rate or 1)
                if decoded > limit + 0.1:  # AAC priming and such: a tenth of a second
                    raise MediaLimitError("max_audio_seconds", f"audio of {path.name} is "
                                          f"longer than the limit of {limit:g} s; stopped "
                                          "decoding there")
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
    resampler = AudioResampler(rate, target)
    return np.concatenate([resampler.push(samples), resampler.flush()])


class AudioResampler:
    """FFmpeg's resampler over a stream of mono chunks: its filter state carries across
    chunks, so chunked audio resamples as the whole would."""

    def __init__(self, rate: int, target: int):
        self.rate = rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=target)

    def push(self, samples: np.ndarray) -> np.ndarray:
        if len(samples) == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        out = [frame.to_ndarray().reshape(-1) for frame in frames]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
