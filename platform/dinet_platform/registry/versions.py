"""The model store: versions, aliases and their provenance in the MLflow Model Registry.

Every registration of the platform -- a trained generator (:mod:`dinet_platform.promotion`),
an optimized artifact (:mod:`.optimized`), a sync expert
(:mod:`dinet_platform.evaluation.runs`) -- goes through :func:`register_version`, which records
who (:func:`who`) registered what from which code. Aliases never name a missing version: a
version is looked up before any alias is pointed at it, the rollback alias is set before the
main alias moves (an interruption in between leaves the main alias where it was), and nothing
is deleted.

Concurrent moves. MLflow has no compare-and-set for aliases, so an alias move here is: take the
model's registry lock (:func:`registry_lock`), read the holder again, refuse
(:class:`AliasMovedError`, naming both versions) if it is not the holder the decision was
made against (a promotion's gates, a rollback's reading), move, read back. Two promotions
through this module that share the lock (same ``$DINET_HOME``, e.g. the cluster's on EFS)
cannot both move: the second is refused. What remains: writers that do not share the lock
(another ``$DINET_HOME``, the MLflow UI or API directly) can still move the alias between the
re-read and the move, a window of one store round trip; the read-back after the move catches
the ones that land after it and says so, but MLflow keeps whichever move came last.

Aliases: ``candidate`` (set on registration), ``staging`` and ``production`` (moved by
promotion, :mod:`dinet_platform.promotion`), and for each promotable alias the version it
replaced: ``previous`` for production, ``previous-staging`` for staging (so a staging promotion
never overwrites production's rollback target).
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dinet_platform.config import DINetConfig
from dinet_platform.paths import dinet_home

CANDIDATE, STAGING, PRODUCTION = "candidate", "staging", "production"
PROMOTION_TARGETS = (STAGING, PRODUCTION)
SOURCE_RUN_TAG = "dinet.source_run"
KEY_METRICS = ("mouth_psnr", "mouth_ssim", "lse_c", "warp_error")
TAG_LIMIT = 5000


IDENTITY_ENV = "DINET_USER"
LOCK_TIMEOUT_S = 120.0


def who() -> str:
    """Who is acting, for the registry's records, most trusted first: ``$DINET_USER`` (set by
    a front end that authenticated the caller), the MLflow username of this client
    (``$MLFLOW_TRACKING_USERNAME`` or ``~/.mlflow/credentials``: the identity an MLflow server
    with basic-auth checked), else the OS user (``$USER``, which anyone can set)."""
    identity = os.environ.get(IDENTITY_ENV, "").strip()
    if identity:
        return identity
    try:
        from mlflow.utils.credentials import read_mlflow_creds

        username = (read_mlflow_creds().username or "").strip()
    except Exception:  # an unreadable credentials file names nobody
        username = ""
    if username:
        return username
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "unknown"


class AliasMovedError(RuntimeError):
    """An alias no longer names the version a decision about it was made against."""


def git_commit() -> str:
    """The commit of the code running now (``-dirty`` with uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def previous_alias(alias: str) -> str:
    """Where the holder an alias replaced is kept for rollback."""
    return "previous" if alias == PRODUCTION else f"previous-{alias}"


def registry_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException:  # created concurrently since we looked
            client.get_registered_model(name)


def require_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    """The version, or a clear error listing the versions that exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        pass
    try:
        existing = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        existing = []
    where = f"versions {existing}" if existing else "no versions"
    raise ValueError(f"registered model {name!r} has no version {version} ({where})")


def alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@contextmanager
def registry_lock(client: MlflowClient, name: str,
                  timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive, for the duration, among alias moves of model ``name`` in store
    ``client.tracking_uri`` made from processes (and threads) sharing this ``$DINET_HOME``: an
    ``flock`` on ``$DINET_HOME/locks/``, which a shared file system with locking (EFS, NFSv4)
    extends across machines. Held for a few store calls, never across an evaluation."""
    key = hashlib.sha256(f"{client.tracking_uri}\n{name}".encode()).hexdigest()[:16]
    folder = dinet_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"registry-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:64]}-{key}.lock"
    deadline = time.monotonic() + timeout_s
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"registry lock {path} still held after {timeout_s:.0f}s "
                                       f"by another move of {name!r}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_UNCHECKED = object()


def move_alias(client: MlflowClient, name: str, alias: str, version: int, *,
               expected: int | object | None = _UNCHECKED) -> int | None:
    """Point ``alias`` at ``version`` (which must exist); the holder it replaces becomes
    :func:`previous_alias`. Returns that old holder (None if there was none).

    With ``expected`` (a version, or None for "no holder"), the move is a compare-and-set as
    far as MLflow allows (see the module doc): refused with :class:`AliasMovedError` if the
    alias's holder is no longer ``expected``."""
    require_version(client, name, version)
    with registry_lock(client, name):
        holder = alias_holder(client, name, alias)
        if expected is not _UNCHECKED and holder != expected:
            raise AliasMovedError(
                f"{name}@{alias} moved since v{version} was checked against "
                f"{_named(expected)}: it now names {_named(holder)}. {alias!r} not moved to "
                f"v{version}; run it again to check v{version} against {_named(holder)}")
        if holder is not None and holder != version:
            client.set_registered_model_alias(name, previous_alias(alias), str(holder))
        client.set_registered_model_alias(name, alias, str(version))
        now = alias_holder(client, name, alias)
    if now != version:
        raise AliasMovedError(
            f"{name}@{alias} was moved to {_named(now)} by another writer while this moved it "
            f"from {_named(holder)} to v{version}: MLflow kept the other move")
    return holder


def _named(version: int | object | None) -> str:
    return "no version" if version is None else f"v{version}"


def tag_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 3] + "..."


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {f"metric.{name}": f"{value:.6g}" for name, value in metrics.items()}


