"""Writing H.264 + audio mp4 files: the one encoder of synthetic clips and dubbed videos.

Frames are converted to YUV 4:2:0 with OpenCV's BT.601 conversion (faster than swscale's
default, and it round-trips colours more exactly through a decoder's yuv->rgb); after each
video frame the audio up to that frame's end is muxed, so players and streaming readers see
an ordinary interleaved file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

AudioCodec = Literal["aac", "alac"]
_SAMPLE_FORMATS = {"aac": "fltp", "alac": "s16p"}


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray,
    fps: int,
    sample_rate: int,
    *,
    x264_options: dict[str, str],
    audio_codec: AudioCodec = "aac",
    audio_options: dict[str, str] | None = None,
    channel_order: Literal["rgb", "bgr"] = "rgb",
    bitexact: bool = False,
    on_frame: Callable[[], None] | None = None,
) -> int:
    """Encode (H, W, 3) uint8 ``frames`` and mono float ``audio`` in [-1, 1] into ``path``;
    returns the number of frames. Odd sizes lose their last row/column (4:2:0 needs even);
    ``bitexact`` drops encoder version strings so the same input gives the same bytes."""
    to_yuv = cv2.COLOR_RGB2YUV_I420 if channel_order == "rgb" else cv2.COLOR_BGR2YUV_I420
    sample_format = _SAMPLE_FORMATS[audio_codec]
    options = {"fflags": "+bitexact"} if bitexact else {}
    count = written = 0
    with av.open(str(path), "w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=fps, options=x264_options)
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        sound = container.add_stream(audio_codec, rate=sample_rate, options=audio_options or {})
        sound.layout = "mono"
        for image in frames:
            height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
            if count == 0:
                video.width, video.height = width, height
            yuv = cv2.cvtColor(np.ascontiguousarray(image[:height, :width]), to_yuv)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = count
            container.mux(video.encode(frame))
            count += 1
            until = min(len(audio), round(count * sample_rate / fps))
            if until > written:
                container.mux(sound.encode(
                    _audio_frame(audio[written:until], written, sample_rate, sample_format)))
                written = until
            if on_frame is not None:
                on_frame()
        if written < len(audio):
            container.mux(sound.encode(
                _audio_frame(audio[written:], written, sample_rate, sample_format)))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    return count


def _audio_frame(chunk: np.ndarray, pts: int, sample_rate: int, fmt: str) -> av.AudioFrame:
    if fmt == "fltp":
        data = np.asarray(chunk, dtype=np.float32)
    else:
        data = np.round(np.clip(chunk, -1.0, 1.0) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[None, :]), format=fmt,
                                       layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame
