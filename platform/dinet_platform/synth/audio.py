"""Speech-like audio and the mouth shapes it implies, for synthetic talking faces.

The synthetic data has to be *learnable*: a lip-sync model trained on it must be able to predict
the mouth from the audio alone. So both are derived from one hidden phone sequence:

* every phone has an acoustic signature (vowels: harmonics of a moving f0 shaped by three
  formant resonances; fricatives: band-limited noise; closures and pauses: silence or a hum),
  so the phone is identifiable from a ~50 ms window of audio;
* every phone maps to a viseme (opening, width, rounding, teeth and tongue visibility), and the
  per-frame mouth is a dominance-weighted average of viseme targets within ±100 ms of the frame
  (Cohen–Massaro coarticulation), so the mouth at frame ``t`` is a deterministic function of the
  audio around ``t`` and of nothing else.

Nothing here draws or writes files; see :mod:`dinet_platform.synth.videos`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PhoneKind = Literal["silence", "closure", "nasal", "fricative", "vowel"]

COARTICULATION_MS = 100
"""Half-width of the window of phones that shape the mouth at one instant."""
COARTICULATION_SIGMA_MS = 35.0


@dataclass(frozen=True)
class Viseme:
    """Mouth targets of one viseme, as fractions of the identity's neutral mouth width."""

    id: int
    name: str
    opening: float
    width: float
    rounding: float
    teeth: float
    tongue: float


@dataclass(frozen=True)
class Phone:
    """Acoustic recipe of one phone and the viseme it is articulated with."""

    symbol: str
    kind: PhoneKind
    viseme: int
    duration_ms: tuple[int, int]
    gain: float
    dominance: float
    """How strongly this phone's mouth target wins over its neighbours (bilabials: must close)."""
    formants: tuple[float, float, float] | None = None
    noise_band: tuple[float, float] | None = None


VISEMES: tuple[Viseme, ...] = (
    Viseme(0, "rest", 0.00, 1.00, 0.0, 0.0, 0.0),
    Viseme(1, "PBM", 0.00, 0.95, 0.1, 0.0, 0.0),
    Viseme(2, "FV", 0.07, 1.00, 0.0, 0.9, 0.0),
    Viseme(3, "S", 0.10, 1.08, 0.0, 1.0, 0.0),
    Viseme(4, "SH", 0.15, 0.86, 0.6, 0.8, 0.0),
    Viseme(5, "L", 0.26, 1.00, 0.0, 0.6, 1.0),
    Viseme(6, "AA", 0.50, 1.00, 0.0, 0.5, 0.6),
    Viseme(7, "EH", 0.32, 1.10, 0.0, 0.8, 0.3),
    Viseme(8, "IY", 0.14, 1.15, 0.0, 1.0, 0.0),
    Viseme(9, "OW", 0.36, 0.84, 0.8, 0.2, 0.2),
    Viseme(10, "UW", 0.13, 0.80, 1.0, 0.0, 0.0),
)

PHONES: dict[str, Phone] = {
    phone.symbol: phone
    for phone in (
        Phone("sil", "silence", 0, (150, 450), 0.0, 0.6),
        Phone("p", "closure", 1, (60, 110), 0.0, 3.0, noise_band=(400.0, 6000.0)),
        Phone("m", "nasal", 1, (60, 120), 0.30, 3.0, formants=(250.0, 1100.0, 2300.0)),
        Phone("f", "fricative", 2, (70, 130), 0.12, 2.0, noise_band=(1500.0, 7500.0)),
        Phone("s", "fricative", 3, (70, 140), 0.25, 1.5, noise_band=(4000.0, 7800.0)),
        Phone("sh", "fricative", 4, (70, 140), 0.30, 1.5, noise_band=(2000.0, 4500.0)),
        Phone("l", "nasal", 5, (60, 110), 0.50, 1.0, formants=(350.0, 1100.0, 2700.0)),
        # velars, glottals and glides (spoken speech only): the neighbours shape the mouth
        Phone("h", "fricative", 7, (50, 100), 0.10, 0.3, noise_band=(500.0, 6000.0)),
        Phone("a", "vowel", 6, (90, 200), 1.00, 1.0, formants=(750.0, 1250.0, 2600.0)),
        Phone("e", "vowel", 7, (80, 180), 0.85, 1.0, formants=(500.0, 1850.0, 2600.0)),
        Phone("i", "vowel", 8, (80, 170), 0.70, 1.0, formants=(290.0, 2300.0, 3000.0)),
        Phone("o", "vowel", 9, (90, 200), 0.90, 1.0, formants=(480.0, 850.0, 2500.0)),
        Phone("u", "vowel", 10, (80, 180), 0.75, 1.0, formants=(320.0, 780.0, 2300.0)),
    )
}
CONSONANTS = ("p", "m", "f", "s", "sh", "l")
VOWELS = ("a", "e", "i", "o", "u")
BURST_MS = 12
"""A released ``p`` ends in a short broadband burst, so closures are audible, not just gaps."""


