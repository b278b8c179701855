"""Decoding video and audio with PyAV, and resampling video to the training frame rate.

Everything here raises :class:`MediaError` with a sentence a user can act on, because the
preprocessing job turns these errors into "skipped: <reason>" entries of its manifest instead
of crashing. Frames are RGB ``uint8`` arrays; audio is mono ``float32`` in [-1, 1].

Videos are decoded twice at most: a first pass reads frame times (and keeps the frames while
they fit in ``cache_bytes``), and :func:`iter_frames` streams them again for long videos, so a
one-hour 1080p video never has to sit in memory.

Untrusted media (uploads) is read under :class:`MediaLimits`: the container is recognised from
the file's first bytes and opened with that allowlisted demuxer only (:func:`media_container`;
playlists, concat scripts and any other container are refused with
:class:`MediaFormatError`), frame size, frame count and audio duration are checked from the
headers before decoding and again while decoding, which stops at the limit
(:class:`MediaLimitError`, whose ``limit`` names the bound). Every file reaches FFmpeg as
``file:<absolute path>`` with ``protocol_whitelist=file``, never as a URL.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np


class MediaError(Exception):
    """A video or audio file that cannot be used; the message is the user-facing reason."""


class MediaFormatError(MediaError):
    """A file refused for what it is, before FFmpeg parses it: a playlist or other text that
    points at further files, or a container outside the allowlist (an API answers 415)."""


class MediaLimitError(MediaError):
    """Media over a :class:`MediaLimits` bound, found in its headers or while decoding (then
    decoding stopped there); an API answers 413. ``limit`` names the :class:`MediaLimits`
    field that refused it."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# ---------------------------------------------------------------------------- containers

CONTAINER_SUFFIXES = {"mov": ".mp4", "matroska": ".mkv", "avi": ".avi", "wav": ".wav",
                      "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3", "aac": ".aac"}
"""The containers :func:`media_container` recognises from their first bytes (FFmpeg demuxer
name -> the file suffix a server should store such a file under)."""
UNTRUSTED_CONTAINERS = frozenset(CONTAINER_SUFFIXES)
"""The default allowlist of :class:`MediaLimits`: all of them. None of these demuxers opens
other files (``mov``'s external data references stay off: ``enable_drefs=0``)."""
_LABELS = {"mov": "MP4/MOV", "matroska": "Matroska/WebM", "avi": "AVI", "wav": "WAV",
           "flac": "FLAC", "ogg": "Ogg", "mp3": "MP3", "aac": "AAC (ADTS)"}
_DEMUXER_OPTIONS = {"mov": {"enable_drefs": "0", "use_absolute_path": "0"}}
_MOV_ATOMS = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_REFERENCING_TEXT = (
    (b"#EXTM3U", "an M3U/HLS playlist"),
    (b"#EXT", "an M3U/HLS playlist"),
    (b"ffconcat", "an FFmpeg concat script"),
    (b"[playlist]", "a PLS playlist"),
    (b"<?xml", "an XML document (a DASH/SMIL manifest?)"),
    (b"<MPD", "a DASH manifest"),
    (b"<smil", "a SMIL playlist"),
    (b"v=0", "an SDP session description"),
)
"""Text formats whose FFmpeg demuxers open the files or URLs they name: refused everywhere,
also for trusted local files."""


def _sniff(head: bytes) -> str | None:
    """The demuxer for the bytes ``head`` begins with (after any ID3v2 tag), else None."""
    if head[4:8] in _MOV_ATOMS:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        if head[1] & 0x06 == 0 and head[1] & 0x10:  # layer 0: ADTS (MPEG-2/4 AAC)
            return "aac"
        if head[1] & 0x18 != 0x08 and head[1] & 0x06 and head[2] & 0xF0 != 0xF0:
            return "mp3"  # MPEG audio layer I-III frame header
    return None


def _head(path: Path) -> tuple[bytes, bytes]:
    """The first bytes of ``path``, and the first bytes after an ID3v2 tag (its padding
    skipped) -- the same bytes when there is none."""
    with open(path, "rb") as handle:
        head = handle.read(64)
        if head[:3] != b"ID3" or len(head) < 10:
            return head, head
        size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        size += 10 if head[5] & 0x10 else 0  # a footer
        handle.seek(size)
        after = handle.read(4096).lstrip(b"\x00")[:64]
        return head, after


