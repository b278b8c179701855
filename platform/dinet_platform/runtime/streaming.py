"""Live speech in, audio windows out: a stream's audio context kept across chunks.

A live client sends speech in chunks of any length. Cut into windows one request at a time,
each window's features would be padded at its edges, and most of its frames would miss the
audio around them. :class:`AudioStream` keeps the context instead: frame ``i``'s audio
window is exactly what :func:`~dinet_platform.runtime.dub.dub_video` computes for frame
``i`` of the whole speech, so a streamed speech gives the frames an offline dub of it gives.

When a frame becomes computable (offline: :func:`logmel_features` over the whole speech,
then :func:`audio_window`):

- its feature needs the samples of its analysis window (``2 * hop`` samples around the
  frame's middle) and ``hop / 2`` more: the offline count (:func:`speech_frames`) may drop up
  to half a hop of trailing audio, and a feature must not have seen samples the whole speech
  would cut;
- its window needs the features ``audio_window // 2`` frames ahead.

So frame ``i`` leaves once ``i + 4`` hops of audio are in: three frames (120 ms at 25 fps)
after its own audio ended. :meth:`AudioStream.end` closes the speech: the count is fixed, the last
features see the zero padding offline sees, and the last windows are edge-padded as offline.
The frame count comes from the sample count alone, so audio and video cannot drift apart.

Plain numpy/torch: the ingress keeps one per live session.
"""

from __future__ import annotations

import numpy as np
import torch

from dinet_platform.media.audio_features import (
    audio_windows,
    hop_length,
    logmel_features,
    logmel_lead,
    logmel_of_windows,
    speech_frames,
)


def features_ahead(window: int) -> int:
    """Features a frame's window of ``window`` frames reaches into the future
    (:func:`~dinet_platform.media.audio_features.audio_window` centres it)."""
    return window - 1 - window // 2


def stream_contract(sample_rate: int, fps: int, window: int) -> dict[str, int]:
    """How much audio around a frame its window needs: ``lookahead_frames`` after the
    frame's own before it can leave, ``context_frames`` before it (audio cut this many frames
    earlier gives exact frames from there on)."""
    hop = hop_length(sample_rate, fps)
    return {"context_frames": window // 2 + -(-logmel_lead(hop) // hop),
            "lookahead_frames": features_ahead(window) + 1}


