"""Evaluation output: the JSON report, the comparison PNG and a console table.

The JSON is ``EvaluationResult.as_dict()`` plus whatever the caller adds (gates, registry
versions). PSNR of identical images is infinite; JSON has no infinity, so non-finite numbers
are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (:func:`read_report` turns them
back into floats).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dinet_platform.evaluation.evaluate import (
    BASELINES,
    GROUND_TRUTH,
    EvaluationResult,
    strip_frame_indices,
)
from dinet_platform.evaluation.video_metrics import HIGHER_IS_BETTER
from dinet_platform.files import write_text

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
    return write_text(path, json.dumps(_encode(report), indent=2, sort_keys=True,
                                       allow_nan=False) + "\n")


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
    return _save_figure(figure, path)


def plot_mouth_strip(result: EvaluationResult, path: str | Path) -> Path | None:
    """A PNG: the real mouth over ~1 s of the first held-out video, and below it each model's
    and baseline's mouth on the same frames. ``None`` when the result has no strips."""
    if not result.strips:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [GROUND_TRUTH] + [e for e in order_entries(result)
                             if e != GROUND_TRUTH and e in result.strips]
    frames = result.info.get("strip_frames") or list(range(len(result.strips[GROUND_TRUTH])))
    count, _, width, _ = result.strips[GROUND_TRUTH].shape
    figure, axes = plt.subplots(len(rows), 1, dpi=90, squeeze=False,
                                figsize=(min(1.1 * count, 16), 0.9 + 1.1 * len(rows)))
    for axis, name in zip(axes[:, 0], rows, strict=True):
        axis.imshow(np.concatenate(list(result.strips[name]), axis=1))
        axis.set_xticks([width * (i + 0.5) for i in range(count)],
                        [str(f) for f in frames], fontsize=7)
        axis.set_yticks([])
        axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    video = (result.info.get("videos") or ["?"])[0]
    figure.suptitle(f"mouth over frames {frames[0]}-{frames[-1]} of held-out {video}: "
                    "generated vs true", fontsize=10)
    return _save_figure(figure, path)


def plot_video_with_audio(video: str | Path, path: str | Path, count: int = 12,
                          sample_rate: int = 16000) -> Path:
    """A PNG: ~1 s of ``video``'s audio waveform above the lower half of every other frame of
    that second, each frame's time marked on the waveform (does the mouth open with sound?)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dinet_platform.media.io import iter_frames, probe_video, read_audio

    probe = probe_video(video, cache_bytes=0)
    chosen = set(strip_frame_indices(probe.num_source_frames, count))
    frames = {i: f for i, f in iter_frames(probe) if i in chosen}
    chosen_sorted = sorted(frames)
    audio = read_audio(video, sample_rate)
    times = [float(probe.times[i] - probe.times[0]) for i in chosen_sorted]
    step = 1.0 / probe.source_fps
    start, end = max(times[0] - step, 0.0), times[-1] + step
    window = audio[int(start * sample_rate): int(end * sample_rate)]
    height, width = next(iter(frames.values())).shape[:2]
    lower = [frames[i][height // 2:, width // 6: width - width // 6] for i in chosen_sorted]
    figure, (wave, strip) = plt.subplots(2, 1, dpi=90, figsize=(min(1.2 * len(lower), 16), 4.2),
                                         gridspec_kw={"height_ratios": [1, 2]})
    wave.plot(start + np.arange(len(window)) / sample_rate, window, linewidth=0.5)
    for t in times:
        wave.axvline(t, color="tab:red", linewidth=0.6, alpha=0.6)
    wave.set_xlim(start, end)
    wave.set_yticks([])
    wave.set_xlabel("s", fontsize=7)
    wave.tick_params(labelsize=7)
    strip.imshow(np.concatenate(lower, axis=1))
    strip.set_xticks([lower[0].shape[1] * (k + 0.5) for k in range(len(lower))],
                     [f"{t:.2f}" for t in times], fontsize=7)
    strip.set_yticks([])
    figure.suptitle(f"{Path(video).name}: audio and the lower face of its frames", fontsize=10)
    return _save_figure(figure, path)


def _save_figure(figure: Any, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
