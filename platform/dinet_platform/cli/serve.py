"""``dinet serve``: the lip-sync Serve app on the local Ray (or a cluster), in the foreground.

Ctrl-C or SIGTERM (the CLI turns it into Ctrl-C) shuts Serve down, then the Ray started here.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

import dinet_platform.console_logs as console_logs
from dinet_platform.cli.common import console, interrupt_on_sigterm, logged


def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ray Serve config file whose "
                                         "app args hold the serving settings.")]
    = Path("configs/serve.yaml"),
    port: Annotated[int | None, typer.Option(help="HTTP port (default serving.port).")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (default serving.host).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a "
                                                "local Ray).")] = None,
) -> None:
    """Serve the registry's model over HTTP (batched, int8 on CPU) until Ctrl-C."""
    from dinet_platform.config import ConfigError
    from dinet_platform.serving.auth import AuthConfigError, load_token
    from dinet_platform.serving.settings import load_serve_config

    overrides = {"serving": {k: v for k, v in (("port", port), ("host", host)) if v}}
    try:
        settings = load_serve_config(config, overrides)
        load_token()
    except (ConfigError, AuthConfigError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    from dinet_platform.ray_runtime import ray_session
    from dinet_platform.serving.local import serve_app

    serving = settings.serving
    with logged("serve", "starting Ray"), ray_session(address):
        if threading.current_thread() is threading.main_thread():
            # ray.init replaced the CLI's handler with sys.exit: SIGTERM unwinds like Ctrl-C.
            signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        try:
            console.print(f"deploying models:/{serving.model_name}@{serving.alias} "
                          f"({serving.precision}, {serving.device}) ...")
            console_logs.update("starting Serve")
            with serve_app(settings) as url:
                console.print(f"[green]serving[/green] {url}  (API docs {url}/docs, readiness "
                              f"{url}/readyz); Ctrl-C to stop", highlight=False)
                console_logs.update(f"serving {url}")
                while True:
                    time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping Serve ...")
            console_logs.update("stopping Serve and Ray")
    console.print("Serve and Ray stopped")