class AudioStream:
    """Chunks of mono float32 samples (at ``sample_rate``) in, ``(N, n_mels, window)`` audio
    windows of the frames now computable out, in frame order."""

    def __init__(self, *, sample_rate: int, fps: int, n_mels: int, window: int):
        self.sample_rate, self.fps, self.n_mels, self.window = sample_rate, fps, n_mels, window
        self.hop = hop_length(sample_rate, fps)
        self.lead = logmel_lead(self.hop)
        self.received = 0  # samples pushed so far
        self.ended = False
        self._buffer = np.zeros(0, np.float32)  # samples from absolute index _start on
        self._start = 0
        self._features = np.zeros((0, n_mels), np.float32)  # from frame _first on
        self._first = 0
        self.features_done = 0  # features computed
        self.frames_done = 0  # windows handed out

    @property
    def ahead(self) -> int:
        return features_ahead(self.window)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; the windows of every frame that became computable."""
        if self.ended:
            raise ValueError("the stream has ended")
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, samples])
        self.received += len(samples)
        ready = (self.received - self.hop // 2 - 2 * self.hop + self.lead) // self.hop + 1
        self._compute_features(max(self.features_done, ready))
        return self._windows(self.features_done - self.ahead)

    def end(self) -> np.ndarray:
        """The speech is over: the windows of its remaining frames (at least one frame)."""
        if self.ended:
            return self._windows(self.frames_done)
        self.ended = True
        total = self.total_frames
        keep = total * self.hop - self._start  # the offline speech stops at total * hop
        if keep < len(self._buffer):
            self._buffer = self._buffer[:max(0, keep)]
        self._compute_features(total)
        return self._windows(total)

    @property
    def total_frames(self) -> int | None:
        """The speech's frame count, once it has ended (as ``load_speech`` counts it)."""
        if not self.ended:
            return None
        return speech_frames(self.received, self.hop)

    def _samples(self, begin: int, end: int) -> np.ndarray:
        """Absolute samples ``[begin, end)``, zeros where the speech has none."""
        out = np.zeros(end - begin, np.float32)
        lo, hi = max(begin, self._start), min(end, self._start + len(self._buffer))
        if hi > lo:
            out[lo - begin:hi - begin] = self._buffer[lo - self._start:hi - self._start]
        return out

    def _compute_features(self, upto: int) -> None:
        if upto <= self.features_done:
            return
        first, count = self.features_done, upto - self.features_done
        begin = first * self.hop - self.lead
        span = self._samples(begin, begin + (count - 1) * self.hop + 2 * self.hop)
        windows = torch.from_numpy(span).unfold(0, 2 * self.hop, self.hop)
        new = logmel_of_windows(windows, sample_rate=self.sample_rate, n_mels=self.n_mels)
        self._features = np.concatenate([self._features, new])
        self.features_done = upto
        self._forget()

    def _windows(self, upto: int) -> np.ndarray:
        """Windows of frames ``frames_done .. upto - 1`` (edge-padded as offline)."""
        upto = min(upto, self.features_done)
        out = []
        last = self.total_frames  # None while streaming: no frame reaches past the features
        for frame in range(self.frames_done, upto):
            start = frame - self.window // 2
            index = np.arange(start, start + self.window).clip(0, (last or upto + self.ahead) - 1)
            out.append(np.ascontiguousarray(self._features[index - self._first].T))
        self.frames_done = max(self.frames_done, upto)
        self._forget()
        if not out:
            return np.zeros((0, self.n_mels, self.window), np.float32)
        return np.stack(out)

    def _forget(self) -> None:
        """Drop samples and features no later frame needs."""
        needed_feature = max(0, self.frames_done - self.window // 2)
        if needed_feature > self._first:
            self._features = self._features[needed_feature - self._first:]
            self._first = needed_feature
        needed_sample = self.features_done * self.hop - self.lead
        if needed_sample > self._start:
            drop = min(needed_sample - self._start, len(self._buffer))
            self._buffer = self._buffer[drop:]
            self._start += drop


def window_of_speech(samples: np.ndarray, *, context: int, final: bool, sample_rate: int,
                     fps: int, n_mels: int, window: int) -> np.ndarray:
    """The exact windows of the frames in a piece of a longer speech, without state.

    ``samples`` start ``context`` frames before the first frame wanted (at a frame boundary of
    the speech; at its very beginning ``context`` is 0). With ``final`` they end the speech;
    else the last ``lookahead_frames`` frames' windows would need audio not sent yet and are
    left out (the next piece re-sends their audio as its context). With ``context`` at least
    :func:`stream_contract`'s ``context_frames`` (or from the speech's start) the windows equal
    :func:`offline_windows` of the whole speech for those frames.
    """
    stream = AudioStream(sample_rate=sample_rate, fps=fps, n_mels=n_mels, window=window)
    windows = stream.push(samples)
    if final:
        windows = np.concatenate([windows, stream.end()])
    return windows[context:]


def window_of_features(features: np.ndarray, *, context: int, final: bool,
                       window: int) -> np.ndarray:
    """:func:`window_of_speech` for per-frame features given by the client (DeepSpeech): the
    first ``context`` frames are context, and unless ``final`` the last frames, whose windows
    reach past the features sent, are left for the next piece."""
    windows = audio_windows(features, window)
    if not final:
        windows = windows[:len(windows) - features_ahead(window)]
    return windows[context:]


def offline_windows(samples: np.ndarray, *, sample_rate: int, fps: int, n_mels: int,
                    window: int) -> np.ndarray:
    """The windows :func:`~dinet_platform.runtime.dub.dub_video` computes for a whole speech
    (what a stream of it must give)."""
    frames = speech_frames(len(samples), hop_length(sample_rate, fps))
    features = logmel_features(samples, frames, sample_rate=sample_rate, fps=fps, n_mels=n_mels)
    return audio_windows(features, window)
