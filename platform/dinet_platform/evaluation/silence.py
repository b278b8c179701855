"""Does the mouth rest when the speech stops? Measured on data with ground truth.

A live avatar hears silence between sentences, while the speaker thinks, and after a stream
ends (its last frames see zero padding, as offline). :func:`silence_openings` generates a
video's frames from digital silence (exact zeros: the worst case, a muted microphone) and
reads the mouth opening off the pixels (:class:`~.video_metrics.LipReader`, calibrated on the
video's real frames), beside the same reading of the real frames where the ground-truth lips
are closed, and of the model on the video's own speech (so a model that never opens the mouth
cannot pass for one that rests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from dinet_platform.evaluation.data import Video
from dinet_platform.evaluation.evaluate import EvalModel, generate_video
from dinet_platform.evaluation.video_metrics import LipReader, true_opening
from dinet_platform.media.audio_features import hop_length, logmel_features

CLOSED_PX = 0.25
"""Ground-truth inner-lip gap (crop pixels) up to which a real frame counts as at rest."""


@dataclass
class SilenceReading:
    """Mean mouth openings (crop pixels, read off the pixels) of one video."""

    rest_px: float  # the real frames whose lips are closed
    silence_px: float  # the model on digital silence
    silence_max_px: float
    speech_px: float  # the model on the video's own speech, where the real mouth is open
    rest_frames: int


def silence_openings(model: EvalModel, video: Video, *, sample_rate: int = 16000,
                     fps: int = 25) -> SilenceReading:
    """The openings of ``video`` (read at the model's mouth size, with lips tracked)."""
    if not video.lips_tracked:
        raise ValueError(f"{video.video_id}: its landmarks do not follow the lips")
    real = video.float_frames()
    reader = LipReader(real, video.landmarks)
    truth = true_opening(video.landmarks)
    rest = truth <= CLOSED_PX
    if not bool(rest.any()):
        raise ValueError(f"{video.video_id}: no frame with closed lips to compare against")
    zeros = np.zeros(video.num_frames * hop_length(sample_rate, fps), np.float32)
    silent = torch.from_numpy(logmel_features(zeros, video.num_frames,
                                              sample_rate=sample_rate, fps=fps,
                                              n_mels=video.features.shape[1]))
    quiet = reader.openings(generate_video(model, dataclasses.replace(video, features=silent)),
                            video.landmarks, video.mouth_size)
    spoken = reader.openings(generate_video(model, video), video.landmarks, video.mouth_size)
    resting = reader.openings(real[rest], video.landmarks[rest], video.mouth_size)
    return SilenceReading(rest_px=float(resting.mean()), silence_px=float(quiet.mean()),
                          silence_max_px=float(quiet.max()),
                          speech_px=float(spoken[~rest].mean()) if bool((~rest).any())
                          else float("nan"), rest_frames=int(rest.sum()))
