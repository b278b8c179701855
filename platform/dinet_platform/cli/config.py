"""``dinet config``: inspect and validate configuration files."""

from __future__ import annotations

from pathlib import Path

import typer

from dinet_platform.cli.common import ConfigOption, SetOption, console, load_or_exit
from dinet_platform.config import dump_config

config_app = typer.Typer(help="Inspect and validate configuration files.", no_args_is_help=True)


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
