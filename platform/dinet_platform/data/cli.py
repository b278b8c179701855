"""``dinet data ...`` subcommands."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Generate, prepare and analyze training data.", no_args_is_help=True)
