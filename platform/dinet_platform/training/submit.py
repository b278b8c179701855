"""Submitting the pipeline to a Ray cluster: one Ray Job per stage, in order.

Each job runs ``jobs/train_stage.py`` for one stage, with the resolved config (overrides
applied) in its environment, so the job trains exactly what the submitter validated; inside
the job the stage joins the
pipeline of its config and data (see :mod:`.pipeline`), so it starts from the previous stage's
checkpoint through MLflow. The submitter waits for each job, following its logs, before it
submits the next.

Token auth (on by default for ``ray start`` clusters in Ray 2.60): set ``RAY_AUTH_MODE=token``
and the cluster's token in ``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``); the job client sends
it with every request. The plain-Ray equivalent of one stage is::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train_stage.py --config configs/multiscale.yaml --stage 64
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.paths import PROJECT_ROOT

EXCLUDES = [".venv", ".dinet", ".git", "bench/results", "**/__pycache__", ".pytest_cache"]
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "DINET_HOME")
AGENT_WAIT_S = 120


CONFIG_VARIABLE = "DINET_CONFIG"
SERVER_SCHEMES = ("http://", "https://", "databricks")


def job_environment(environ: Mapping[str, str], console: Console) -> dict[str, str]:
    """What every job gets from the submitter's environment: the tracking store and home.

    A local MLflow store (a SQLite file or a directory) is forwarded too -- on shared storage
    that is a working setup -- but the jobs write to that path *on the cluster's nodes*, which
    is rarely what the submitter means, so say so."""
    forwarded = {k: environ[k] for k in FORWARDED_ENV if environ.get(k)}
    uri = forwarded.get("MLFLOW_TRACKING_URI")
    if uri is not None and not uri.startswith(SERVER_SCHEMES):
        console.print(
            f"[yellow]warning:[/] MLFLOW_TRACKING_URI={uri} is a local store: the cluster's jobs "
            "will write to that path on the cluster's nodes. Unless it is on storage shared "
            "with this machine, set MLFLOW_TRACKING_URI to the cluster's `mlflow server` "
            "(http://HEAD:5000) to see the runs here."
        )
    return forwarded


def stage_command(mouth_size: int, init_from: str | None, shards: str | None) -> list[str]:
    """The job of one stage; its config comes resolved in ``$DINET_CONFIG``."""
    args = ["python", "jobs/train_stage.py", "--config", f"env:{CONFIG_VARIABLE}",
            "--stage", str(mouth_size)]
    if init_from:
        args += ["--init-from", init_from]
    if shards:
        args += ["--shards", shards]
    return args


def _in_project(path: Path) -> Path:
    """Jobs run in a copy of the project (working_dir): files they read must be part of it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(PROJECT_ROOT)
    except ValueError:
        raise ValueError(
            f"{path} is outside the project directory {PROJECT_ROOT}; cluster jobs receive a "
            "copy of the project, so put it under the project (e.g. configs/)"
        ) from None


def submit_job(
    address: str,
    command: list[str | Path],
    console: Console | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Submit ``command`` (paths made project-relative) as a Ray Job with the project as its
    working dir and ``env`` added to its environment, follow its logs until it ends, and raise
    unless it succeeded."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    console = console or Console()
    entrypoint = shlex.join(
        _in_project(part).as_posix() if isinstance(part, Path) else part for part in command
    )
    # PYTHONPATH: the job (and every worker it starts, all in the uploaded working dir) runs
    # the library code that was submitted, not whatever version the cluster image holds.
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONPATH": "platform"}
    env_vars.update(job_environment(os.environ, console))
    env_vars.update(env or {})
    client = JobSubmissionClient(address)
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": env_vars}
    # A head that just started answers HTTP before its job agent registers ("No available
    # agent to submit job, please try again later"): retry that, and only that, for a while.
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    console.print(f"submitted Ray Job {job_id}: {entrypoint}")
    asyncio.run(_follow(client, job_id))
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(
            f"Ray Job {job_id} ended {status}; see `ray job logs {job_id} --address {address}`"
        )
    return job_id


def submit_pipeline(
    address: str,
    config: DINetConfig,
    stages: list[int],
    init_from: str | None = None,
    shards: str | None = None,
    console: Console | None = None,
) -> list[str]:
    """Submit one job per stage, each after the previous succeeded; return the job ids."""
    env = {CONFIG_VARIABLE: dump_config(config)}
    return [
        submit_job(
            address,
            stage_command(mouth_size, init_from if index == 0 else None, shards),
            console,
            env,
        )
        for index, mouth_size in enumerate(stages)
    ]


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