@dataclass(frozen=True)
class Segment:
    """One phone occurrence: ``[start, end)`` in seconds; ``stress`` scales loudness and opening."""

    phone: str
    start: float
    end: float
    stress: float = 1.0


@dataclass(frozen=True)
class Voice:
    """Speaker traits that change the sound but not the phone -> mouth mapping."""

    f0: float
    formant_scale: float
    intonation_phase: float


@dataclass(frozen=True)
class MouthTrack:
    """Per-frame articulation: viseme-space parameters and the viseme at each frame's centre."""

    opening: np.ndarray
    width: np.ndarray
    rounding: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray
    viseme: np.ndarray

    def __len__(self) -> int:
        return len(self.opening)


def random_voice(rng: np.random.Generator) -> Voice:
    """A speaker: pitch from low male to child-like, vocal-tract length within ±10 %."""
    return Voice(
        f0=float(rng.uniform(95.0, 230.0)),
        formant_scale=float(rng.uniform(0.92, 1.12)),
        intonation_phase=float(rng.uniform(0.0, 2 * np.pi)),
    )


def phone_sequence(rng: np.random.Generator, seconds: float) -> list[Segment]:
    """Random "words" of CV / CVC syllables separated by pauses, covering ``seconds``.

    Starts and ends with silence so every clip has closed-mouth frames to compare against.
    """
    segments: list[Segment] = []
    t = 0.0

    def add(symbol: str, stress: float = 1.0, duration_ms: float | None = None) -> None:
        nonlocal t
        low, high = PHONES[symbol].duration_ms
        ms = duration_ms if duration_ms is not None else rng.uniform(low, high)
        segments.append(Segment(symbol, t, t + ms / 1000.0, stress))
        t += ms / 1000.0

    add("sil", duration_ms=rng.uniform(200, 400))
    while t < seconds:
        for _ in range(int(rng.integers(1, 4))):  # syllables per word
            add(CONSONANTS[int(rng.integers(len(CONSONANTS)))])
            add(VOWELS[int(rng.integers(len(VOWELS)))], stress=float(rng.uniform(0.7, 1.0)))
            if rng.random() < 0.3:
                add(CONSONANTS[int(rng.integers(len(CONSONANTS)))])
        if rng.random() < 0.6:
            add("sil")
    return segments


