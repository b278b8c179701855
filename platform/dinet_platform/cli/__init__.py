"""``dinet``: the one command-line entry of the platform.

Each concern owns its commands (``training``, ``data``, ``evaluation``, ``registry``,
``inference``, ``serve``, ``config``); ``common`` holds what they share. No domain package
imports this one: the CLI sits on top of everything else.
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

import dinet_platform.console_logs as console_logs
from dinet_platform.cli.common import interrupt_on_sigterm
from dinet_platform.cli.config import config_app
from dinet_platform.cli.data import data_app
from dinet_platform.cli.evaluation import evaluate, train_syncnet
from dinet_platform.cli.inference import dub, optimize_command
from dinet_platform.cli.registry import registry_app
from dinet_platform.cli.serve import serve_command
from dinet_platform.cli.training import check_models, demo, sweep, train

app = typer.Typer(
    name="dinet",
    help="Train, tune, evaluate and serve DINet lip-sync models on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", envvar=console_logs.VERBOSE_ENV,
                     help="Print Ray's, Ray Train/Tune/Serve's and MLflow's own output on the "
                     "console too. Without it that output goes to $DINET_HOME/logs/ (the path "
                     "is printed, and the log's last lines when a command fails)."),
    ] = False,
) -> None:
    console_logs.set_verbose(verbose)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt_on_sigterm)


app.add_typer(config_app, name="config")
app.command("train")(train)
app.command("sweep")(sweep)
app.command("check-models")(check_models)
app.command("demo")(demo)
app.command("evaluate")(evaluate)
app.command("train-syncnet")(train_syncnet)
app.command("optimize")(optimize_command)
app.command("dub")(dub)
app.command("serve")(serve_command)
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")
