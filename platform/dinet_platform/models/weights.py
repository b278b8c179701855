"""Loading generator weights, including public DINet checkpoints.

Public DINet checkpoints are ``{"state_dict": {"net_g": ...}, ...}`` saved from
``nn.DataParallel`` (keys prefixed ``module.``). Everything is read with
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dinet_platform.config.schema import ModelConfig
from dinet_platform.models.factory import build_syncnet
from dinet_platform.models.syncnet import SyncNet

log = logging.getLogger(__name__)

# Parameters that may legitimately be absent from a checkpoint: the attention modules, which a
# plain DINet checkpoint does not have and which start as the identity.
FRESH_PREFIXES = ("attention.",)
SYNCNET_FILE = "syncnet.pt"


@dataclass
class LoadReport:
    fresh: list[str] = field(default_factory=list)
    """Keys initialised fresh because the checkpoint did not have them (attention modules)."""


def read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A generator state_dict from a file or mapping, in any of the layouts we accept."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"generator checkpoint not found: {path}")
        source = torch.load(path, map_location="cpu", weights_only=True)
    state = dict(source)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = dict(state["state_dict"])
    if "net_g" in state and isinstance(state["net_g"], Mapping):
        state = dict(state["net_g"])
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_generator_weights(
    model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]
) -> LoadReport:
    """Load weights strictly, except attention parameters missing from the checkpoint, which
    are kept fresh and reported (never silently)."""
    state = read_state_dict(source)
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    not_fresh = [k for k in missing if not k.startswith(FRESH_PREFIXES)]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if not_fresh:
        problems.append(f"{len(not_fresh)} missing keys, e.g. {not_fresh[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}")
    if problems:
        raise ValueError(
            "checkpoint does not match the model (check model.width, model.audio_channels and "
            "model.variant): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if k.startswith(FRESH_PREFIXES)]
    if fresh:
        log.warning("initialised %d attention parameters fresh (not in checkpoint)", len(fresh))
    return LoadReport(fresh=fresh)


def load_syncnet(path: str | Path, config: ModelConfig, frames: int) -> SyncNet:
    """A frozen sync expert from a weights file (``{"state_dict": ...}`` or a bare state_dict)."""
    path = Path(path)
    file = path / SYNCNET_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"sync expert weights not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model = build_syncnet(config, frames=frames)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{file} does not match the sync expert of this config (model.syncnet_width, "
            f"model.audio_channels, data.clip_len): {exc}"
        ) from None
    return model.requires_grad_(False).eval()
