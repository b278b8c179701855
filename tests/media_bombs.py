"""Media bombs for the tests, each generated small on disk (a few KB to under 1 MB), and a
peak-RSS probe to show that refusing them costs no memory."""

from __future__ import annotations

import math
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# --------------------------------------------------------------------------- bomb makers


def solid_video(path: Path, width: int, height: int, frames: int, *, fmt: str | None = None,
                codec: str = "libx264", seconds_apart: float | None = None) -> Path:
    """``frames`` solid grey frames (compress to almost nothing). With ``seconds_apart`` the
    frames are that far apart in time (an expansion bomb once resampled to a fixed rate)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        if seconds_apart is not None:
            stream.time_base = Fraction(1, 1000)
        image = np.full((height, width, 3), 128, np.uint8)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if seconds_apart is not None:
                frame.pts = round(index * seconds_apart * 1000)
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def png_bomb(side: int = 16000) -> bytes:
    """A black ``side`` x ``side`` RGB PNG, built without ever holding its pixels: the zlib
    stream of zero rows is one sync-flushed deflate block of zeros repeated (valid, since its
    back-references only reach zeros), then an empty final block and the Adler-32 of n zeros."""
    chunk = 1 + 3 * side  # a filter byte and RGB per row, all zero
    raw = side * chunk
    piece = chunk * math.gcd(side, 16)
    zeros = bytes(piece)
    deflate = zlib.compressobj(9)
    head = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
    body = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
    adler = ((raw % 65521) << 16) | 1  # a = 1 + sum(bytes) = 1, b = sum of a's = n
    stream = head + body * (raw // piece - 1) + b"\x03\x00" + struct.pack(">I", adler)

    def chunk_bytes(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk_bytes(b"IHDR", ihdr) + chunk_bytes(b"IDAT", stream)
            + chunk_bytes(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    import cv2

    _, encoded = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(encoded.tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def flac(path: Path, seconds: float, rate: int = 8000, *, claim_samples: int | None = None
         ) -> Path:
    """Silent mono FLAC; ``claim_samples`` rewrites STREAMINFO's total-samples field (0: the
    length is unknown until decoded)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout, stream.format = "mono", "s16"
        total, step = round(seconds * rate), rate
        for start in range(0, total, step):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, min(step, total - start)), np.int16),
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    if claim_samples is not None:
        data = bytearray(path.read_bytes())
        assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
        at = 8 + 10  # 20 bits rate, 3 channels, 5 bits per sample, 36 bits total samples
        packed = int.from_bytes(data[at:at + 8], "big")
        packed = (packed & ~((1 << 36) - 1)) | claim_samples
        data[at:at + 8] = packed.to_bytes(8, "big")
        path.write_bytes(bytes(data))
    return path


def playlist(path: Path, target: Path) -> Path:
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
                    f"file://{target.resolve()}\n#EXT-X-ENDLIST\n")
    return path


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """The growth of a process's peak RSS (this one's, or ``pid``'s) over a ``with`` block,
    in bytes: ``/proc/<pid>/clear_refs`` resets the high-water mark, ``VmHWM`` reads it."""

    def __init__(self, pid: int | str = "self"):
        self.proc = Path("/proc") / str(pid)

    def __enter__(self) -> PeakRss:
        (self.proc / "clear_refs").write_text("5")  # the high-water mark := current RSS
        self.start = self._hwm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = self._hwm()
        self.growth = self.peak - self.start

    def _hwm(self) -> int:
        for line in (self.proc / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")
