"""Real speech in synthetic clips: espeak-ng sentences, mouths timed by its phoneme events."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from dinet_platform.media.io import resample_audio
from dinet_platform.synth import speech as ss
from dinet_platform.synth.audio import PHONES
from dinet_platform.synth.videos import SynthClip, synthesize_dataset, synthesize_video

pytestmark = pytest.mark.unit

FPS, RATE = 25, 16000


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SynthClip:
    return synthesize_video(
        tmp_path_factory.mktemp("tts"), "talk", 8.0, seed=21, size=128, speech="tts"
    )


def audio_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


@pytest.mark.slow
def test_the_engine_reports_phonemes_inside_its_audio() -> None:
    voice = ss.SpeechVoice("en-us", "m1", 50, 50, 160)
    utterance, again = ss.speak_fresh(["Papa may buy a blue boat."] * 2, voice)
    assert utterance.sample_rate == 22050 and len(utterance.audio) > 0.8 * 22050
    starts = [sample for sample, _ in utterance.phonemes]
    assert starts == sorted(starts) and starts[-1] <= len(utterance.audio)
    phones = [ss.platform_phone(name) for _, name in utterance.phonemes]
    assert phones.count("p") >= 4 and {"a", "u", "o"} <= set(phones)  # p p b b, a, u, o
    # why each clip gets a fresh engine: the same sentence again comes out different
    assert [name for _, name in again.phonemes] == [name for _, name in utterance.phonemes]
    assert not np.array_equal(again.audio, utterance.audio)


@pytest.mark.parametrize(
    ("mnemonic", "phone"),
    [("'A:", "a"), (",aI", "a"), ("@", "e"), ("i:", "i"), ("'oU", "o"), ("u:", "u"),
     ("b", "p"), ("m", "m"), ("v", "f"), ("T", "s"), ("tS", "sh"), ("l", "l"), ("k", "h"),
     ("_:", "sil"), ("w", "u")],
)
def test_espeak_phonemes_map_to_platform_phones(mnemonic: str, phone: str) -> None:
    assert ss.platform_phone(mnemonic) == phone and phone in PHONES


@pytest.mark.slow
def test_mouth_rests_in_the_engines_pauses_and_opens_on_open_vowels(clip: SynthClip) -> None:
    truth = json.loads(clip.truth.read_text())
    opening = np.array([f["opening"] for f in truth["frames"]])
    centres = (np.arange(clip.num_frames) + 0.5) / FPS

    def frames_inside(phone: str, min_seconds: float, margin: float) -> np.ndarray:
        inside = np.zeros(clip.num_frames, bool)
        for p in truth["phones"]:
            if p["phone"] == phone and p["end"] - p["start"] >= min_seconds:
                inside |= (centres >= p["start"] + margin) & (centres < p["end"] - margin)
        return inside

    pauses = frames_inside("sil", 0.2, 0.1)  # farther than the coarticulation reach
    open_vowels = frames_inside("a", 0.08, 0.0)
    assert pauses.sum() >= 5 and open_vowels.sum() >= 3
    assert opening[pauses].max() < 0.02
    assert np.median(opening[open_vowels]) > 0.3


@pytest.mark.slow
def test_mouth_opening_follows_the_speech_energy_without_delay(clip: SynthClip) -> None:
    truth = json.loads(clip.truth.read_text())
    opening = np.array([f["mouth_open_px"] for f in truth["frames"]])
    samples = audio_of(clip.video)[: clip.num_frames * 640]
    energy = np.sqrt(np.mean(samples.reshape(-1, 640) ** 2, axis=1))
    lags = range(-3, 4)
    corr = [np.corrcoef(np.roll(energy, lag)[3:-3], opening[3:-3])[0, 1] for lag in lags]
    assert max(corr) > 0.5
    assert abs(lags[int(np.argmax(corr))]) <= 1  # phoneme events line up with the audio
    quiet = energy < 0.1 * energy.max()
    assert opening[quiet].mean() < 0.5 * opening[~quiet].mean()
    assert truth["voice"]["engine"] == "espeak-ng"


@pytest.mark.slow
def test_voice_pools_share_no_accent_and_no_variant(tmp_path: Path) -> None:
    (train_accents, train_variants), (held_accents, held_variants) = (
        ss.VOICE_POOLS["train"], ss.VOICE_POOLS["held-out"])
    assert not set(train_accents) & set(held_accents)
    assert not set(train_variants) & set(held_variants)
    clips = synthesize_dataset(tmp_path, 3, 1.5, seed=2, size=64, speech="tts",
                               voice_pool="held-out")
    for clip in clips:
        accent, variant = json.loads(clip.truth.read_text())["voice"]["name"].split("+")
        assert accent in held_accents and variant in held_variants
    for accents, variants in ss.VOICE_POOLS.values():  # every voice exists in the engine
        for name in {(a, variants[0]) for a in accents} | {(accents[0], v) for v in variants}:
            ss.speak_fresh(["Hello."], ss.SpeechVoice(*name, 50, 50, 160))
    with pytest.raises(RuntimeError, match="no voice 'en-xx"):
        ss.speak_fresh(["Hello."], ss.SpeechVoice("en-xx", "m1", 50, 50, 160))


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synthesize_video(tmp_path / "a", "x", 2.0, seed=4, size=64, speech="tts")
    b = synthesize_video(tmp_path / "b", "x", 2.0, seed=4, size=64, speech="tts")
    for path_a, path_b in zip(a.paths, b.paths, strict=True):
        assert path_a.read_bytes() == path_b.read_bytes(), path_a.name


def test_resampling_keeps_a_tone_and_the_duration() -> None:
    t = np.arange(22050) / 22050
    out = resample_audio(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22050, RATE)
    assert abs(len(out) - RATE) <= 32
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    peak_hz = np.argmax(spectrum) * RATE / 14000
    assert abs(peak_hz - 440) < 3