def register_version(
    client: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str],
    *,
    description: str | None = None,
    model_description: str = "",
    alias: str | None = CANDIDATE,
) -> int:
    """Register ``source`` (an artifact URI of run ``run_id``) as a new version of ``name``,
    created on first use with ``model_description``; the version's tags are ``tags`` plus who
    registered it, when, and from which commit. ``alias`` (``candidate`` by default, None for
    none) is pointed at the new version. Returns its number."""
    ensure_registered_model(client, name, model_description)
    provenance = {"dinet.git_commit": git_commit(), "dinet.registered_by": who(),
                  "dinet.registered_at": registry_stamp()}
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={**provenance, **tags}, description=description)
    number = int(version.version)
    if alias:
        client.set_registered_model_alias(name, alias, str(number))
    return number


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        return []


# --------------------------------------------------------------------------- rollback


@dataclass
class RollbackOutcome:
    name: str
    alias: str
    restored: int
    replaced: int


def rollback(
    config: DINetConfig, client: MlflowClient, alias: str, reason: str | None = None
) -> RollbackOutcome:
    """Point ``alias`` back at the version it replaced (``previous`` for production); the
    version rolled back from becomes the rollback target, so a second rollback undoes it.

    Under the model's registry lock, ``previous`` moves first, then ``alias``: an interruption
    in between leaves ``alias`` where it was (both name the current version; a second rollback
    then refuses, saying so), never a served alias pointing back while the way forward is
    lost. The holder is read again right before the moves (:class:`AliasMovedError` if it
    changed since)."""
    name = config.tracking.registered_model
    if alias not in PROMOTION_TARGETS:
        raise ValueError(f"can only roll back {' or '.join(PROMOTION_TARGETS)}, not {alias!r}")
    target_alias = previous_alias(alias)
    with registry_lock(client, name):
        current = alias_holder(client, name, alias)
        if current is None:
            raise ValueError(f"registered model {name!r} has no alias {alias!r}: nothing to "
                             "roll back")
        previous = alias_holder(client, name, target_alias)
        if previous is None:
            raise ValueError(f"no {target_alias!r} version recorded for {alias!r} of {name!r}: "
                             "nothing to roll back to")
        if previous == current:
            raise ValueError(f"{name}@{target_alias} names v{current}, the version {alias!r} "
                             "holds (an interrupted rollback?): nothing to roll back to; "
                             f"promote the version to restore instead")
        require_version(client, name, previous)
        client.set_registered_model_alias(name, target_alias, str(current))
        if alias_holder(client, name, alias) != current:
            raise AliasMovedError(f"{name}@{alias} moved away from v{current} during the "
                                  f"rollback; {target_alias!r} now names v{current}")
        client.set_registered_model_alias(name, alias, str(previous))
    record = {
        f"dinet.rollback.{alias}.by": who(),
        f"dinet.rollback.{alias}.at": registry_stamp(),
        f"dinet.rollback.{alias}.from_version": str(current),
        f"dinet.rollback.{alias}.reason": tag_text(reason or ""),
    }
    for key, value in record.items():
        client.set_model_version_tag(name, str(previous), key, value)
    return RollbackOutcome(name, alias, previous, current)


# --------------------------------------------------------------------------- list


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Versions newest first: aliases, key metrics and provenance from the tags."""
    rows = []
    try:  # search results do not carry aliases; the registered model does
        aliases = dict(client.get_registered_model(name).aliases)
    except MlflowException:
        return rows
    for version in sorted(all_versions(client, name), key=lambda v: -int(v.version)):
        tags = version.tags
        rows.append({
            "version": int(version.version),
            "aliases": sorted(a for a, v in aliases.items() if int(v) == int(version.version)),
            "created": time.strftime("%Y-%m-%d %H:%M",
                                     time.localtime(version.creation_timestamp / 1000)),
            "mouth_size": tags.get("dinet.mouth_size", ""),
            "source_run": tags.get(SOURCE_RUN_TAG, version.run_id or ""),
            "metrics": {m: float(tags[f"metric.{m}"]) for m in KEY_METRICS
                        if f"metric.{m}" in tags},
            "gates": {k.split(".")[2]: v for k, v in tags.items()
                      if k.startswith("dinet.gates.") and k.count(".") == 2},
        })
    return rows
