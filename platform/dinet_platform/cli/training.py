"""``dinet train``, ``sweep``, ``check-models`` and ``demo``: the training side of the platform."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import dinet_platform.console_logs as console_logs
from dinet_platform.cli.common import ConfigOption, SetOption, console, load_or_exit, logged
from dinet_platform.config import ConfigError


def train(
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
    from_stage: Annotated[int | None, typer.Option(help="First stage (mouth size).")] = None,
    to_stage: Annotated[int | None, typer.Option(help="Last stage (mouth size).")] = None,
    init_from: Annotated[
        str | None,
        typer.Option(help="Start the first stage from an MLflow run id, a checkpoint URI or a "
                     "public DINet checkpoint file."),
    ] = None,
    shards: Annotated[
        str | None, typer.Option(help="Prepared shards (default: data.shards).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray dashboard address (http://HEAD:8265): submit each stage as a "
                     "Ray Job there instead of running on an embedded local Ray."),
    ] = None,
    retrain_audio_path: Annotated[
        bool,
        typer.Option("--retrain-audio-path", help="--init-from a checkpoint trained on other "
                     "audio features (e.g. a public DeepSpeech DINet with log-mel data): "
                     "re-initialise its audio encoder for this config's features and re-train "
                     "it (sets training.retrain_audio_path)."),
    ] = False,
) -> None:
    """Train the multiscale pipeline: one Ray Train run per stage, tracked in MLflow."""
    cfg = load_or_exit(config, overrides)
    if retrain_audio_path:
        cfg.training.retrain_audio_path = True
    try:
        if address:
            from dinet_platform.training.schedule import select_stages
            from dinet_platform.training.submit import submit_pipeline

            stages = [s.mouth_size for s in select_stages(cfg, from_stage, to_stage)]
            submit_pipeline(address, cfg, stages, init_from, shards, console)
            return
        from dinet_platform.tracking import client_for
        from dinet_platform.training.pipeline import run_pipeline

        with logged("train", "multiscale training"):
            run_pipeline(cfg, client_for(cfg.tracking), from_stage=from_stage,
                         to_stage=to_stage, init_from=init_from, shards=shards, console=console)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML.")] = Path(
        "configs/sweep.yaml"
    ),
    address: Annotated[
        str | None,
        typer.Option(help="Ray dashboard address: run the sweep there as a Ray Job."),
    ] = None,
) -> None:
    """Search loss weights and attention switches with Ray Tune (ASHA + Optuna)."""
    from dinet_platform.config.sweep import load_sweep_config

    try:
        sweep_config, base = load_sweep_config(config)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        if address:
            from dinet_platform.training.submit import submit_job

            submit_job(address, ["python", "jobs/sweep.py", "--config", config], console)
            return
        from dinet_platform.tracking import client_for
        from dinet_platform.tuning.sweep import run_sweep

        with logged("sweep", f"sweep {sweep_config.name}", total=sweep_config.num_samples):
            run_sweep(sweep_config, base, client_for(base.tracking), console)
    except KeyboardInterrupt as exc:
        console.print(f"[yellow]interrupted:[/yellow] {exc or 'stopped'}", highlight=False)
        raise typer.Exit(130) from None
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def check_models(
    config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None
) -> None:
    """Build the config's networks and time two training steps at every stage resolution."""
    from dinet_platform.training.smoke import check_stages

    console.print(check_stages(load_or_exit(config, overrides)))


def demo(config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None) -> None:
    """Run the end-to-end demo at the demo config."""
    from dinet_platform.demo import DemoRefused, run_demo

    cfg = load_or_exit(config, overrides)
    with console_logs.captured(console, "demo"):  # each step shows its own progress
        try:
            run_demo(cfg, console)
        except DemoRefused as exc:  # the gates said no: the reason, not the log's tail
            console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
