"""Still images: their size from the header alone, decoding under limits, and a set of stills
as a lossless video (so they can go wherever a video is expected)."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np

from dinet_platform.media.opening import MediaError, MediaFormatError, MediaLimits

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
