"""``dinet data ...`` subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import dinet_platform.console_logs as console_logs
from dinet_platform.cli.common import SetOption, load_or_exit

data_app = typer.Typer(help="Generate, prepare and analyze training data.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the clips into.")],
    videos: Annotated[int, typer.Option("--videos", "-n", min=1, help="Number of clips.")] = 4,
    seconds: Annotated[
        float, typer.Option("--seconds", "-s", min=0.04, help="Length of each clip.")
    ] = 10.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    size: Annotated[
        int, typer.Option("--size", min=64, help="Frame width and height (even).")
    ] = 256,
    speech: Annotated[
        str,
        typer.Option(
            "--speech",
            help="tts: English sentences spoken by espeak-ng, mouths timed by its phonemes; "
            "formant: random synthetic syllables.",
        ),
    ] = "tts",
    voices: Annotated[
        str,
        typer.Option(
            "--voices",
            help="Voice pool for --speech tts: 'train', or 'held-out' (accents and espeak "
            "variants the train pool never uses, for evaluation).",
        ),
    ] = "train",
) -> None:
    """Generate synthetic talking-face clips: <name>.mp4 + OpenFace-style .csv + truth .json."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from dinet_platform.synth.videos import synthesize_dataset

    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("synthesizing", total=videos)
        try:
            clips = synthesize_dataset(
                out,
                videos,
                seconds,
                seed,
                size=size,
                speech=speech,
                voice_pool=voices,
                on_clip=lambda _clip: progress.advance(task),
            )
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    table = Table(title=f"{len(clips)} synthetic clips in {out.resolve()}")
    for column in ("clip", "frames", "seconds", "size", "MB (.mp4 + .csv + .json)"):
        table.add_column(column)
    for clip in clips:
        megabytes = sum(path.stat().st_size for path in clip.paths) / 1e6
        table.add_row(
            clip.name,
            str(clip.num_frames),
            f"{clip.seconds:g}",
            f"{clip.width}x{clip.height}",
            f"{megabytes:.2f}",
        )
    console.print(table)


def _data_config(config: Path | None, overrides: list[str] | None = None):
    """(DataConfig, stage mouth sizes) from a config file, or the defaults without one."""
    from dinet_platform.config.schema import DataConfig

    if config is None:
        return DataConfig(), None
    cfg = load_or_exit(config, overrides)
    return cfg.data, [stage.mouth_size for stage in cfg.stages]


@data_app.command("prepare")
def prepare(
    inputs: Annotated[
        list[Path],
        typer.Option("--input", "-i", help="Folder of videos, or a video file (repeatable)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output folder [default: data.shards or $DINET_HOME/data/shards]."
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config.")] = None,
    mouth_size: Annotated[
        int | None,
        typer.Option("--mouth-size", help="Stored crop size [default: largest stage, or 160]."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Process in this process instead of Ray Data.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-process finished videos.")] = False,
    overrides: SetOption = None,
) -> None:
    """Videos (+ <name>.wav, <name>.csv, <name>_deepspeech.npy) -> Parquet shards + manifest.

    Exit status 0 when at least one video was prepared, 1 when none was, 2 for bad input."""
    from rich.console import Console

    from dinet_platform.data.prepare import prepare_dataset
    from dinet_platform.paths import shards_path

    console = Console()
    data, stages = _data_config(config, overrides)
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        console.print(f"[red]error:[/red] input not found: {', '.join(missing)}", highlight=False)
        raise typer.Exit(2)
    size = mouth_size or (max(stages) if stages else 160)
    target = out or shards_path(data.shards)
    try:
        with (console_logs.captured(console, "data-prepare"),
              console_logs.progress(console, f"preparing {target}")):
            report = prepare_dataset(
                inputs,
                target,
                config=data,
                mouth_size=size,
                use_ray=not local,
                force=force,
                log=lambda msg: console.print(msg, highlight=False),
            )
    except (ValueError, TypeError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    _print_prepare_summary(console, report)
    if not report.manifest["counts"]["videos_ok"]:
        raise typer.Exit(1)


def _print_prepare_summary(console, report) -> None:
    from rich.table import Table

    manifest = report.manifest
    counts = manifest["counts"]
    table = Table(title=f"prepared {manifest['stored_mouth_size']} px crops in {report.out_dir}")
    for column in ("video", "split", "frames", "landmarks", "mouth box px", "MB"):
        table.add_column(column)
    for video in manifest["videos"]:
        table.add_row(
            video["video_id"],
            video["split"],
            str(video["num_frames"]),
            video["landmark_source"],
            f"{video['mouth_box_px_median']:.0f}",
            f"{video['bytes'] / 1e6:.1f}",
        )
    for skipped in manifest["skipped"]:
        table.add_row(skipped["video_id"], "[red]skipped[/red]", "", skipped["reason"], "", "")
    console.print(table)
    console.print(
        f"{counts['videos_ok']} ok, {counts['videos_skipped']} skipped; "
        f"{counts['frames']} frames ({counts['train_frames']} train / {counts['val_frames']} val), "
        f"{counts['bytes'] / 1e6:.1f} MB; {len(report.processed)} processed, "
        f"{len(report.reused)} already done; {report.seconds:.1f} s\n"
        f"manifest: {report.out_dir / 'manifest.json'} (content hash "
        f"{manifest['content_hash'][:12]})",
        highlight=False,
    )


@data_app.command("analyze")
def analyze_command(
    path: Annotated[Path, typer.Argument(help="Prepared shards folder, or a folder of videos.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (its stages).")
    ] = None,
    stages: Annotated[
        str | None, typer.Option("--stages", help="Mouth sizes to judge, e.g. 64,96,128,160.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where mouth_sizes.{json,png} go.")
    ] = None,
    coverage: Annotated[
        float, typer.Option("--coverage", min=0.05, max=1.0, help="Share that must not upscale.")
    ] = 0.8,
) -> None:
    """Distribution of mouth sizes, share of frames each stage up/downscales, a recommendation."""
    from rich.console import Console
    from rich.table import Table

    from dinet_platform.data.analyze import analyze

    console = Console()
    data, config_stages = _data_config(config)
    try:
        sizes = [int(s) for s in stages.split(",")] if stages else config_stages
        summary = analyze(
            path, stages=sizes, out_dir=out, coverage=coverage, margin=data.crop_margin
        )
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    frames = summary["mouth_box_px"]["count"]
    stats = Table(title=f"mouth sizes in {summary['kind']} ({frames} frames)")
    for column in ("px", "p05", "p25", "median", "p75", "p95"):
        stats.add_column(column)
    for key, label in (("mouth_box_px", "mouth box 2R"), ("mouth_width_px", "mouth width")):
        row = summary[key]
        stats.add_row(label, *(f"{row[k]:.0f}" for k in ("p05", "p25", "median", "p75", "p95")))
    console.print(stats)
    shares = Table(title="per stage")
    for column in ("mouth size", "upscaled", "downscaled", "median scale"):
        shares.add_column(column)
    for row in summary["stages"]:
        shares.add_row(
            str(row["mouth_size"]),
            f"{100 * row['upscale_share']:.0f}%",
            f"{100 * row['downscale_share']:.0f}%",
            f"x{row['median_scale']:.2f}",
        )
    console.print(shares)
    rec = summary["recommendation"]
    console.print(
        f"recommend mouth size {rec['mouth_size']}, stages {rec['stages']}"
        + (f"\n[yellow]note:[/yellow] {rec['note']}" if rec["note"] else "")
        + f"\nhistogram: {summary['histogram']}\nsummary: {summary['summary']}",
        highlight=False,
    )
