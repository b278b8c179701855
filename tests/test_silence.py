"""Silence closes the mouth: the committed base model (trained to follow the audio) on the
synthetic clips, whose ground-truth lips say when the mouth is at rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import load_model
from dinet_platform.evaluation.silence import silence_openings
from dinet_platform.media.audio_features import logmel_features

pytestmark = pytest.mark.unit
BASE = Path(__file__).resolve().parents[1] / "models" / "base" / "checkpoint.pt"
MARGIN_PX = 1.0
"""Mean opening on silence may exceed the data's at rest by this much (mouth 64: 1.6 %)."""


@pytest.mark.slow
def test_digital_silence_rests_the_mouth_as_the_data_does(prepared_dir):
    model = load_model("base", BASE, "committed base model")
    videos = VideoSet(prepared_dir, split="all")
    readings = [silence_openings(model, videos.video(i, model.mouth_size))
                for i in range(len(videos))]
    rest = np.mean([r.rest_px for r in readings])
    silence = np.mean([r.silence_px for r in readings])
    speech = np.mean([r.speech_px for r in readings])
    print(f"mouth opening (px at mouth 64): rest {rest:.2f}, silence {silence:.2f}, "
          f"speech {speech:.2f}")
    assert silence <= rest + MARGIN_PX, readings
    assert speech >= 2 * silence, readings  # the reading sees an open mouth when there is one


def test_audio_below_the_noise_floor_reads_as_the_floor():
    """Digital silence and a whisper of noise under the floor give the same features; audio
    above it is untouched."""
    zeros = logmel_features(np.zeros(16000, np.float32), 25)
    faint = logmel_features(1e-5 * np.random.default_rng(0).standard_normal(16000), 25)
    np.testing.assert_allclose(zeros, faint, atol=1e-6)
    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    loud = logmel_features(speech, 25)
    assert (loud.max(axis=1) > zeros.max(axis=1) + 1).all()
    assert torch.isfinite(torch.from_numpy(zeros)).all()
