"""A live stream's audio context (plain numpy/torch, no server): streamed in chunks of any
length, a speech gives exactly the audio windows an offline dub of it computes."""

from __future__ import annotations

import numpy as np
import pytest
from dinet_platform.runtime.streaming import (
    AudioStream,
    offline_windows,
    stream_contract,
    window_of_speech,
)

from tests.support import speech_like

pytestmark = pytest.mark.unit

AUDIO = {"sample_rate": 16000, "fps": 25, "n_mels": 29, "window": 5}


def stream(samples: np.ndarray, chunks: list[int]) -> tuple[np.ndarray, AudioStream]:
    audio = AudioStream(**AUDIO)
    out, at = [], 0
    for size in chunks:
        out.append(audio.push(samples[at:at + size]))
        at += size
    out.append(audio.push(samples[at:]))
    out.append(audio.end())
    return np.concatenate(out), audio


@pytest.mark.parametrize("seconds", [0.01, 0.5, 3.7, 4.0123])
def test_a_streamed_speech_gives_the_offline_windows_whatever_its_chunks(seconds):
    samples = speech_like(seconds)
    expected = offline_windows(samples, **AUDIO)
    rng = np.random.default_rng(1)
    for chunks in ([len(samples)], [1] * 700, list(rng.integers(0, 3000, 40)),
                   [640] * 200, [639, 641, 0, 5000]):
        got, audio = stream(samples, chunks)
        assert got.shape == expected.shape, (chunks[:5], got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, atol=2e-5)
        assert audio.total_frames == len(expected)


def test_a_frame_leaves_three_frames_after_its_audio():
    audio = AudioStream(**AUDIO)
    hop = 640
    assert len(audio.push(np.zeros(hop * 3, np.float32))) == 0
    # 13 hops in: frames 0..9 (frame 9's audio ended at hop 10)
    assert len(audio.push(np.zeros(hop * 10, np.float32))) == 10
    assert len(audio.end()) == 3
    with pytest.raises(ValueError, match="ended"):
        audio.push(np.zeros(1, np.float32))


def test_ten_minutes_in_irregular_chunks_end_on_the_frame_the_sample_count_says():
    """Zero drift by construction: the last frame's index comes from the samples alone, and
    the stream holds only a few frames of context however long it runs."""
    rng = np.random.default_rng(2)
    audio = AudioStream(**AUDIO)
    total, frames, held = 0, 0, 0
    chunk = np.full(16000, 0.01, np.float32)
    while total < 600 * 16000:
        size = int(rng.integers(1, 16000))
        frames += len(audio.push(chunk[:size]))
        total += size
        held = max(held, len(audio._buffer))
    frames += len(audio.end())
    assert frames == round(total / 640) == audio.total_frames
    assert held < 16000 + 4 * 640  # a chunk and the context, not the speech


def test_pieces_with_their_audio_context_give_the_windows_of_the_whole_speech():
    """What windowed ``/frames`` requests do: each piece re-sends ``context_frames`` of the
    audio before it and leaves its last ``lookahead_frames`` to the next."""
    samples = speech_like(3.3, seed=2)
    expected = offline_windows(samples, **AUDIO)
    contract = stream_contract(16000, 25, 5)
    context, lookahead, hop = contract["context_frames"], contract["lookahead_frames"], 640
    assert (context, lookahead) == (3, 3)
    got, start = [], 0
    for end in (1, 9, 10, 40, len(expected)):
        first = max(0, start - context)
        final = end == len(expected)
        piece = samples[first * hop:None if final else (end + lookahead) * hop]
        got.append(window_of_speech(piece, context=start - first, final=final, **AUDIO))
        assert len(got[-1]) == end - start
        start = end
    np.testing.assert_allclose(np.concatenate(got), expected, atol=2e-5)
    # one frame less of context: the first frame of a piece sees silence before it
    short = window_of_speech(samples[7 * hop:20 * hop], context=2, final=False, **AUDIO)
    assert np.abs(short[0] - expected[9]).max() > 1e-3
