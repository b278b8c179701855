"""Mouth-size analysis over shards and over raw videos, and the `dinet data` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dinet_platform.cli import app
from dinet_platform.data.analyze import analyze, recommend, stage_shares
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


def test_analyze_shards_writes_histogram_and_summary(prepared_dir: Path, tmp_path: Path) -> None:
    summary = analyze(prepared_dir, stages=[64, 96, 128, 160], out_dir=tmp_path)
    assert summary["kind"] == "shards"
    assert Path(summary["histogram"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(summary["summary"]).read_text()) == summary
    box, width = summary["mouth_box_px"], summary["mouth_width_px"]
    assert box["count"] == width["count"] == 4 * 40
    assert 0 < width["median"] < box["median"]  # the box adds margin around the mouth
    stages = summary["stages"]
    assert [s["mouth_size"] for s in stages] == [64, 96, 128, 160]
    for row in stages:
        assert row["upscale_share"] + row["downscale_share"] == pytest.approx(1.0)
    # shares are monotonic: bigger stages upscale more frames
    ups = [row["upscale_share"] for row in stages]
    assert ups == sorted(ups)
    # 160 px synthetic frames have ~60 px mouth boxes: every stage upscales, recommend 64.
    assert summary["recommendation"]["mouth_size"] == 64
    assert summary["recommendation"]["note"]


def test_analyze_videos_agrees_with_shards(synth_dir: Path, prepared_dir: Path, tmp_path: Path):
    videos = tmp_path / "videos"
    shutil.copytree(synth_dir, videos)
    from_videos = analyze(videos)
    from_shards = analyze(prepared_dir, out_dir=tmp_path / "s")
    assert from_videos["kind"] == "videos"
    assert (videos / "analysis" / "mouth_sizes.png").is_file()
    assert from_videos["mouth_box_px"]["median"] == pytest.approx(
        from_shards["mouth_box_px"]["median"], rel=1e-3
    )


def test_recommendation_follows_the_data() -> None:
    rng = np.random.default_rng(0)
    big = rng.normal(220, 10, 1000)
    rec = recommend(big, coverage=0.8)
    assert rec["mouth_size"] == 192 and rec["note"] is None
    assert rec["stages"][0] == 64 and rec["stages"][-1] == 192 and len(rec["stages"]) == 4
    shares = stage_shares(big, [64, 160, 256])
    assert shares[0]["upscale_share"] == 0.0 and shares[2]["upscale_share"] == 1.0


def test_cli_prepare_and_analyze(synth_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "shards"
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--input",
            str(synth_dir),
            "--out",
            str(out),
            "--mouth-size",
            "64",
            "--local",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 ok" in result.output and (out / "manifest.json").is_file()
    result = runner.invoke(app, ["data", "analyze", str(out), "--stages", "64,96"])
    assert result.exit_code == 0, result.output
    assert "recommend" in result.output.lower()
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--input",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "x"),
            "--local",
        ],
    )
    assert result.exit_code == 2
