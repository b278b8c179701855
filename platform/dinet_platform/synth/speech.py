"""Real speech for synthetic talking faces: espeak-ng sentences with phoneme-timed mouths.

The formant "phones" of :mod:`.audio` are learnable but are not speech: a model that has
only heard them has no reason to open its mouth for a human voice. Here the audio is English
sentences spoken by espeak-ng (the library and its voice data ship inside the
``espeakng-loader`` wheel, so nothing is downloaded), and the mouth follows the engine's own
**phoneme events**: espeak-ng reports each phoneme with the sample at which it starts, so the
phoneme sequence is mapped onto the platform's phones (:data:`ESPEAK_PHONES`) and the mouth is
coarticulated from them exactly as for the formant voices (``audio.mouth_tracks``).

Voices differ by accent, espeak variant (vocal-tract and glottal settings), pitch, pitch range
and speaking rate. :data:`VOICE_POOLS` splits them into disjoint ``train`` and ``held-out``
pools (no accent and no variant in common), so evaluation can use voices no model trained on.

espeak-ng keeps state between utterances that its API cannot reset (the same sentence spoken
twice differs by a few samples), so each clip's sentences are spoken by a fresh engine in a
child process: the same seed gives the same bytes. One sentence takes a few milliseconds, the
child process ~0.3 s. espeak-ng is GPL-3.0 software, loaded as a separate shared library for data
generation only.
"""

from __future__ import annotations

import ctypes
import io
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import cache
from typing import Literal

import numpy as np

from dinet_platform.media.io import resample_audio
from dinet_platform.synth.audio import VOWELS, Segment

VoicePool = Literal["train", "held-out"]

VOICE_POOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # (accents, espeak variants): the pools share neither. Variants with "breath" (f2, f3, f5,
    # Alicia) are left out: their breath noise differs from run to run.
    "train": (("en-us", "en", "en-gb-x-rp"),
              ("m1", "m2", "m3", "m5", "f1", "Annie", "linda", "klatt")),
    "held-out": (("en-gb-scotland", "en-029", "en-us-nyc"),
                 ("m4", "m6", "f4", "belinda", "klatt3")),
}

_WORD_LIST = (
    "about above across after again against all almost alone along always among animal answer "
    "apple around away baby back ball bank basket beach bear beautiful because bed before began "
    "behind believe below best better between big bird black blue boat body book both bottle "
    "box boy bread bright bring brother brown build busy but buy cake call came can car care "
    "carry cat catch chair change cheese child city class clean clock close cloud cold color "
    "come cook cool could country cup dark daughter day deep dinner doctor dog door down dream "
    "drink drive early earth eat egg evening every eye face fall family far farm fast father "
    "feel few field find fine fire fish five floor flower fly follow food foot forest four "
    "friend from full funny garden girl give glass go gold good grass great green ground grow "
    "hair half hand happy hard hat have head hear heart heavy help here high hill home hope "
    "horse hot house how hungry idea island join jump keep kind king kitchen know lake large "
    "laugh learn leave letter light like listen little long look love low machine make many map "
    "market may milk minute money moon morning mother mountain mouth move music name near never "
    "new next night nine noise north nothing number ocean often old open orange over paper park "
    "party people pepper picture place plant play please pocket poem power pretty pull purple "
    "push queen quick quiet rain read ready red remember river road rock room round run sad safe "
    "say school sea second see seven shall sheep ship shoe shop short show shut sing sister sit "
    "sleep slow small smile snow soft some song soon sound south speak spring star start stone "
    "stop story street strong summer sun sweet table take talk teacher tell thank think three "
    "through today together tomorrow town tree true under until very village voice wait walk "
    "warm watch water weather week well window winter with woman wonder wood word work world "
    "yellow young zoo"
)
WORDS = tuple(_WORD_LIST.split())
"""Common English words: random sentences of them exercise most of the language's phonemes."""

