"""Offline dubbing without Ray: a face video + speech -> a lip-synced H.264 mp4 with the speech.

:func:`dub_video` is the one dubbing function (``dinet dub`` and Serve's ``/v1/dub`` call it):

1. audio features with the function and settings training used (log-mel from the model's
   ``data`` config, one vector per output frame; DeepSpeech -- which nothing here can compute
   -- from ``audio_features`` or ``<audio>_deepspeech.npy`` when the model was trained on
   those, refused with how to provide them when absent);
2. the avatar (:class:`~dinet_platform.runtime.avatar.Avatar`) looped forward/backward or
   trimmed so the output has exactly ``round(audio seconds x fps)`` frames;
3. reference features encoded once, then frames through the engine in batches;
4. every generated crop blended into its full frame (feathered mouth box, :mod:`.blend`);
5. encoded to H.264 (yuv420p) with the speech muxed as AAC at its own sample rate.

Everything that can be wrong with the inputs is checked before the output is opened, and the
mp4 is written under a temporary name and renamed into place at the end: a failed or
interrupted run never leaves a partial file at ``out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dinet_platform.audio_contract import (
    AudioContractError,
    AudioFeatureSpec,
    check_feature_file,
    check_features,
    missing_features,
    npy_shape,
)
from dinet_platform.config.schema import DataConfig
from dinet_platform.files import atomic_path
from dinet_platform.media.audio_features import (
    DEEPSPEECH_DIM,
    AudioFeatureError,
    audio_window,
    deepspeech_path,
    load_deepspeech,
    logmel_features,
    speech_frames,
)
from dinet_platform.media.io import probe_audio, read_audio
from dinet_platform.media.mp4 import write_mp4
from dinet_platform.media.opening import MediaError, MediaLimitError, MediaLimits
from dinet_platform.runtime.avatar import Avatar, AvatarError, AvatarLimitError
from dinet_platform.runtime.engine import AvatarFeatures, InferenceEngine, ModelInfo

DEFAULT_BATCH_SIZE = 8
DEFAULT_CRF = 18
X264_OPTIONS = {"preset": "veryfast"}
AAC_OPTIONS = {"b": "128k"}


class DubError(ValueError):
    """Bad dubbing input; the message names the file or value and what is wrong with it."""


class DubLimitError(DubError):
    """The speech or video is over a :class:`~dinet_platform.media.io.MediaLimits` bound (an
    API answers 413); ``limit`` names the bound."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Speech:
    """The driving audio: samples for muxing and one feature vector per output frame."""

    samples: np.ndarray
    """Mono float32 at ``sample_rate`` (the file's own rate)."""
    sample_rate: int
    features: np.ndarray
    """(num_frames, D) float32."""
    fps: int

    @property
    def num_frames(self) -> int:
        return len(self.features)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class DubResult:
    out: Path
    frames: int
    fps: int
    audio_seconds: float
    avatar_frames: int
    batch_size: int
    seconds: float
    """Wall time of generation + encoding."""

    @property
    def video_seconds(self) -> float:
        return self.frames / self.fps

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else float("inf")
        return (f"wrote {self.out}: {self.frames} frames at {self.fps} fps "
                f"({self.video_seconds:.2f} s video, {self.audio_seconds:.2f} s audio) from "
                f"{self.avatar_frames} avatar frames in {self.seconds:.1f} s ({rate:.1f} frames/s)")


def _native_rate(path: Path, limits: MediaLimits | None) -> int:
    try:
        return probe_audio(path, limits=limits).sample_rate or 16000
    except MediaError:
        return 16000  # read_audio (called first) reports what is wrong with the file


def load_speech(audio: str | Path, data: DataConfig, features: str | Path | None = None, *,
                model: str = "the model", limits: MediaLimits | None = None) -> Speech:
    """Read ``audio`` (any file with an audio stream) and the model's features for it.

    Log-mel is computed from the audio. DeepSpeech features cannot be computed here: they
    come from ``features`` (a ``.npy`` of shape ``(frames, 29)``), else from the sidecar
    ``<audio>_deepspeech.npy``; without either the model is refused (with how to provide
    them), as is ``features`` for a model that computes its own (see
    :mod:`dinet_platform.audio_contract`).

    ``limits`` (for uploads): the audio is opened only in an allowlisted container and its
    duration bounded by ``max_audio_seconds``, from the header before decoding and while
    decoding (:class:`DubLimitError`)."""
    audio = Path(audio)
    needed = AudioFeatureSpec.from_data(data)
    if needed.kind == "deepspeech":
        sidecar = deepspeech_path(audio)
        features = features if features is not None else (sidecar if sidecar.is_file() else None)
        if features is None:
            raise DubError(missing_features(needed, model=model, loader="dub",
                                            speech_sidecar=sidecar.name))
        try:
            check_feature_file(*npy_shape(Path(features), f"features {Path(features).name}"),
                               needed, f"features {Path(features).name}")
        except AudioContractError as exc:
            raise DubError(str(exc)) from None
    elif features is not None:
        try:
            check_features(needed, replace(needed, kind="deepspeech", dim=DEEPSPEECH_DIM,
                                           sample_rate=None),
                           model=model, given_as="--audio-features gives", loader="dub")
        except AudioContractError as exc:
            raise DubError(str(exc)) from None
        raise DubError(f"{model} computes its log-mel features from the audio: "
                       "leave out --audio-features")
    try:
        model_rate = read_audio(audio, data.sample_rate, limits=limits)
        rate = _native_rate(audio, limits)
        samples = (model_rate if rate == data.sample_rate
                   else read_audio(audio, rate, limits=limits))
        # frames = samples * fps / rate, rounded as every speech is (halves up)
        num_frames = speech_frames(len(model_rate) * data.fps, data.sample_rate)
        if features is not None:
            values = load_deepspeech(Path(features), num_frames, against="the speech")
        else:
            values = logmel_features(model_rate, num_frames, sample_rate=data.sample_rate,
                                     fps=data.fps, n_mels=data.n_mels)
    except FileNotFoundError as exc:
        raise DubError(f"audio {audio.name}: {exc}") from None
    except AudioFeatureError as exc:
        raise DubError(str(exc) if features is not None else f"audio {audio.name}: {exc}"
                       ) from None
    except MediaLimitError as exc:
        raise DubLimitError(exc.limit, f"audio {audio.name}: {exc}") from None
    except MediaError as exc:
        raise DubError(f"audio {audio.name}: {exc}") from None
    return Speech(samples=samples, sample_rate=rate, features=values, fps=data.fps)