def segment_index(segments: list[Segment], times: np.ndarray) -> np.ndarray:
    """Index of the segment active at each time (clamped to the first/last segment)."""
    starts = np.array([seg.start for seg in segments])
    return np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(segments) - 1)


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average (edge-padded), used to avoid clicks at phone boundaries."""
    if width <= 1:
        return values
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    csum = np.cumsum(np.concatenate([[0.0], padded]))
    return (csum[width:] - csum[:-width]) / width


def _band_noise(spectrum: np.ndarray, band: tuple[float, float], sr: int) -> np.ndarray:
    """A white-noise spectrum shaped to a band with soft edges (FFT filter), unit RMS."""
    n = 2 * (len(spectrum) - 1)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    low, high = band
    edge = 0.15 * (high - low)
    rise = np.clip((freqs - (low - edge)) / edge, 0.0, 1.0)
    fall = np.clip(((high + edge) - freqs) / edge, 0.0, 1.0)
    noise = np.fft.irfft(spectrum * np.minimum(rise, fall), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _control_tracks(
    segments: list[Segment], times: np.ndarray, voice: Voice, sr: int
) -> dict[str, np.ndarray]:
    """Per-sample loudness of the voiced source and formant frequencies, smoothed over ~20 ms."""
    index = segment_index(segments, times)
    voiced_gain = np.zeros(len(segments))
    formants = np.zeros((len(segments), 3))
    last = np.array(PHONES["a"].formants)
    for i, seg in enumerate(segments):
        phone = PHONES[seg.phone]
        if phone.formants is not None:
            voiced_gain[i] = phone.gain * seg.stress
            last = np.array(phone.formants) * voice.formant_scale
        formants[i] = last  # formants hold through unvoiced phones: no jumps while silent
    tracks = {"voiced": _smooth(voiced_gain[index], int(0.012 * sr))}
    for k in range(3):
        tracks[f"F{k + 1}"] = _smooth(formants[index, k], int(0.025 * sr))
    return tracks


def _pulse_train(phase: np.ndarray, n_harm: int) -> np.ndarray:
    """Band-limited glottal source: ``sum_{k<=n_harm} cos(k * phase)`` in closed form (the
    Dirichlet kernel), so no harmonic reaches Nyquist and no per-harmonic loop is needed."""
    half = np.sin(phase / 2)
    safe = np.abs(half) > 1e-6
    ratio = np.sin((n_harm + 0.5) * phase) / (2 * np.where(safe, half, 1.0)) - 0.5
    return np.where(safe, ratio, float(n_harm))


def _formant_envelope(freqs: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Vocal-tract gain at ``freqs`` for each row of formant ``centres`` (frames, 3): three
    resonances over a -3 dB/octave source tilt, plus a floor so harmonics never vanish."""
    envelope = np.full((len(centres), len(freqs)), 0.01)
    for k, (peak, bandwidth) in enumerate(((1.0, 90.0), (0.55, 110.0), (0.25, 160.0))):
        envelope += peak / (1.0 + ((freqs[None, :] - centres[:, k : k + 1]) / bandwidth) ** 2)
    return envelope / np.sqrt(np.maximum(freqs, 100.0) / 100.0)[None, :]


