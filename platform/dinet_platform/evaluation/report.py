"""Evaluation output: the JSON report, the comparison PNG and a console table.

The JSON is ``EvaluationResult.as_dict()`` plus whatever the caller adds (gates, registry
versions). PSNR of identical images is infinite; JSON has no infinity, so non-finite numbers
are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (:func:`read_report` turns them
back into floats).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dinet_platform.evaluation.evaluate import BASELINES, GROUND_TRUTH, EvaluationResult
from dinet_platform.evaluation.metrics import HIGHER_IS_BETTER

PLOTTED = ("mouth_psnr", "mouth_ssim", "outside_psnr", "seam_psnr", "warp_error",
           "temporal_consistency", "lse_c", "lse_d", "mouth_open_error_px")
LABELS = {
    "mouth_psnr": "mouth PSNR (dB)", "mouth_ssim": "mouth SSIM", "outside_psnr":
    "outside-mouth PSNR (dB)", "seam_psnr": "seam PSNR (dB)", "warp_error": "warp error",
    "frame_diff_error": "frame-diff error", "temporal_consistency": "temporal consistency",
    "lse_c": "sync confidence (LSE-C)", "lse_d": "sync distance (LSE-D)",
    "sync_offset": "sync offset (frames)", "sync_offset_abs": "|sync offset| (frames)",
    "mouth_open_error_px": "mouth opening error (px)", "mouth_open_corr": "opening corr.",
}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as strict JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_encode(report), indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    return _decode(json.loads(Path(path).read_text()))


def order_entries(result: EvaluationResult) -> list[str]:
    """Models first (in evaluation order), then the baselines, then the real video."""
    models = [n for n in result.entries if n not in (*BASELINES, GROUND_TRUTH)]
    return models + [n for n in BASELINES if n in result.metrics] + [GROUND_TRUTH]


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def plot_comparison(result: EvaluationResult, path: str | Path, title: str = "") -> Path:
    """A PNG: one sample mouth per entry on top, then a bar chart per key metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = order_entries(result)
    metrics = [m for m in PLOTTED if any(m in result.metrics[e] for e in entries)]
    columns = max(len(entries), 3)
    rows = 1 + math.ceil(len(metrics) / 3)
    figure = plt.figure(figsize=(3.2 * max(columns, 3), 2.6 * rows), dpi=90)
    grid = figure.add_gridspec(rows, max(columns, 3))
    colours = plt.get_cmap("tab10")(np.arange(len(entries)))
    for i, name in enumerate(entries):
        axis = figure.add_subplot(grid[0, i])
        if name in result.samples:
            axis.imshow(result.samples[name])
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    per_row = max(columns, 3) // 3
    for j, metric in enumerate(metrics):
        row, col = 1 + j // 3, (j % 3) * per_row
        axis = figure.add_subplot(grid[row, col : col + per_row])
        values = [result.metrics[e].get(metric) for e in entries]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        cap = (max(finite) * 1.1 if finite and max(finite) > 0 else 1.0)
        heights = [0.0 if v is None or math.isnan(v) else (cap if math.isinf(v) else v)
                   for v in values]
        bars = axis.bar(range(len(entries)), heights, color=colours)
        for bar, value in zip(bars, values, strict=True):
            axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                      format_value(value), ha="center", va="bottom", fontsize=7)
        arrow = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
        axis.set_title(f"{LABELS.get(metric, metric)} ({arrow})", fontsize=9)
        axis.set_xticks(range(len(entries)), entries, rotation=30, ha="right", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
    figure.suptitle(title or f"evaluation at mouth {result.mouth_size} on "
                    f"{len(result.info['videos'])} held-out videos "
                    f"({result.info['frames']} frames)", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