ESPEAK_PHONES: dict[str, str] = {
    # espeak-ng's English phoneme mnemonics -> the platform's phones (their visemes shape the
    # mouth). Anything not listed falls back by its first letter (see ``platform_phone``).
    "p": "p", "b": "p", "m": "m",
    "f": "f", "v": "f",
    "s": "s", "z": "s", "t": "s", "d": "s", "n": "s", "T": "s", "D": "s", "t#": "s", "n-": "s",
    "S": "sh", "Z": "sh", "tS": "sh", "dZ": "sh", "r": "sh", "r-": "sh", "w": "u",
    "l": "l", "L": "l", "l/": "l",
    "k": "h", "g": "h", "N": "h", "h": "h", "j": "h", "?": "h", "x": "h",
}
_VOWELS_BY_FIRST_LETTER = {"a": "a", "A": "a", "0": "a", "V": "a", "@": "e", "3": "e",
                           "E": "e", "e": "e", "i": "i", "I": "i", "O": "o", "o": "o",
                           "u": "u", "U": "u", "y": "i"}
STRESS = {"'": 1.0, ",": 0.9}
"""Vowel stress from espeak's marks (primary, secondary); unstressed vowels get 0.75."""

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4


@dataclass(frozen=True)
class SpeechVoice:
    """One espeak-ng speaker: accent + variant, pitch and range (0-99), words per minute."""

    accent: str
    variant: str
    pitch: int
    pitch_range: int
    words_per_minute: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


def random_speech_voice(rng: np.random.Generator, pool: VoicePool = "train") -> SpeechVoice:
    if pool not in VOICE_POOLS:
        raise ValueError(f"voice pool must be one of {sorted(VOICE_POOLS)}, got {pool!r}")
    accents, variants = VOICE_POOLS[pool]
    return SpeechVoice(
        accent=accents[int(rng.integers(len(accents)))],
        variant=variants[int(rng.integers(len(variants)))],
        pitch=int(rng.integers(30, 71)),
        pitch_range=int(rng.integers(30, 81)),
        words_per_minute=int(rng.integers(140, 191)),
    )


def random_sentence(rng: np.random.Generator) -> str:
    words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=int(rng.integers(3, 9)))]
    return " ".join(words).capitalize() + "."


def platform_phone(mnemonic: str) -> str:
    """The platform phone for one espeak-ng phoneme mnemonic (stress marks removed)."""
    name = mnemonic.lstrip("',")
    if not name or name.startswith("_"):
        return "sil"
    if name in ESPEAK_PHONES:
        return ESPEAK_PHONES[name]
    return _VOWELS_BY_FIRST_LETTER.get(name[0], "h")