def _voiced_source(
    tracks: dict[str, np.ndarray], times: np.ndarray, voice: Voice, sr: int
) -> np.ndarray:
    """A gliding-f0 pulse train filtered by the moving formants (source-filter model).

    Filtering is overlap-add convolution over 25 ms Hann frames with the envelope of each
    frame's formants; a 10 s clip takes tens of milliseconds.
    """
    wobble = 0.10 * np.sin(2 * np.pi * 0.35 * times + voice.intonation_phase)
    wobble += 0.04 * np.sin(2 * np.pi * 1.7 * times + 2 * voice.intonation_phase)
    f0 = voice.f0 * (1.0 + wobble)
    phase = np.mod(2 * np.pi * np.cumsum(f0) / sr, 2 * np.pi)
    source = _pulse_train(phase, int(0.45 * sr / (voice.f0 * 1.15)))
    win, hop, nfft, lead = int(0.025 * sr), int(0.0125 * sr), 1024, 256
    n = len(times)
    padded = np.pad(source, (win, win + nfft))
    starts = np.arange(0, n + win, hop)
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[starts]
    frames = frames * np.hanning(win + 1)[:-1][None, :]  # periodic Hann: sums to 1 at 50 %
    centres = np.stack([tracks[f"F{k + 1}"] for k in range(3)], axis=1)
    centre_idx = np.clip(starts - win + win // 2, 0, n - 1)
    spectrum = np.fft.rfft(frames, nfft) * _formant_envelope(
        np.fft.rfftfreq(nfft, 1.0 / sr), centres[centre_idx]
    )
    filtered = np.roll(np.fft.irfft(spectrum, nfft), lead, axis=1)  # zero-phase: centre it
    out = np.zeros(len(padded) + lead)
    for start, frame in zip(starts, filtered, strict=True):
        out[start : start + nfft] += frame
    out = out[win + lead : win + lead + n]
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _noise_components(
    rng: np.random.Generator, segments: list[Segment], times: np.ndarray, sr: int
) -> np.ndarray:
    """Fricative hiss and closure bursts: band noise gated by the phones that use each band."""
    index = segment_index(segments, times)
    out = np.zeros(len(times))
    # one white noise for all bands: they are never audible at the same instant
    spectrum = np.fft.rfft(rng.standard_normal(len(times) + len(times) % 2))
    for symbol in sorted({seg.phone for seg in segments}):
        phone = PHONES[symbol]
        if phone.noise_band is None:
            continue
        gate = np.zeros(len(segments))
        for i, seg in enumerate(segments):
            if seg.phone == symbol:
                gate[i] = 1.0
        gate_t = gate[index]
        gain = phone.gain
        if phone.kind == "closure":  # silent hold, then the release burst at its very end
            ends = np.array([seg.end for seg in segments])[index]
            gate_t = gate_t * (times >= ends - BURST_MS / 1000.0)
            gain = 0.35
        noise = _band_noise(spectrum, phone.noise_band, sr)[: len(times)]
        out += gain * _smooth(gate_t, int(0.006 * sr)) * noise
    return out


def synthesize_audio(
    segments: list[Segment],
    voice: Voice,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mono float32 speech-like audio for ``segments``, peak-normalised to 0.89 (-1 dBFS).

    A faint noise floor keeps pauses from being digital silence, as in real recordings.
    """
    times = np.arange(num_samples) / sample_rate
    tracks = _control_tracks(segments, times, voice, sample_rate)
    audio = tracks["voiced"] * _voiced_source(tracks, times, voice, sample_rate)
    audio += _noise_components(rng, segments, times, sample_rate)
    audio += 0.002 * rng.standard_normal(num_samples)
    peak = float(np.max(np.abs(audio))) or 1.0
    return (0.89 * audio / peak).astype(np.float32)


def mouth_tracks(segments: list[Segment], num_frames: int, fps: float) -> MouthTrack:
    """Coarticulated mouth parameters at each frame's centre time ``(i + 0.5) / fps``.

    Targets are set per millisecond from the phone's viseme and blended with a Gaussian
    (sigma 35 ms, cut at ±100 ms) weighted by each phone's dominance, so bilabials still close
    between vowels while quick phones are undershot, as in real speech.
    """
    ms = np.arange(int(np.ceil(num_frames / fps * 1000)) + 1) / 1000.0
    index = segment_index(segments, ms)
    names = ("opening", "width", "rounding", "teeth", "tongue")
    targets = np.zeros((len(segments), len(names)))
    dominance = np.zeros(len(segments))
    for i, seg in enumerate(segments):
        phone = PHONES[seg.phone]
        viseme = VISEMES[phone.viseme]
        targets[i] = [getattr(viseme, name) for name in names]
        targets[i, 0] *= 0.7 + 0.3 * (seg.stress - 0.7) / 0.3 if phone.kind == "vowel" else 1.0
        dominance[i] = phone.dominance
    offsets = np.arange(-COARTICULATION_MS, COARTICULATION_MS + 1)
    kernel = np.exp(-0.5 * (offsets / COARTICULATION_SIGMA_MS) ** 2)
    weight = dominance[index]
    denominator = np.convolve(np.pad(weight, COARTICULATION_MS, mode="edge"), kernel, "valid")
    frame_ms = np.minimum(np.round((np.arange(num_frames) + 0.5) / fps * 1000), len(ms) - 1)
    frame_ms = frame_ms.astype(np.int64)
    values = {}
    for k, name in enumerate(names):
        weighted = np.pad(weight * targets[index, k], COARTICULATION_MS, mode="edge")
        values[name] = (np.convolve(weighted, kernel, "valid") / denominator)[frame_ms]
    visemes = np.array([PHONES[seg.phone].viseme for seg in segments])[index[frame_ms]]
    return MouthTrack(viseme=visemes.astype(np.int64), **values)
