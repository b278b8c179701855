"""``dinet evaluate`` and ``dinet train-syncnet`` (registered on the main app by ``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinet_platform.cli.common import ConfigOption, SetOption, console, load_or_exit, logged

DataOption = Annotated[
    str | None,
    typer.Option("--data", help="Prepared shards (default: evaluation.shards, else data.shards)."),
]


def evaluate(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION, an MLflow "
                     "run id (stage or pipeline), an artifact URI or a checkpoint path. Repeat "
                     "to compare several in one run."),
    ],
    data: DataOption = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for evaluation.json and comparison.png "
                     "(default $DINET_HOME/evaluations/<run id>)."),
    ] = None,
) -> None:
    """Evaluate models on held-out videos against baselines; JSON + PNG + an MLflow run."""
    cfg = load_or_exit(config, overrides)
    from dinet_platform.evaluation.runs import entry_name, metrics_table, run_evaluation
    from dinet_platform.tracking import client_for

    names = [entry_name(ref) for ref in model]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    try:
        with logged("evaluate", f"evaluating {', '.join(names)}"):
            outcome = run_evaluation(cfg, client_for(cfg.tracking),
                                     list(zip(names, model, strict=True)), shards=data,
                                     out_dir=out, console=console)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(metrics_table(outcome.result))
    for note in outcome.result.info["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(f"report: {outcome.json_path}\nplot:   {outcome.png_path}\n"
                  f"MLflow evaluation run: {outcome.run_id}", highlight=False)


def train_syncnet(
    data: DataOption = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
    register: Annotated[
        bool, typer.Option(help="Register the expert in the MLflow Model Registry.")
    ] = True,
) -> None:
    """Train the sync expert (SyncNet-style) on the shards; report held-out accuracy."""
    cfg = load_or_exit(config, overrides)
    from dinet_platform.evaluation.runs import run_train_syncnet
    from dinet_platform.tracking import client_for

    try:
        with logged("train-syncnet", "training the sync expert"):
            outcome = run_train_syncnet(cfg, client_for(cfg.tracking), shards=data,
                                        register=register, console=console)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    m = outcome.metrics
    console.print(
        f"sync expert: held-out accuracy {m['val_accuracy']:.3f} on {int(m['val_pairs'])} "
        f"in-sync/shifted pairs, mean |offset| on real held-out videos "
        f"{m['val_offset_abs']:.2f} frames, {int(m['steps'])} steps in "
        f"{m['train_time_s']:.0f}s", highlight=False)
    console.print(f"MLflow run {outcome.run_id}; use it as {outcome.uri}", highlight=False)
    if outcome.version is not None:
        state = ("now @production (used by evaluation)" if outcome.production else
                 f"below syncnet.min_accuracy {cfg.syncnet.min_accuracy}: not made @production")
        console.print(f"registered {cfg.syncnet.registered_model} version {outcome.version}: "
                      f"{state}", highlight=False)