def render_frames(
    engine: InferenceEngine,
    avatar: Avatar,
    speech_features: np.ndarray,
    audio_window_size: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference: AvatarFeatures | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(avatar frame index, full RGB frame)`` for every frame of the speech, generated in
    batches of ``batch_size`` with the avatar's reference features encoded once (or
    ``reference``, e.g. from Serve's avatar cache). ``on_batch(frames_done)`` runs before
    each batch (an exception there stops the rendering)."""
    if batch_size < 1:
        raise DubError(f"batch_size must be >= 1, got {batch_size}")
    reference = reference or engine.encode_reference(avatar.references())
    total = len(speech_features)
    for start in range(0, total, batch_size):
        if on_batch is not None:
            on_batch(start)
        steps = list(range(start, min(total, start + batch_size)))
        indices = [avatar.loop_index(step) for step in steps]
        windows = np.stack([audio_window(speech_features, s, audio_window_size) for s in steps])
        faces = engine.generate(avatar.sources(indices), torch.from_numpy(windows), reference)
        for k, index in enumerate(indices):
            yield index, avatar.paste(index, faces[k])


def dub_video(
    engine: InferenceEngine,
    video: str | Path | Avatar,
    audio: str | Path | Speech,
    out: str | Path,
    *,
    model: ModelInfo,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    landmarks: str | Path | None = None,
    reference: AvatarFeatures | None = None,
    crf: int = DEFAULT_CRF,
    console: Console | None = None,
    audio_features: str | Path | None = None,
    x264_threads: int = 0,
    on_batch: Callable[[int], None] | None = None,
    limits: MediaLimits | None = None,
) -> DubResult:
    """Dub ``video`` (a file, with an optional OpenFace ``landmarks`` CSV, or a prepared
    :class:`Avatar`) with ``audio`` into the mp4 ``out`` (see the module doc). ``model`` is
    the :class:`ModelInfo` that came with ``engine`` from ``load_engine``; ``audio_features``
    the DeepSpeech features of ``audio`` for a model trained on them (see :func:`load_speech`).
    ``x264_threads`` caps the encoder's threads (0: its own choice, about 1.5 per core);
    ``on_batch`` see :func:`render_frames`.

    ``limits`` (for uploads) apply to the speech (:func:`load_speech`) and to a ``video``
    file exactly as to an avatar made from it (:meth:`Avatar.from_video`: one frame cap for
    every path); over one, :class:`DubLimitError`.
    """
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise DubError(f"--out {out}: the output is an H.264 mp4, name it *.mp4")
    if out.is_dir():
        raise DubError(f"--out {out} is a directory")
    if batch_size < 1:
        raise DubError(f"batch_size must be >= 1, got {batch_size}")
    data = model.config.data
    # the speech and its features first: cheap to check, and refused before any video decoding
    speech = audio if isinstance(audio, Speech) else load_speech(
        audio, data, audio_features, model=f"model {model.source}", limits=limits)
    if isinstance(video, Avatar):
        avatar = video
    else:
        if not Path(video).is_file():
            raise DubError(f"video {video}: file not found")
        if landmarks is not None and not Path(landmarks).is_file():
            raise DubError(f"landmarks {landmarks}: file not found")
        try:
            avatar = Avatar.from_video(video, mouth_size=model.mouth_size, data=data,
                                       landmarks=landmarks, limits=limits)
        except AvatarLimitError as exc:
            raise DubLimitError(exc.limit, str(exc)) from None
        except AvatarError as exc:
            raise DubError(str(exc)) from None
    if avatar.mouth_size != model.mouth_size:
        raise DubError(f"avatar is prepared for mouth {avatar.mouth_size}, the model runs at "
                       f"{model.mouth_size}")
    if avatar.fps != data.fps:
        raise DubError(f"avatar is at {avatar.fps} fps, the model's features at {data.fps}")

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = render_frames(engine, avatar, speech.features, data.audio_window,
                           batch_size=batch_size, reference=reference, on_batch=on_batch)
    with atomic_path(out) as tmp, _progress(progress, console) as bar:
        task = bar.add_task("dubbing", total=speech.num_frames)
        write_mp4(tmp, (frame for _, frame in frames), speech.samples, speech.fps,
                  speech.sample_rate, x264_options={**X264_OPTIONS, "crf": str(crf),
                                                    **x264_thread_option(x264_threads)},
                  audio_options=AAC_OPTIONS, on_frame=lambda: bar.advance(task))
    return DubResult(out, speech.num_frames, data.fps, speech.seconds, avatar.num_frames,
                     batch_size, time.perf_counter() - started)


def x264_thread_option(threads: int) -> dict[str, str]:
    return {"threads": str(threads)} if threads > 0 else {}


def _progress(enabled: bool, console: Console | None) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("frames"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )
