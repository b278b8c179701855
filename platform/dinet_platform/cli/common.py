"""What every ``dinet`` command shares: the console, the config options, failing with a reason."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import dinet_platform.console_logs as console_logs
from dinet_platform.config import ConfigError, load_config

# Wide enough for the summary tables when output goes to a log instead of a terminal.
console = Console(width=None if sys.stdout.isatty() else 120)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML config file.", exists=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one field, e.g. --set loss.temporal.frame_diff=5"),
]


def interrupt_on_sigterm(*_args) -> None:
    """A SIGTERM (job stopped, container shut down) unwinds like Ctrl-C, so every command's
    cleanup runs: MLflow runs are marked KILLED and a Ray started here is shut down."""
    raise KeyboardInterrupt


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


@contextmanager
def logged(name: str, description: str, total: float | None = None) -> Iterator[None]:
    """A command's Ray/MLflow work: their output to ``$DINET_HOME/logs/<time>-<name>.log``
    (the path printed once; the last lines on failure), one progress display on the console.
    ``dinet --verbose`` prints everything instead."""
    with console_logs.captured(console, name), console_logs.progress(console, description,
                                                                     total):
        yield
