"""Where local state lives: everything under one directory, ``$DINET_HOME`` (default ./.dinet)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".dinet"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The repository: configs/ and jobs/ live here (an editable install)."""


def dinet_home() -> Path:
    """The root of all local state (MLflow store, Ray storage, data, demo outputs)."""
    return Path(os.environ.get("DINET_HOME", DEFAULT_HOME)).expanduser().resolve()


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri(configured: str | None = None) -> str:
    """MLflow tracking/registry URI: ``$MLFLOW_TRACKING_URI`` wins, then the config, then the
    embedded SQLite store under ``$DINET_HOME``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    home = ensure_dir(dinet_home())
    return f"sqlite:///{home / 'mlflow.db'}"


def shards_path(configured: str | Path | None = None) -> Path:
    """Prepared training shards: the config's ``data.shards``, or ``$DINET_HOME/data/shards``."""
    return Path(configured) if configured else dinet_home() / "data" / "shards"


def ray_storage_path(configured: str | None = None) -> str:
    """Ray Train ``storage_path``: the config's (shared storage on a cluster) or a local dir."""
    if configured:
        return configured
    return str(ensure_dir(dinet_home() / "ray"))
