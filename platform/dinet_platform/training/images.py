"""PNG renderings logged with each epoch: sample grids and attention maps (numpy + OpenCV)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from dinet_platform.geometry import Box

LABEL_HEIGHT = 18


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> (H, W, 3) uint8 RGB."""
    array = image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    return (array * 255 + 0.5).astype(np.uint8)


def _labelled(image: np.ndarray, text: str) -> np.ndarray:
    band = np.full((LABEL_HEIGHT, image.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (2, LABEL_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([band, image], 0)


def sample_grid(
    source: torch.Tensor,
    generated: torch.Tensor,
    target: torch.Tensor,
    mouth: Box,
    max_rows: int = 4,
    margin: float = 0.25,
) -> np.ndarray:
    """Rows of (input, generated, target) mouth crops, each (B, 3, H, W) in [0, 1]."""
    pad = round(mouth.height * margin)
    rows = slice(max(0, mouth.top - pad), mouth.bottom + pad)
    cols = slice(max(0, mouth.left - pad), mouth.right + pad)
    lines = []
    for i in range(min(max_rows, source.shape[0])):
        lines.append(
            np.concatenate([to_uint8(t[i, :, rows, cols]) for t in (source, generated, target)], 1)
        )
    grid = np.concatenate(lines, 0)
    width = grid.shape[1] // 3
    header = np.concatenate(
        [_labelled(np.zeros((0, width, 3), np.uint8), name)
         for name in ("input", "generated", "target")],
        1,
    )
    return np.concatenate([header, grid], 0)


def attention_grid(face: torch.Tensor, maps: dict[str, torch.Tensor]) -> np.ndarray:
    """Each attention map (1, h, w) in [0, 1] as a heat map over the face (3, H, W)."""
    base = to_uint8(face)
    height, width = base.shape[:2]
    tiles = [_labelled(base, "face")]
    for name, attention in sorted(maps.items()):
        values = attention.detach().float().cpu().numpy().reshape(attention.shape[-2:])
        heat = cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)
        colored = cv2.applyColorMap((heat * 255).clip(0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        blended = cv2.addWeighted(base, 0.5, cv2.cvtColor(colored, cv2.COLOR_BGR2RGB), 0.5, 0)
        tiles.append(_labelled(blended, name))
    return np.concatenate(tiles, 1)


def write_png(path: str | Path, image_rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
