"""Opening media files that may come from anyone: the errors every media function raises, the
container allowlist, and :class:`MediaLimits`.

Untrusted media (uploads) is read under :class:`MediaLimits`: the container is recognised from
the file's first bytes and opened with that allowlisted demuxer only (:func:`media_container`;
playlists, concat scripts and any other container are refused with
:class:`MediaFormatError`), frame size, frame count and audio duration are checked from the
headers before decoding and again while decoding, which stops at the limit
(:class:`MediaLimitError`, whose ``limit`` names the bound). Every file reaches FFmpeg as
``file:<absolute path>`` with ``protocol_whitelist=file`` (:func:`open_media`), never as a
URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av


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


def open_media(path: Path, limits: MediaLimits | None = None) -> av.container.InputContainer:
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
