"""``dinet registry ...``: list, register, promote and roll back model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dinet_platform.cli.common import (
    ConfigOption,
    SetOption,
    console,
    fail,
    load_or_exit,
    logged,
)

registry_app = typer.Typer(
    help="Register, promote (through quality gates) and roll back models in the MLflow Model "
    "Registry.",
    no_args_is_help=True,
)

DataOption = Annotated[
    str | None,
    typer.Option("--data", help="Evaluation shards (default: evaluation.shards, else "
                 "data.shards)."),
]


def _client(cfg):
    from dinet_platform.tracking import client_for

    return client_for(cfg.tracking)


@registry_app.command("list")
def list_command(
    config: ConfigOption = Path("configs/demo.yaml"), overrides: SetOption = None
) -> None:
    """Versions with their aliases and key metrics, newest first."""
    from dinet_platform.registry.versions import list_versions

    cfg = load_or_exit(config, overrides)
    name = cfg.tracking.registered_model
    rows = list_versions(_client(cfg), name)
    if not rows:
        console.print(f"registered model {name!r} has no versions yet (`dinet registry "
                      "register --run RUN_ID`)")
        return
    table = Table(title=f"registered model {name}")
    for column in ("version", "aliases", "created", "mouth", "mouth PSNR", "mouth SSIM",
                   "sync conf.", "warp err.", "gates", "source run"):
        table.add_column(column)
    for row in rows:
        metrics = row["metrics"]

        def show(key: str, digits: int, values: dict = metrics) -> str:
            return f"{values[key]:.{digits}f}" if key in values else "-"

        table.add_row(
            str(row["version"]), ", ".join(row["aliases"]), row["created"], row["mouth_size"],
            show("mouth_psnr", 2), show("mouth_ssim", 3), show("lse_c", 3),
            show("warp_error", 4),
            ", ".join(f"{k}: {v}" for k, v in sorted(row["gates"].items())),
            row["source_run"],
        )
    console.print(table)


@registry_app.command("register")
def register_command(
    run: Annotated[str, typer.Option("--run", help="Pipeline run id (its final stage) or "
                                     "stage run id.")],
    data: DataOption = None,
    evaluate: Annotated[
        bool, typer.Option(help="Evaluate on held-out data and tag the version with metrics.")
    ] = True,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
) -> None:
    """Register a trained model as a new version with alias 'candidate'."""
    from dinet_platform.promotion.workflow import register_model

    cfg = load_or_exit(config, overrides)
    try:
        with logged("registry-register", f"registering run {run}"):
            outcome = register_model(cfg, _client(cfg), run, evaluate=evaluate, shards=data,
                                     console=console)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise fail(exc) from None
    if outcome.existed:
        return
    console.print(f"registered {outcome.name} version {outcome.version} (@candidate) from "
                  f"stage run {outcome.source_run}", highlight=False)
    if outcome.evaluation is not None:
        from dinet_platform.evaluation.runs import metrics_table

        console.print(metrics_table(outcome.evaluation.result))
        console.print(f"evaluation run {outcome.evaluation.run_id}: "
                      f"{outcome.evaluation.png_path}", highlight=False)


@registry_app.command("promote")
def promote_command(
    version: Annotated[int, typer.Option("--version", "-v", help="Version to promote.")],
    to: Annotated[str, typer.Option("--to", help="staging or production.")],
    force: Annotated[
        bool, typer.Option(help="Move the alias even if gates fail (needs --reason).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why (recorded in the tags).")] = None,
    data: DataOption = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
) -> None:
    """Evaluate VERSION against the alias's holder and move the alias if the gates pass."""
    from dinet_platform.evaluation.runs import metrics_table
    from dinet_platform.promotion.workflow import promote

    cfg = load_or_exit(config, overrides)
    try:
        with logged("registry-promote", f"evaluating version {version} for @{to}"):
            outcome = promote(cfg, _client(cfg), version, to, force=force, reason=reason,
                              shards=data, console=console)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise fail(exc) from None
    if outcome.evaluation is not None:
        console.print(metrics_table(outcome.evaluation.result,
                                    f"v{version} vs {to} holder v{outcome.holder}"))
        console.print(f"evaluation run {outcome.evaluation.run_id}: "
                      f"{outcome.evaluation.png_path}", highlight=False)
    for gate in outcome.gates:
        mark = "-" if gate.skipped else ("[green]pass[/green]" if gate.passed
                                         else "[red]FAIL[/red]")
        console.print(f"  {mark} {gate.describe()}")
    if outcome.moved:
        how = " (FORCED: gates failed)" if outcome.forced else ""
        previous = f"; v{outcome.holder} is now the rollback target" if outcome.holder else ""
        console.print(f"[green]{outcome.name}@{to} -> v{version}{how}{previous}[/green]")
        return
    console.print(f"[red]refused:[/red] v{version} did not pass the gates against "
                  f"v{outcome.holder}; {to} unchanged (override: --force --reason '...')")
    raise typer.Exit(1)


@registry_app.command("rollback")
def rollback_command(
    alias: Annotated[str, typer.Option("--alias", help="staging or production.")] = "production",
    reason: Annotated[str | None, typer.Option(help="Why (recorded in the tags).")] = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
) -> None:
    """Point the alias back at the version it replaced."""
    from dinet_platform.registry.versions import rollback

    cfg = load_or_exit(config, overrides)
    try:
        outcome = rollback(cfg, _client(cfg), alias, reason)
    except (ValueError, RuntimeError) as exc:
        raise fail(exc) from None
    console.print(f"{outcome.name}@{alias}: v{outcome.replaced} -> v{outcome.restored} "
                  f"(v{outcome.replaced} kept as the rollback target)", highlight=False)
