"""Mouth-size analysis (seed §8): how big are the mouths in the data, and which stages fit?

The quantity that matters is the **mouth box** in source pixels, ``2R`` with DINet's crop
radius ``R = max(nose-to-chin, mouth width) / 2 * margin`` (see :mod:`.crops`): at stage mouth
size ``m`` that box is resized to ``m x m``. Where ``2R < m`` the stage *upscales*: it trains on
interpolated pixels that hold no more detail than the source (the blur the seed complains
about); where ``2R > m`` it downscales and real detail is available. The raw mouth width
(corner to corner) is reported too, since it is what people usually mean by mouth size.

Recommendation: the largest multiple of 32 (every such size has exact crop fractions, see
:mod:`dinet_platform.geometry`) that at least ``coverage`` of the frames can fill without
upscaling, and the progressive stage list 64, 96, ... up to it.

Reads prepared shards (only two small columns, no images), or a folder of videos (landmark
CSVs or the fallback detector, every ``sample_every``-th frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dinet_platform.data import shards as fmt
from dinet_platform.data.prepare import discover_inputs
from dinet_platform.files import atomic_path
from dinet_platform.media.crops import frame_radii, mouth_widths
from dinet_platform.media.io import probe_video
from dinet_platform.media.landmarks import detected_landmarks
from dinet_platform.media.openface import LandmarkError, fill_invalid, read_openface_csv
from dinet_platform.media.opening import MediaError

DEFAULT_STAGES = (64, 96, 128, 160)
STAGE_STEP = 32
MIN_STAGE, MAX_STAGE = 64, 256


@dataclass
class MouthSizes:
    """Per-frame measurements gathered from shards or videos."""

    box_px: np.ndarray
    width_px: np.ndarray
    videos: dict[str, int] = field(default_factory=dict)
    """Frames measured per video."""
    skipped: list[dict[str, str]] = field(default_factory=list)


def sizes_from_shards(shards: str | Path) -> MouthSizes:
    manifest = fmt.load_manifest(shards)
    root = fmt.manifest_path(shards).parent
    boxes, widths, videos = [], [], {}
    for video in manifest["videos"]:
        table = pq.read_table(root / video["shard"], columns=["mouth_box_px", "mouth_width_px"])
        boxes.append(table.column("mouth_box_px").to_numpy())
        widths.append(table.column("mouth_width_px").to_numpy())
        videos[video["video_id"]] = table.num_rows
    return MouthSizes(
        np.concatenate(boxes) if boxes else np.zeros(0),
        np.concatenate(widths) if widths else np.zeros(0),
        videos,
        [{"video_id": s["video_id"], "reason": s["reason"]} for s in manifest["skipped"]],
    )


def sizes_from_videos(
    folder: str | Path, margin: float = 1.1, sample_every: int = 1, min_coverage: float = 0.8
) -> MouthSizes:
    boxes, widths, videos, skipped = [], [], {}, []
    for spec in discover_inputs(folder):
        try:
            probe = probe_video(spec.video)
            if spec.landmarks:
                marks = read_openface_csv(spec.landmarks)
            else:
                marks = detected_landmarks(probe)
            marks = fill_invalid(marks, min_coverage)
        except (MediaError, LandmarkError) as exc:
            skipped.append({"video_id": spec.video_id, "reason": str(exc)})
            continue
        points = marks.points[::sample_every]
        boxes.append(2 * frame_radii(points, margin))
        widths.append(mouth_widths(points))
        videos[spec.video_id] = len(points)
    return MouthSizes(
        np.concatenate(boxes) if boxes else np.zeros(0),
        np.concatenate(widths) if widths else np.zeros(0),
        videos,
        skipped,
    )


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    pct = np.percentile(values, [5, 20, 25, 50, 75, 95])
    return {
        "count": int(values.size),
        "mean": round(float(values.mean()), 2),
        "min": round(float(values.min()), 2),
        "p05": round(float(pct[0]), 2),
        "p20": round(float(pct[1]), 2),
        "p25": round(float(pct[2]), 2),
        "median": round(float(pct[3]), 2),
        "p75": round(float(pct[4]), 2),
        "p95": round(float(pct[5]), 2),
        "max": round(float(values.max()), 2),
    }


def stage_shares(box_px: np.ndarray, stages: list[int]) -> list[dict[str, Any]]:
    """Per stage: share of frames it would upscale / downscale, and the median scale factor."""
    rows = []
    for size in stages:
        factor = size / box_px
        rows.append(
            {
                "mouth_size": size,
                "upscale_share": round(float(np.mean(box_px < size)), 4),
                "downscale_share": round(float(np.mean(box_px >= size)), 4),
                "median_scale": round(float(np.median(factor)), 3),
            }
        )
    return rows


def recommend(box_px: np.ndarray, coverage: float = 0.8) -> dict[str, Any]:
    """Largest multiple-of-32 mouth size that ``coverage`` of frames fill without upscaling."""
    quantile = float(np.quantile(box_px, 1.0 - coverage))
    best = int(math.floor(quantile / STAGE_STEP) * STAGE_STEP)
    note = None
    if best < MIN_STAGE:
        note = (
            f"{100 * coverage:.0f}% of mouths are smaller than {MIN_STAGE} px: every stage "
            "upscales most frames; record closer or at higher resolution"
        )
        best = MIN_STAGE
    best = min(best, MAX_STAGE)
    stages = list(range(MIN_STAGE, best + 1, STAGE_STEP))
    if len(stages) > 4:  # keep four stages, always ending at the recommended size
        picks = np.linspace(0, len(stages) - 1, 4).round().astype(int)
        stages = [stages[i] for i in picks]
    return {
        "coverage": coverage,
        "mouth_size": best,
        "stages": stages,
        "box_px_quantile": round(quantile, 2),
        "note": note,
    }


def analyze(
    path: str | Path,
    *,
    stages: list[int] | None = None,
    out_dir: str | Path | None = None,
    coverage: float = 0.8,
    margin: float = 1.1,
    sample_every: int = 1,
) -> dict[str, Any]:
    """Analyze shards (a folder with ``manifest.json``) or a folder of videos.

    Writes ``mouth_sizes.json`` and ``mouth_sizes.png`` into ``out_dir`` (default: ``path``
    for shards, ``path/analysis`` for videos) and returns the JSON summary.
    """
    path = Path(path)
    is_shards = fmt.manifest_path(path).is_file()
    sizes = sizes_from_shards(path) if is_shards else sizes_from_videos(
        path, margin=margin, sample_every=sample_every
    )
    if sizes.box_px.size == 0:
        raise ValueError(f"no measurable faces under {path} (skipped: {sizes.skipped})")
    stages = sorted(stages or DEFAULT_STAGES)
    summary = {
        "input": str(path.resolve()),
        "kind": "shards" if is_shards else "videos",
        "videos": sizes.videos,
        "skipped": sizes.skipped,
        "mouth_box_px": _stats(sizes.box_px),
        "mouth_width_px": _stats(sizes.width_px),
        "stages": stage_shares(sizes.box_px, stages),
        "recommendation": recommend(sizes.box_px, coverage),
    }
    out = Path(out_dir) if out_dir else (path if is_shards else path / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    summary["histogram"] = str((out / "mouth_sizes.png").resolve())
    summary["summary"] = str((out / "mouth_sizes.json").resolve())
    plot_histogram(sizes, stages, summary, out / "mouth_sizes.png")
    fmt.atomic_write_json(out / "mouth_sizes.json", summary)
    return summary


def plot_histogram(
    sizes: MouthSizes, stages: list[int], summary: dict[str, Any], target: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    top = max(float(sizes.box_px.max()), max(stages)) * 1.05
    bins = np.linspace(0, top, 60)
    ax.hist(sizes.box_px, bins=bins, alpha=0.7, label="mouth box 2R (px)")
    ax.hist(sizes.width_px, bins=bins, alpha=0.5, label="mouth width (px)")
    for row in summary["stages"]:
        ax.axvline(row["mouth_size"], color="black", linestyle="--", linewidth=1)
        ax.text(
            row["mouth_size"],
            ax.get_ylim()[1] * 0.95,
            f" {row['mouth_size']}\n {100 * row['upscale_share']:.0f}% up",
            fontsize=8,
            va="top",
        )
    rec = summary["recommendation"]
    ax.set_title(f"Mouth sizes ({len(sizes.box_px)} frames): recommend mouth {rec['mouth_size']}")
    ax.set_xlabel("source pixels")
    ax.set_ylabel("frames")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
