"""``dinet``: the one command-line entry of the platform."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dinet_platform.config import ConfigError, dump_config, load_config

app = typer.Typer(
    name="dinet",
    help="Train, tune, evaluate and serve DINet lip-sync models on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Wide enough for the summary tables when output goes to a log instead of a terminal.
console = Console(width=None if sys.stdout.isatty() else 120)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML config file.", exists=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one field, e.g. --set loss.temporal.frame_diff=5"),
]


def _interrupt_on_sigterm(*_args) -> None:
    # A SIGTERM (job stopped, container shut down) unwinds like Ctrl-C, so every command's
    # cleanup runs: MLflow runs are marked KILLED and a Ray started here is shut down.
    raise KeyboardInterrupt


@app.callback()
def _main() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def fail(exc: BaseException) -> typer.Exit:
    """Print why a command failed; ``raise fail(exc) from None`` ends it with exit code 2."""
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


def load_or_exit(config: Path, overrides: list[str] | None):
    """Load a config for a command; a bad config ends the command with the reason."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(
    config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None
) -> None:
    """Print the resolved configuration (defaults filled in, overrides applied)."""
    typer.echo(dump_config(load_or_exit(config, overrides)), nl=False)


@config_app.command("validate")
def config_validate(
    config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None
) -> None:
    """Validate a configuration; exit 2 with the offending fields if it is invalid."""
    cfg = load_or_exit(config, overrides)
    sizes = ", ".join(str(s.mouth_size) for s in cfg.stages)
    console.print(f"[green]ok[/green] {config}: {len(cfg.stages)} stages (mouth {sizes})")


@app.command("train")
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

        run_pipeline(cfg, client_for(cfg.tracking), from_stage=from_stage, to_stage=to_stage,
                     init_from=init_from, shards=shards, console=console)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command("sweep")
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

        run_sweep(sweep_config, base, client_for(base.tracking), console)
    except KeyboardInterrupt as exc:
        console.print(f"[yellow]interrupted:[/yellow] {exc or 'stopped'}", highlight=False)
        raise typer.Exit(130) from None
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command("check-models")
def check_models(
    config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None
) -> None:
    """Build the config's networks and time two training steps at every stage resolution."""
    from dinet_platform.training.smoke import check_stages

    console.print(check_stages(load_or_exit(config, overrides)))


@app.command("demo")
def demo(config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None) -> None:
    """Run the end-to-end demo at the demo config."""
    from dinet_platform.demo import DemoRefused, run_demo

    try:
        run_demo(load_or_exit(config, overrides), console)
    except DemoRefused as exc:
        console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _register_subcommands() -> None:
    # Each concern owns its sub-app; imported lazily so `dinet --help` stays fast.
    from dinet_platform.data.cli import data_app

    app.add_typer(data_app, name="data")
    from dinet_platform.evaluation.cli import evaluate, train_syncnet
    from dinet_platform.registry.cli import registry_app

    app.command("evaluate")(evaluate)
    app.command("train-syncnet")(train_syncnet)
    app.add_typer(registry_app, name="registry")
    from dinet_platform.inference.cli import dub, optimize_model

    app.command("optimize")(optimize_model)
    app.command("dub")(dub)
    from dinet_platform.serving.cli import serve_command

    app.command("serve")(serve_command)


_register_subcommands()