def _referencing_text(head: bytes) -> str | None:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    for prefix, what in _REFERENCING_TEXT:
        if text[:len(prefix)].lower() == prefix.lower():
            return what
    return None


def media_container(path: str | Path,
                    allowed: frozenset[str] | set[str] = UNTRUSTED_CONTAINERS) -> str:
    """The FFmpeg demuxer for ``path``, from its first bytes (never its name): one of
    ``allowed`` (names as in :data:`CONTAINER_SUFFIXES`), else :class:`MediaFormatError`
    naming what it is -- a playlist, text, an unknown or a disallowed container.

    A server stores an upload as ``"upload" + CONTAINER_SUFFIXES[media_container(path)]`` so
    that no client-chosen name or extension reaches FFmpeg."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    head, after = _head(path)
    referencing = _referencing_text(head)
    if referencing is not None:
        raise MediaFormatError(f"{path.name} is {referencing}, which refers to other files or "
                               "URLs; upload the media itself")
    found = _sniff(after)
    if found is None:
        what = ("an empty file" if not head else "text, not media" if _is_text(head)
                else "not a recognised audio or video container")
        raise MediaFormatError(f"{path.name} is {what} (accepted: {_accepted(allowed)})")
    if found not in allowed:
        raise MediaFormatError(f"{path.name} is {_LABELS[found]}, which is not accepted here "
                               f"(accepted: {_accepted(allowed)})")
    return found


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _accepted(allowed: frozenset[str] | set[str]) -> str:
    return ", ".join(_LABELS[name] for name in CONTAINER_SUFFIXES if name in allowed) or "none"


# ---------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class MediaLimits:
    """Bounds for decoding media from an untrusted source (an upload), checked from the
    headers before decoding and enforced while decoding, each refusal a
    :class:`MediaLimitError` whose ``limit`` is the field's name. ``None`` leaves that
    quantity unbounded. Passing any ``MediaLimits`` (even ``MediaLimits()``) also opens files
    only in an allowlisted container, recognised from their bytes (:func:`media_container`).

    Without limits (``limits=None``, the offline CLI and data preparation) FFmpeg picks the
    demuxer as before, but playlists and other referencing text are still refused and a
    path, never a URL, reaches FFmpeg."""

    max_pixels_per_frame: int | None = None
    """width x height of one video frame or still image."""
    max_frames: int | None = None
    """Frames of a video once resampled to the rate it is used at (``fps`` of
    :func:`probe_video`, e.g. ``data.fps`` for an avatar; else its own rate). Timestamps that
    spread a few frames over a long time count as the frames they resample to."""
    max_source_frames: int | None = None
    """Frames decoded from a video file, whatever their timing (a 250 fps clip decodes ten
    per frame at 25 fps)."""
    max_decoded_bytes: int | None = None
    """RGB bytes of decoded frames held at once; a video that must be held in memory (an
    avatar's) and does not fit is refused as soon as decoding passes this."""
    max_audio_seconds: float | None = None
    """Duration of an audio stream (from the header, then counted while decoding)."""
    containers: frozenset[str] = UNTRUSTED_CONTAINERS
    """The allowlisted demuxers (a subset of :data:`CONTAINER_SUFFIXES`)."""

    def __post_init__(self) -> None:
        for name in ("max_pixels_per_frame", "max_frames", "max_source_frames",
                     "max_decoded_bytes", "max_audio_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"MediaLimits.{name} must be > 0 or None, got {value!r}")
        unknown = set(self.containers) - set(CONTAINER_SUFFIXES)
        if unknown:
            raise ValueError(f"MediaLimits.containers: unknown {sorted(unknown)}; known: "
                             f"{sorted(CONTAINER_SUFFIXES)}")
        object.__setattr__(self, "containers", frozenset(self.containers))

    def check_pixels(self, width: int, height: int, what: str = "video frames") -> None:
        """:class:`MediaLimitError` when ``width`` x ``height`` is over the pixel limit."""
        limit = self.max_pixels_per_frame
        if limit is not None and width * height > limit:
            raise MediaLimitError("max_pixels_per_frame", f"{what}: {width}x{height} pixels "
                                  f"({width * height / 1e6:.1f} MP), over the limit of "
                                  f"{limit / 1e6:.1f} MP per frame")

    def check_frames(self, count: int, fps: float, what: str = "video") -> None:
        """:class:`MediaLimitError` when ``count`` frames at ``fps`` are over ``max_frames``."""
        limit = self.max_frames
        if limit is not None and count > limit:
            raise MediaLimitError("max_frames", f"{what} is {count / fps:.1f} s long: {count} "
                                  f"frames at {fps:g} fps, over the limit of {limit} frames")

    def check_audio_seconds(self, seconds: float, what: str = "audio") -> None:
        limit = self.max_audio_seconds
        if limit is not None and seconds > limit:
            raise MediaLimitError("max_audio_seconds", f"{what} is {seconds:.1f} s long, over "
                                  f"the limit of {limit:g} s")


HEADER_SLACK = 1.05
"""Header durations are estimates (VBR MP3, edit lists): they refuse only past the limit by
this factor (plus a frame or a second); decoding then enforces the limit exactly."""


def _open(path: Path, limits: MediaLimits | None = None) -> av.container.InputContainer:
    """``path`` opened for reading as a local file (``file:`` + absolute path, no other
    protocol), refusing referencing text; with ``limits`` only with the allowlisted demuxer
    its bytes name (and FFmpeg's ``format_whitelist`` set to it)."""
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    options = {"protocol_whitelist": "file"}
    if limits is not None:
        demuxer: str | None = media_container(path, limits.containers)
        options["format_whitelist"] = demuxer
        options.update(_DEMUXER_OPTIONS.get(demuxer, {}))
    else:
        demuxer = None
        head, _ = _head(path)
        referencing = _referencing_text(head)
        if referencing is not None:
            raise MediaFormatError(f"{path.name} is {referencing}, which refers to other "
                                   "files or URLs; give the media itself")
    try:
        container = av.open("file:" + os.path.abspath(path), format=demuxer,
                            container_options=options)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"unreadable or corrupt media file ({type(exc).__name__}: {exc})") from exc
    return container


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
    container = _open(Path(path), limits)
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
    container = _open(path, limits)
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
    container = _open(probe.path, limits)
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
    container = _open(path, limits)
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
    container = _open(path, limits)
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
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})


