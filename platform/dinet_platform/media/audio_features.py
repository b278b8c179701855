"""Audio features with exactly one vector per video frame: log-mel (default) or DeepSpeech.

Log-mel is computed here in plain PyTorch (Hann-windowed STFT + an HTK mel filterbank), so it
needs no pretrained model and works for any language (the original DINet's DeepSpeech features
are English-only and need a TensorFlow model nobody can download here).

Alignment: with ``hop = sample_rate / fps`` samples, feature ``i`` is the spectrum of a window of
``win = 2 * hop`` samples (80 ms at 25 fps) centred on the *middle* of video frame ``i``, i.e. on
sample ``(i + 0.5) * hop``. The audio is zero-padded or cut to ``num_frames * hop`` first, so
there are exactly ``num_frames`` vectors. Serving computes features with the same function, so
training and inference see the same numbers.

Values are ``(log(mel_power + 1e-5) - LOGMEL_OFFSET) / LOGMEL_SCALE``: a fixed affine map (not a
per-clip normalisation, which a live stream could not compute) that puts speech roughly in
[-2, 2].

Silence: ``mel_power`` never goes below the mel spectrum of white noise at
:data:`SILENCE_FLOOR_STD` (half the faintest noise floor of the data models learn from). Every
recording has a noise floor; digital silence (a muted microphone, padding, a stream's pauses)
would otherwise give features far outside anything trained on, and the base model opened the
mouth wide on them (6-14 px at mouth 64, against 1.1-1.3 px at rest in the data). At the
floor it rests as on the data's own pauses; audio above it (speech, and the data's noise
floor but for rare dips) is unchanged.

DeepSpeech: a user who has DINet-style DeepSpeech features puts them next to the video as
``<name>_deepspeech.npy``, shape ``(num_frames, 29)`` at the video frame rate (what DINet's
``compute_audio_feature`` writes), and sets ``data.audio_features: deepspeech``. Up to
:data:`DEEPSPEECH_SLACK` frames of length mismatch are trimmed or edge-padded; more is an error.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

LOGMEL_OFFSET = -4.0
LOGMEL_SCALE = 4.0
SILENCE_FLOOR_STD = 0.00075
"""Audio quieter than white noise of this standard deviation reads as that noise (above)."""
DEEPSPEECH_DIM = 29
DEEPSPEECH_SLACK = 2
DEEPSPEECH_SUFFIX = "_deepspeech.npy"


class AudioFeatureError(Exception):
    """Features that cannot be computed or do not fit the video; message is user-facing."""


def hop_length(sample_rate: int, fps: int) -> int:
    hop = sample_rate / fps
    if abs(hop - round(hop)) > 1e-9:
        raise AudioFeatureError(
            f"sample_rate {sample_rate} is not a multiple of fps {fps}: features cannot align "
            "one-to-one with frames"
        )
    return round(hop)


def speech_frames(num_samples: int, hop: int) -> int:
    """Video frames of a speech of ``num_samples`` (``hop`` samples per frame): the nearest
    whole count, halves up (so a piece cut at a frame boundary counts as the whole does), and
    at least one."""
    return max(1, (num_samples + hop // 2) // hop)


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK mel filters, each with unit peak."""
    f_max = sample_rate / 2
    bins = torch.linspace(0, f_max, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(
        _hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
        _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges = _mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


def logmel_features(
    samples: np.ndarray | torch.Tensor,
    num_frames: int,
    *,
    sample_rate: int = 16000,
    fps: int = 25,
    n_mels: int = 29,
) -> np.ndarray:
    """(num_frames, n_mels) float32 log-mel features, one per video frame (see module doc)."""
    if num_frames <= 0:
        raise AudioFeatureError("need at least one frame")
    hop = hop_length(sample_rate, fps)
    win = 2 * hop
    audio = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1)
    total = num_frames * hop
    audio = (
        audio[:total]
        if audio.numel() >= total
        else torch.nn.functional.pad(audio, (0, total - audio.numel()))
    )
    # Window i spans [(i + 0.5) * hop - win / 2, (i + 0.5) * hop + win / 2): pad so that
    # frames[i] starts at index i * hop of the padded signal.
    left = logmel_lead(hop)
    padded = torch.nn.functional.pad(audio, (left, win - left))
    frames = padded.unfold(0, win, hop)[:num_frames]
    return logmel_of_windows(frames, sample_rate=sample_rate, n_mels=n_mels)


def logmel_lead(hop: int) -> int:
    """Samples frame ``i``'s window starts before ``i * hop`` (its span is
    ``[i * hop - lead, i * hop - lead + 2 * hop)``)."""
    return hop - hop // 2


@lru_cache(maxsize=16)
def silence_floor(n_mels: int, n_fft: int, sample_rate: int, win: int) -> torch.Tensor:
    """(n_mels,) expected mel power of white noise at :data:`SILENCE_FLOOR_STD` through a
    Hann window of ``win`` samples (per FFT bin: variance x sum of the squared window)."""
    window = torch.hann_window(win, periodic=True, dtype=torch.float64)
    bins = mel_filterbank(n_mels, n_fft, sample_rate).double().sum(1)
    return (SILENCE_FLOOR_STD**2 * (window**2).sum() * bins).float()


def logmel_of_windows(windows: torch.Tensor, *, sample_rate: int, n_mels: int) -> np.ndarray:
    """Log-mel features ``(n, n_mels)`` of ``n`` audio windows ``(n, 2 * hop)``: one frame's
    feature each (what :func:`logmel_features` computes for every frame; a stream computes
    them a few frames at a time)."""
    win = windows.shape[-1]
    n_fft = 1 << math.ceil(math.log2(win))
    window = torch.hann_window(win, periodic=True, dtype=torch.float32)
    spectrum = torch.fft.rfft(windows * window, n=n_fft)
    power = spectrum.real**2 + spectrum.imag**2
    mel = torch.maximum(power @ mel_filterbank(n_mels, n_fft, sample_rate).T,
                        silence_floor(n_mels, n_fft, sample_rate, win))
    features = (torch.log(mel + 1e-5) - LOGMEL_OFFSET) / LOGMEL_SCALE
    return features.numpy().astype(np.float32)


def deepspeech_path(video: Path) -> Path:
    """Where DeepSpeech features for ``video`` are looked for: ``<name>_deepspeech.npy``."""
    return video.with_name(video.stem + DEEPSPEECH_SUFFIX)


def load_deepspeech(path: Path, num_frames: int, against: str = "video") -> np.ndarray:
    """(num_frames, 29) DeepSpeech features from a user's ``.npy`` file, length-checked
    against ``num_frames`` frames of ``against``."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AudioFeatureError(f"unreadable DeepSpeech features {path.name}: {exc}") from exc
    array = np.squeeze(np.asarray(array, dtype=np.float32))
    if array.ndim != 2 or array.shape[1] != DEEPSPEECH_DIM:
        raise AudioFeatureError(
            f"DeepSpeech features {path.name} must have shape (frames, 29), got {array.shape}"
        )
    if abs(len(array) - num_frames) > DEEPSPEECH_SLACK:
        raise AudioFeatureError(
            f"DeepSpeech features {path.name} have {len(array)} frames, {against} has "
            f"{num_frames} (one feature row per video frame, at most {DEEPSPEECH_SLACK} apart)"
        )
    if len(array) >= num_frames:
        return array[:num_frames]
    return np.concatenate([array, np.repeat(array[-1:], num_frames - len(array), axis=0)])


def audio_windows(features: np.ndarray, width: int) -> np.ndarray:
    """``(N, dim, width)``: :func:`audio_window` of every frame of ``features``."""
    return np.stack([audio_window(features, i, width) for i in range(len(features))])


def audio_window(features: np.ndarray, centre: int, width: int) -> np.ndarray:
    """(dim, width) features centred on frame ``centre``, edge-padded at the clip ends.

    For even widths the window reaches one frame further into the past than the future.
    """
    start = centre - width // 2
    index = np.clip(np.arange(start, start + width), 0, len(features) - 1)
    return np.ascontiguousarray(features[index].T)
