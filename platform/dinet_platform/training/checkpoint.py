"""The one checkpoint format of the platform.

A checkpoint is a directory holding ``checkpoint.pt`` and ``config.yaml``. ``checkpoint.pt`` is
a plain dict of tensors and primitives, written with ``torch.save`` and always read with
``torch.load(weights_only=True)`` (no pickled code)::

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

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from dinet_platform.audio_contract import RECORD_KEY, AudioFeatureSpec

FORMAT = "dinet-platform/checkpoint/v1"
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
    config_text = yaml.safe_dump(state.get("config", {}), sort_keys=False)
    tmp = directory / f".{CONFIG_FILE}.tmp"
    tmp.write_text(config_text)
    os.replace(tmp, directory / CONFIG_FILE)
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
    tmp = file.with_name(f".{file.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, file)