def image_size(data: bytes) -> tuple[str, int, int]:
    """``(kind, width, height)`` of PNG or JPEG bytes, read from the header (PNG's IHDR, the
    largest JPEG frame header before the first scan) without decoding anything; kind is
    ``"png"`` or ``"jpeg"``. :class:`MediaFormatError` for anything else or a truncated
    header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise MediaFormatError("PNG without its IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"\xff\xd8":
        width = height = 0
        at = 2
        while at + 4 <= len(data):
            if data[at] != 0xFF:
                raise MediaFormatError("JPEG with a corrupt marker segment")
            marker = data[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # no payload
                at += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image, start of scan
                break
            (length,) = struct.unpack(">H", data[at + 2:at + 4])
            if marker in _SOF_MARKERS:
                if at + 9 > len(data):
                    break
                h, w = struct.unpack(">HH", data[at + 5:at + 9])
                width, height = max(width, w), max(height, h)
            at += 2 + length
        if width == 0 or height == 0:
            raise MediaFormatError("JPEG without a usable frame header (width and height)")
        return "jpeg", width, height
    raise MediaFormatError("not a PNG or JPEG image")


def decode_image(data: bytes, name: str, *, limits: MediaLimits | None = None) -> np.ndarray:
    """An RGB ``uint8`` frame from PNG/JPEG/... bytes; :class:`MediaError` naming ``name`` if
    the bytes are not an image.

    With ``limits`` only PNG and JPEG are accepted (:class:`MediaFormatError` otherwise), and
    their header size is checked against ``limits.max_pixels_per_frame`` before decoding
    (:class:`MediaLimitError`): a 730 KB PNG can declare 16000 x 16000 pixels (768 MB)."""
    import cv2

    if limits is not None:
        try:
            _, width, height = image_size(data)
        except MediaFormatError as exc:
            raise MediaFormatError(f"{name}: {exc}") from None
        limits.check_pixels(width, height, name)
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
