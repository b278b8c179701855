"""Every checkpoint format of the platform, and the one generator loader (plain PyTorch).

- The training checkpoint (:func:`save_checkpoint` / :func:`load_checkpoint`), below.
- The sync expert's ``syncnet.pt`` (:func:`save_sync_expert` / :func:`load_sync_expert`).
- Any generator file a user brings: :func:`load_generator` reads a platform checkpoint, a
  public DINet ``.pth`` (recognised by its parameter layout) or a bare state dict, and says
  what it is (mouth size, config, the audio features it needs).

The third format, an *optimized* directory of inference programs, belongs to the compiler
(:mod:`dinet_platform.optimize.artifact`): it holds no training state and loads without this
package's model code.

A training checkpoint is a directory holding ``checkpoint.pt`` and ``config.yaml``.
``checkpoint.pt`` is a plain dict of tensors and primitives, written with ``torch.save`` and
always read with ``torch.load(weights_only=True)`` (no pickled code)::

    {"format": "dinet-platform/checkpoint/v1",
     "generator": state_dict, "discriminators": {"frame": sd, "clip": sd},
     "optimizers": {...} | None, "epoch": int (last finished, 0-based),
     "mouth_size": int, "config": resolved DINetConfig as a dict, "metrics": {name: float},
     "audio_features": the features the generator was trained on (added from "config" when
                       absent; see :mod:`dinet_platform.audio_contract`)}

Ray Train checkpoints, the MLflow checkpoint artifact of each stage and the registry's model
artifact are all this directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dinet_platform.audio_contract import (
    RECORD_KEY,
    AudioContractError,
    AudioFeatureSpec,
    checkpoint_features,
)
from dinet_platform.config.schema import DINetConfig, ModelConfig
from dinet_platform.files import atomic_path, write_text
from dinet_platform.models.factory import build_generator
from dinet_platform.models.public_dinet import is_public_dinet, public_dinet_config
from dinet_platform.models.syncnet import SyncNet
from dinet_platform.models.weights import (
    SYNCNET_FILE,
    load_generator_weights,
    load_syncnet,
    read_state_dict,
)

FORMAT = "dinet-platform/checkpoint/v1"
SYNC_EXPERT_FORMAT = "dinet-platform/syncnet/v1"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (see the module docstring) into ``directory``; atomic per file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state}
    if state.get("config") and RECORD_KEY not in state:
        payload[RECORD_KEY] = AudioFeatureSpec.from_config(state["config"]).as_dict()
    _atomic_torch_save(payload, directory / CHECKPOINT_FILE)
    write_text(directory / CONFIG_FILE, yaml.safe_dump(state.get("config", {}), sort_keys=False))
    return directory


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory (or its ``checkpoint.pt``)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected {CHECKPOINT_FILE})")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{file} is not a dinet-platform checkpoint (format {state.get('format')!r}); "
            "for a public DINet generator file use it as the first stage's init checkpoint"
        )
    return state


def is_platform_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CHECKPOINT_FILE).is_file() if path.is_dir() else path.name == CHECKPOINT_FILE


def _atomic_torch_save(obj: Any, file: Path) -> None:
    with atomic_path(file) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- any generator


@dataclass
class LoadedGenerator:
    """A generator in eval mode and what it is."""

    generator: nn.Module
    mouth_size: int
    config: DINetConfig
    """The config it runs with (for a public DINet file: the one derived for it)."""
    features: AudioFeatureSpec
    """The audio features it was trained on (checked against its record)."""


def load_generator(path: str | Path, source: str,
                   fallback: DINetConfig | None = None) -> LoadedGenerator:
    """A platform checkpoint (directory or ``checkpoint.pt``), or a bare generator file.

    A public DINet generator (recognised by its parameter layout) is built as DINet at full
    width taking DeepSpeech features
    (:func:`~dinet_platform.models.public_dinet.public_dinet_config`) with ``fallback``'s
    stages: at its last stage's mouth size. Another bare state dict is built with
    ``fallback``'s model. ``source`` names the model in errors."""
    try:
        if is_platform_checkpoint(path):
            state = load_checkpoint(path)
            config = DINetConfig.model_validate(state["config"])
            mouth_size = int(state["mouth_size"])
            weights = state["generator"]
            features = checkpoint_features(state, source)
        else:
            weights = read_state_dict(path)
            if is_public_dinet(weights):
                config = public_dinet_config(fallback)
                features = AudioFeatureSpec.public_dinet()
            elif fallback is None:
                raise ValueError("it is not a platform checkpoint and no config was given")
            else:
                config = fallback
                features = AudioFeatureSpec.from_data(config.data)
            mouth_size = config.stages[-1].mouth_size
        generator = build_generator(config.model)
        load_generator_weights(generator, weights)
    except AudioContractError:
        raise
    except (ValueError, RuntimeError, KeyError, FileNotFoundError) as exc:
        raise ValueError(f"model {source!r} cannot be loaded: {exc}") from None
    return LoadedGenerator(generator.eval(), mouth_size, config, features)


# --------------------------------------------------------------------------- sync expert


def save_sync_expert(
    directory: str | Path,
    expert: SyncNet,
    model: ModelConfig,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``directory/syncnet.pt``: weights plus the shape settings needed to rebuild it
    (plain tensors and numbers, read with ``torch.load(weights_only=True)``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": SYNC_EXPERT_FORMAT,
        "state_dict": expert.state_dict(),
        "frames": expert.frames,
        "syncnet_width": model.syncnet_width,
        "audio_channels": model.audio_channels,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    _atomic_torch_save(payload, directory / SYNCNET_FILE)
    return directory / SYNCNET_FILE


def load_sync_expert(path: str | Path, model: ModelConfig, frames: int) -> SyncNet:
    """A frozen expert from ``path``; a file written by :func:`save_sync_expert` says its own
    shape, otherwise ``model`` (``syncnet_width``, ``audio_channels``) and ``frames`` do."""
    path = Path(path)
    file = path / SYNCNET_FILE if path.is_dir() else path
    if file.is_file():
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("format") == SYNC_EXPERT_FORMAT:
            model = model.model_copy(update={
                "syncnet_width": float(state["syncnet_width"]),
                "audio_channels": int(state["audio_channels"]),
            })
            frames = int(state["frames"])
    return load_syncnet(path, model, frames)