@dataclass(frozen=True)
class Utterance:
    """Engine output for one text: int16 samples and (start sample, phoneme mnemonic) events."""

    audio: np.ndarray
    sample_rate: int
    phonemes: list[tuple[int, str]]

    def samples(self, sample_rate: int) -> np.ndarray:
        """The audio as float32 in [-1, 1) at ``sample_rate``."""
        return resample_audio(self.audio / 32768.0, self.sample_rate, sample_rate)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class Espeak:
    """The espeak-ng library in synchronous mode with phoneme events (one per process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise RuntimeError(
                "real speech needs espeak-ng from the espeakng-loader wheel: "
                "pip install espeakng-loader (it is a dependency of dinet-platform)"
            ) from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_PHONEME_EVENTS
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data at {data.decode()})")
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[tuple[int, str]] = []
        self._callback = _CALLBACK(self._on_audio)  # kept alive: the library holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._phonemes.append((events[i].sample, events[i].id.string.decode()))
            i += 1
        return 0

    def speak(self, text: str, voice: SpeechVoice) -> Utterance:
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.name!r}")
        for parameter, value in ((_RATE, voice.words_per_minute), (_PITCH, voice.pitch),
                                 (_RANGE, voice.pitch_range)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._chunks, self._phonemes = [], []
        encoded = text.encode()
        status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _CHARS_UTF8,
                                        None, None)
        self._lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak-ng could not speak {text!r} (status {status})")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return Utterance(audio, self.sample_rate, list(self._phonemes))


@cache
def _engine() -> Espeak:
    # Only ever loaded in the child of ``speak_fresh``: besides keeping state between
    # utterances, a loaded espeak-ng made two identical mp4 encodes in its process differ.
    return Espeak()


def speak_fresh(texts: list[str], voice: SpeechVoice) -> list[Utterance]:
    """``texts`` in order by a new engine in a child process (``python -m`` this module):
    repeatable, whatever this process spoke before."""
    request = json.dumps({"texts": texts, "voice": asdict(voice)})
    done = subprocess.run([sys.executable, "-m", __name__], input=request.encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng failed: {done.stderr.decode(errors='replace')[-2000:]}")
    arrays = np.load(io.BytesIO(done.stdout))
    phonemes = json.loads(str(arrays["phonemes"]))
    return [Utterance(arrays[f"audio_{i}"], int(arrays["sample_rate"]),
                      [(int(sample), name) for sample, name in phonemes[i]])
            for i in range(len(texts))]


def _serve_one_request() -> None:
    request = json.loads(sys.stdin.read())
    voice = SpeechVoice(**request["voice"])
    utterances = [_engine().speak(text, voice) for text in request["texts"]]
    out = io.BytesIO()
    np.savez(out, sample_rate=_engine().sample_rate,
             phonemes=json.dumps([u.phonemes for u in utterances]),
             **{f"audio_{i}": u.audio for i, u in enumerate(utterances)})
    sys.stdout.buffer.write(out.getvalue())


def speak_sentences(
    rng: np.random.Generator, voice: SpeechVoice, num_samples: int, sample_rate: int
) -> tuple[np.ndarray, list[Segment]]:
    """Sentences separated by pauses filling ``num_samples``: float32 audio and its phones.

    Starts with 200-400 ms of silence and only adds a sentence that ends before the clip does
    (so every clip ends at rest); the rest is a faint noise floor, as in real recordings.
    """
    seconds = num_samples / sample_rate
    audio = np.zeros(num_samples, np.float32)
    segments: list[Segment] = []
    t = float(rng.uniform(0.2, 0.4))
    # a sentence takes >= 1 s: more than enough candidates, drawn up front for one engine call
    texts = [random_sentence(rng) for _ in range(int(seconds) + 4)]
    pauses = rng.uniform(0.15, 0.6, size=len(texts))
    for utterance, pause in zip(speak_fresh(texts, voice), pauses, strict=True):
        speech = utterance.samples(sample_rate)
        if t + len(speech) / sample_rate > seconds:
            continue  # does not fit: a shorter one may
        start = round(t * sample_rate)
        audio[start : start + len(speech)] = speech
        segments += _segments(utterance, t)
        t += len(speech) / sample_rate + float(pause)
    segments = _timeline(segments, seconds)
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = 0.89 * audio / peak + 0.002 * rng.standard_normal(num_samples)
    return audio.astype(np.float32), segments


def _segments(utterance: Utterance, offset: float) -> list[Segment]:
    """Phones of one utterance, each lasting until the next phoneme event, then silence."""
    rate = utterance.sample_rate
    bounds = [sample / rate for sample, _ in utterance.phonemes] + [len(utterance.audio) / rate]
    segments = []
    for (_, mnemonic), start, end in zip(utterance.phonemes, bounds, bounds[1:], strict=False):
        phone = platform_phone(mnemonic)
        stress = STRESS.get(mnemonic[:1], 0.75) if phone in VOWELS else 1.0
        segments.append(Segment(phone, offset + start, offset + end, stress))
    return segments


def _timeline(segments: list[Segment], seconds: float) -> list[Segment]:
    """Contiguous phones from 0 to ``seconds``: gaps become silence, adjacent silences merge."""
    out: list[Segment] = []

    def add(segment: Segment) -> None:
        if segment.end <= segment.start:
            return
        if out and segment.phone == "sil" and out[-1].phone == "sil":
            out[-1] = Segment("sil", out[-1].start, segment.end)
        else:
            out.append(segment)

    cursor = 0.0
    for segment in segments:
        add(Segment("sil", cursor, segment.start))
        add(segment)
        cursor = max(cursor, segment.end)
    add(Segment("sil", cursor, seconds))
    return out


if __name__ == "__main__":
    _serve_one_request()
