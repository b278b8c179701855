"""Generators from MRzzm/DINet's public release: recognising them by their parameter layout,
the config they run with, and re-training their audio path for other features."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dinet_platform.audio_contract import (
    DEEPSPEECH_DIM,
    PUBLIC_DINET_FPS,
    PUBLIC_DINET_WINDOW,
)
from dinet_platform.config.schema import DINetConfig
from dinet_platform.models.dinet import DINet

AUDIO_PATH_PREFIX = "audio_encoder."
"""The generator's audio path: everything that sees the features before they are pooled."""


def is_public_dinet(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a bare generator state dict is a public DINet generator: exactly the parameter
    names and shapes of MRzzm/DINet's ``DINet(3, 15, 29)`` (full width, 29 audio input
    channels). DINet's code has no width setting, so anything it trained has this layout.

    ``state`` as :func:`~dinet_platform.models.weights.read_state_dict` returns it (``net_g``
    unwrapped, ``module.`` stripped)."""
    audio = state.get(AUDIO_PATH_PREFIX + "0.conv.weight")
    if not isinstance(audio, torch.Tensor) or audio.ndim != 3 or audio.shape[1] != DEEPSPEECH_DIM:
        return False
    with torch.device("meta"):
        reference = DINet(3, 15, DEEPSPEECH_DIM).state_dict()
    if set(state) != set(reference):
        return False
    return all(
        isinstance(state[k], torch.Tensor) and tuple(state[k].shape) == tuple(v.shape)
        for k, v in reference.items()
    )


PUBLIC_DINET_ORIGIN = (
    f"a public DINet generator (MRzzm/DINet's parameter layout, {DEEPSPEECH_DIM} audio "
    "channels, no platform record: DINet trains on DeepSpeech features only)"
)


def public_dinet_config(fallback: DINetConfig | None) -> DINetConfig:
    """The config a public DINet generator runs with: its network (plain DINet at full width,
    29 audio channels) and its features (DeepSpeech, 25 fps, 5-frame windows); stages and
    everything else from ``fallback`` (mouth 256, DINet's final size, without one)."""
    base = (
        fallback.model_dump(mode="json")
        if fallback is not None
        else {
            "name": "public-dinet",
            "stages": [{"mouth_size": 256, "epochs": 1, "batch_size": 1, "lr": 1e-4}],
        }
    )
    base["model"] = {
        **base.get("model", {}),
        "variant": "dinet",
        "width": 1.0,
        "audio_channels": DEEPSPEECH_DIM,
    }
    base["model"].pop("attention", None)
    base["data"] = {
        **base.get("data", {}),
        "audio_features": "deepspeech",
        "fps": PUBLIC_DINET_FPS,
        "audio_window": PUBLIC_DINET_WINDOW,
    }
    return DINetConfig.model_validate(base)


def fresh_audio_path(
    weights: Mapping[str, torch.Tensor], fresh: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """``weights`` with the audio path (``audio_encoder.*``) replaced by ``fresh``'s freshly
    initialised one, whose input size is the config's feature size."""
    new = fresh.state_dict()
    kept = {k: v for k, v in weights.items() if not k.startswith(AUDIO_PATH_PREFIX)}
    return kept | {k: v.clone() for k, v in new.items() if k.startswith(AUDIO_PATH_PREFIX)}
