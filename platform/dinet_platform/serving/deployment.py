"""The lip-sync Serve application: an HTTP ingress and a batched model deployment.

``serve deploy configs/serve.yaml`` (cluster) and ``dinet serve`` (local) both build it with
:func:`build_app` from the config's application ``args``. The library does the work
(``dinet_platform.serving``); this module only wires it into Ray Serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from dinet_platform.config.serving import ServingConfig
from dinet_platform.serving.app import AppState, create_app
from dinet_platform.serving.auth import TOKEN_FILE_ENV, load_token
from dinet_platform.serving.avatars import AvatarNotFound, AvatarStore
from dinet_platform.serving.batching import BatchQueue
from dinet_platform.serving.dub_jobs import JobStore
from dinet_platform.serving.dub_runner import DubRunner
from dinet_platform.serving.model import FrameJob, GeneratedFrames, ModelServer, Refusal
from dinet_platform.serving.settings import (
    ServeAppConfig,
    avatar_dir,
    jobs_dir,
    validate_args,
)
from dinet_platform.tracking import client_for

logger = logging.getLogger("ray.serve")
SWEEP_EVERY_S = 300.0


@serve.deployment
class LipSyncModel:
    """One replica: the served engine, its avatar-feature cache, and batching across callers
    (a :class:`BatchQueue`: the next batch takes every caller that arrived while the model
    computed; ``@serve.batch`` would close it ``batch_wait_timeout_s`` after its first).
    The model is (re)loaded in :meth:`reconfigure`, so re-applying the config (or
    ``POST /v1/admin/reload``) swaps it while requests keep flowing."""

    def __init__(self, settings: dict[str, Any]):
        config = ServeAppConfig.model_validate(settings)
        # Ray gives an actor OMP_NUM_THREADS = floor(num_cpus); a replica reserving 1.9 of a
        # 2-core node (the ingress takes the rest) should still compute on both cores. Set
        # before any forward: each worker thread takes the count on its first one.
        torch.set_num_threads(config.serving.forward_threads)
        self.server = ModelServer(config.serving, client_for(config.tracking),
                                  AvatarStore(avatar_dir(config.serving)))
        serving = config.serving
        self.jobs = JobStore(jobs_dir(serving), stale_after_s=serving.dub_heartbeat_timeout_s)
        swept = self.jobs.sweep(serving.dub_job_ttl_s)  # what a killed replica left behind
        if any(vars(swept).values()):
            logger.info("dub jobs at start: %s", swept)
        self.dubs = DubRunner(
            self.jobs, lambda job_id, checkpoint: self.server.dub(self.jobs, job_id, checkpoint),
            serving.max_concurrent_dubs, serving.max_queued_dubs)
        self.batches = BatchQueue(self._generate, serving.max_batch_size,
                                  serving.batch_wait_timeout_s, weight=lambda job: len(job.audio),
                                  max_batch_weight=serving.max_frames_per_forward,
                                  in_flight=serving.parallel_forwards)
        self.error: str | None = None
        self._watch: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        serving = ServingConfig.model_validate(user_config["serving"])
        previous = self.server.serving
        self.server.reconfigure(serving)
        self.batches.configure(serving.max_batch_size, serving.batch_wait_timeout_s,
                               serving.max_frames_per_forward)
        force = (previous.precision, previous.device) != (serving.precision, serving.device)
        await self._load(force)
        if self._watch is None and serving.watch_alias_s > 0:
            self._watch = asyncio.get_running_loop().create_task(self._watch_alias())
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_jobs())

    async def _load(self, force: bool = False) -> bool:
        try:
            changed = await asyncio.to_thread(self.server.ensure_current, force)
            self.error = None
            return changed
        except Exception as exc:  # keep serving the old model (or none) and say why
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the model failed")
            return False

    async def _watch_alias(self) -> None:
        while self.server.serving.watch_alias_s > 0:
            await asyncio.sleep(self.server.serving.watch_alias_s)
            await self._load()

    async def _sweep_jobs(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await asyncio.to_thread(self.jobs.sweep, self.server.serving.dub_job_ttl_s)
            except OSError:
                logger.warning("sweeping dub jobs failed", exc_info=True)

    async def info(self) -> dict[str, Any]:
        return {**self.server.info(), "error": self.error, "dubs_pending": self.dubs.pending}

    async def reload(self) -> dict[str, Any]:
        changed = await self._load()
        return {**self.server.info(), "error": self.error, "changed": changed}

    async def dub(self, job_id: str) -> Refusal | None:
        """Queue a stored dub job on this replica (returns at once); a Refusal when the
        replica holds as many jobs as it may."""
        if self.dubs.submit(job_id):
            return None
        return Refusal(503, "dub", f"{self.dubs.capacity} dub jobs are rendering or queued "
                                   "on the replica: retry later")

    def check_health(self) -> None:
        pass  # an unloaded model is reported by readiness (/readyz), not fatal to the replica

    async def frames(self, avatar_id: str, start: int, audio: np.ndarray, paste: bool = False,
                     gathered: bool = False) -> GeneratedFrames | Refusal:
        model = self.server.model
        if model is None:
            return Refusal(503, "model", f"no model loaded yet ({self.error or 'loading'})")
        expected = (model.info.config.model.audio_channels, model.info.audio_window)
        if audio.shape[1:] != expected:
            return Refusal(422, "features", f"audio windows of shape {expected} expected by "
                                            f"version {model.version}, got {audio.shape[1:]}")
        try:  # load and check the avatar here, so one bad caller never fails a whole batch
            if not self.server.has_avatar(model, avatar_id):  # a hit needs no thread hop
                await asyncio.to_thread(self.server.avatar, model, avatar_id)
            with self.server.priority.live():
                return await self._frames(avatar_id, start, audio.astype(np.float32), paste,
                                          gathered)
        except AvatarNotFound as exc:
            return Refusal(404, "avatar_id", str(exc))
        except ValueError as exc:  # unreadable, or made for another mouth size
            return Refusal(422, "avatar_id", str(exc))

    async def frames_many(self, jobs: list[FrameJob]) -> list[GeneratedFrames | Refusal]:
        """Several callers' windows in one call (the ingress gathers live sessions): each goes
        into the batching queue as :meth:`frames` would, so they share forwards with each
        other and with every other caller."""
        return list(await asyncio.gather(*(self.frames(job.avatar_id, job.start, job.audio,
                                                       job.paste, gathered=True)
                                           for job in jobs)))

    async def _frames(self, avatar_id: str, start: int, audio: np.ndarray, paste: bool,
                      gathered: bool) -> GeneratedFrames:
        """A window longer than the per-forward frame budget goes through in parts
        (``gathered``: see :class:`BatchQueue`)."""
        budget = self.server.serving.max_frames_per_forward
        parts = await asyncio.gather(*(
            self.batches.submit(FrameJob(avatar_id, start + offset,
                                         audio[offset: offset + budget], paste), gathered)
            for offset in range(0, len(audio), budget)))
        if len(parts) == 1:
            return parts[0]
        return GeneratedFrames(np.concatenate([part.frames for part in parts]),
                               parts[-1].version, max(part.batch_size for part in parts))

    def _generate(self, jobs: list[FrameJob]) -> list[GeneratedFrames]:
        outputs, model = self.server.generate(jobs)  # in the batch queue's worker thread
        return [GeneratedFrames(out, model.version, len(jobs)) for out in outputs]


@serve.deployment
@serve.ingress()
class LipSyncIngress:
    """The HTTP API; its FastAPI app is built per replica, holding the model handle."""

    def __init__(self, model: DeploymentHandle, settings: dict[str, Any]):
        config = ServeAppConfig.model_validate(settings)
        self.state = AppState(settings=config, token=load_token(),
                              store=AvatarStore(avatar_dir(config.serving)),
                              model=replica_handle(model),
                              jobs=JobStore(jobs_dir(config.serving)))

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app()
        app.state.dinet = self.state
        return app


def replica_handle(bound: DeploymentHandle) -> DeploymentHandle:
    """The same deployment's handle, made in this replica.

    A handle passed to ``bind`` is built in the process that deploys the app and carries that
    process's transport. Serve's throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, set for
    the cluster's processes: ``start_local_ray`` does) has replicas call each other over gRPC,
    but a handle from a driver without that variable still makes Ray actor calls, whose
    replies over 100 KB (a few float32 face crops) go through the object store: measured on 2
    cores, the 5-frame live route ran ~20 % under the model alone that way."""
    return serve.get_deployment_handle(bound.deployment_name, bound.app_name)


# Where replicas find state and the token *file* (never the token itself: runtime envs are
# visible in the dashboard). A replica on an already running Ray does not inherit the
# environment of the process that deploys it.
FORWARDED_ENV = ("DINET_HOME", "MLFLOW_TRACKING_URI", TOKEN_FILE_ENV)


def forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def ingress_max_ongoing(model_max_ongoing: int) -> int:
    """The ingress only awaits the model: it holds every request the model may queue."""
    return max(64, 4 * model_max_ongoing)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application for ``args`` (``{"serving": ..., "tracking": ...}``). Raises a
    ConfigError naming the field for bad settings, and refuses to start without a token."""
    config = validate_args(args)
    load_token()
    serving = config.serving
    settings = config.model_dump(mode="json")
    runtime_env = {"env_vars": forwarded_env()}
    model_options: dict[str, Any] = {
        "max_ongoing_requests": serving.max_ongoing_requests,
        "max_queued_requests": serving.max_queued_requests,
        "ray_actor_options": {"num_cpus": serving.cpus_per_replica,
                              "num_gpus": serving.replica_gpus, "runtime_env": runtime_env},
        # A fresh stamp makes every deploy call reconfigure: re-applying the config re-resolves
        # the alias even when no setting changed.
        "user_config": {"serving": settings["serving"], "applied_at": time.time()},
    }
    if serving.autoscaling is not None:
        model_options["autoscaling_config"] = serving.autoscaling.model_dump()
    else:
        model_options["num_replicas"] = serving.num_replicas
    model = LipSyncModel.options(**model_options).bind(settings)
    ingress = LipSyncIngress.options(
        max_ongoing_requests=ingress_max_ongoing(serving.max_ongoing_requests),
        max_queued_requests=4 * serving.max_queued_requests,
        ray_actor_options={"num_cpus": 0.1, "runtime_env": runtime_env},
    )
    return ingress.bind(model, settings)
