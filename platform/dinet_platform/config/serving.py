"""``dinet serve`` / ``serve deploy`` settings: the model served, batching, limits, storage."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from dinet_platform.config.base import Positive, Strict


class AutoscalingConfig(Strict):
    """Ray Serve autoscaling of the model deployment (replaces ``num_replicas`` when set)."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 2
    target_ongoing_requests: Positive = 8.0
    """Requests in flight per replica the autoscaler aims for (about one full batch)."""

    @model_validator(mode="after")
    def _range(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas "
                             f"({self.min_replicas})")
        return self


class StreamConfig(Strict):
    """Live sessions over WebSocket (``/v1/avatars/{id}/stream``), per ingress replica."""

    max_sessions: Annotated[int, Field(ge=1)] = 16
    """Sessions one ingress replica holds at once; beyond, a new one is refused (503)."""
    token_ttl_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 60.0
    """How long a session token minted by ``POST /v1/avatars/{id}/sessions`` may be used to
    connect (once)."""
    max_unacked_frames: Annotated[int, Field(ge=1)] = 50
    """Frames sent that the client has not acknowledged yet (2 s at 25 fps): a client that
    reads slower falls behind by at most this many; then its frames are dropped (or, with
    ``slow_reader: pause``, computing pauses) and it is told."""
    max_lag_s: Positive = 0.5
    """``slow_reader: drop``: a frame whose audio came in longer ago than this is dropped
    instead of computed (all but the newest): a model or a client slower than real time
    shows the latest audio, not a growing backlog."""
    max_buffered_s: Positive = 30.0
    """Audio a paused session may hold waiting for its client; beyond, it is closed."""
    idle_timeout_s: Positive = 60.0
    """A session with no message from its client for this long is closed."""
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    """Largest message a client may send (a chunk of PCM audio: 1 MiB is 32 s at 16 kHz)."""
    max_frames_per_call: Annotated[int, Field(ge=1)] = 25
    """Frames of one session in one call to the model (it waits for audio less often)."""
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 85
    calls_in_flight: Annotated[int, Field(ge=1)] = 1
    """Calls carrying sessions' windows that the ingress keeps out at once: 1 gathers the most
    sessions per forward (one replica); the number of model replicas lets each compute."""
    batch_wait_s: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    """How long the ingress waits for the other sessions expected back before it sends the
    ready windows to the model together (half a frame at 25 fps)."""


class ServingConfig(Strict):
    """``dinet serve`` / ``serve deploy``: the model served, batching, limits and storage."""

    model_name: str = "dinet"
    alias: str = "production"
    """The registry alias served (``models:/<model_name>@<alias>``)."""
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["int8", "fp32", "fp16", "bf16"] = "int8"
    """int8 (static, calibrated) on CPU; fp16/bf16 on CUDA; fp32 anywhere."""
    num_replicas: Annotated[int, Field(ge=1)] = 1
    autoscaling: AutoscalingConfig | None = None
    cpus_per_replica: Annotated[float, Field(gt=0.0)] = 1.0
    parallel_forwards: Annotated[int, Field(ge=1)] = 1
    """Batches a replica computes at once, each on ``ceil(cpus_per_replica /
    parallel_forwards)`` threads; what is queued is shared among them. On a CPU a small model
    scales better across forwards than within one: at width 0.125, mouth 96, on 2 cores, two
    1-thread forwards of 2 frames gave 1.2-1.4x the frames/s of one 2-thread forward of 4, and
    a core taken by another process delays one of them, not both. At full width both give the
    same frames/s and 1 keeps a lone window's latency half as long."""
    gpus_per_replica: Annotated[float, Field(ge=0.0)] | None = None
    """Default: 1 with ``device: cuda``, else 0."""
    max_batch_size: Annotated[int, Field(ge=1)] = 8
    batch_wait_timeout_s: Annotated[float, Field(ge=0.0)] = 0.01
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 32
    """Requests a replica holds at once: >= ``max_batch_size``, and a few batches deep, so the
    next batch fills inside the replica while one computes (callers beyond it wait in the
    router, which re-polls a full replica with back-off: at 32 callers and 16 here, batches
    averaged 6.7 of 8 and frames/s halved)."""
    max_queued_requests: Annotated[int, Field(ge=1)] = 64
    """Requests waiting for a replica beyond which callers get 503 + Retry-After."""
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    max_request_bytes: Annotated[int, Field(ge=1024)] = 64 << 20
    """Larger request bodies are refused with 413."""
    max_frames_per_request: Annotated[int, Field(ge=1)] = 250
    """Frames one ``/frames`` call may ask for (10 s at 25 fps)."""
    avatar_dir: str | None = None
    """Where uploaded avatars are stored; default ``$DINET_HOME/serve/avatars``. Shared
    storage on a cluster, so every replica (and a restarted one) finds them."""
    avatar_cache_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    """Per replica: encoded reference features kept in memory (LRU, by bytes)."""
    calibration_shards: str | None = None
    """Shards whose real frames calibrate static int8 (default: the served model's own
    ``data.shards``)."""
    max_avatar_video_frames: Annotated[int, Field(ge=1)] = 1500
    """Longest reference video an avatar may be made from (frames at the model's fps)."""
    max_frames_per_forward: Annotated[int, Field(ge=1)] = 64
    """Frames one forward of a replica may hold: a batch takes callers until it is full by
    count (``max_batch_size``) or by frames, and a longer request is split across forwards.
    A forward's memory grows with its frames: measured ~100 MB per frame at full width, mouth
    160, fp32 on CPU (so 64 frames ~6.4 GB); size it to the model and the replica's memory."""
    max_frame_pixels: Annotated[int, Field(ge=64 * 64)] = 1920 * 1080
    """Largest uploaded image or video frame (width x height), read from the file's header
    and refused before anything is decoded: 1080p is plenty for a face, and a 4K frame holds
    4x the memory of every step after decoding."""
    max_decoded_video_bytes: Annotated[int, Field(ge=1 << 20)] = 1 << 30
    """Width x height x 3 x frames of an uploaded video (avatar or dub), from its header and
    counted while decoding: the RGB frames an avatar holds."""
    max_avatars: Annotated[int, Field(ge=1)] = 200
    """Avatars stored at once; beyond, creating one is refused (429) until some are deleted."""
    max_dub_audio_s: Positive = 600.0
    """Longest speech a dub job takes (from the file's header, and counted while decoding)."""
    max_concurrent_dubs: Annotated[int, Field(ge=1)] = 1
    """Dub jobs one replica renders at once (beside its live traffic, which goes first)."""
    max_queued_dubs: Annotated[int, Field(ge=0)] = 4
    """Dub jobs a replica holds waiting; beyond, ``POST /v1/dub`` answers 503 + Retry-After."""
    max_dub_jobs: Annotated[int, Field(ge=1)] = 100
    """Dub jobs stored (any state) before new ones are refused (429) until some expire or are
    deleted."""
    dub_batch_frames: Annotated[int, Field(ge=1)] = 8
    """Frames per chunk of a dub job: a live window waits for at most one chunk."""
    dub_job_ttl_s: Positive = 24 * 3600.0
    """Finished dub jobs (and their mp4) are deleted this long after they finished."""
    dub_heartbeat_timeout_s: Annotated[float, Field(ge=10.0)] = 60.0
    """A queued or running job whose replica has been silent this long reads as failed."""
    upload_workers: Annotated[int, Field(ge=1)] = 2
    """Threads of the ingress that decode uploads (avatars, dub inputs), apart from the
    threads that encode live replies."""
    max_pending_uploads: Annotated[int, Field(ge=1)] = 8
    """Uploads being decoded or waiting to be; beyond, 503 + Retry-After."""
    watch_alias_s: Annotated[float, Field(ge=0.0)] = 0.0
    """Every replica re-resolves the alias this often and swaps when it moved (0: only on
    re-deploy or ``POST /v1/admin/reload``)."""
    retry_after_s: Annotated[int, Field(ge=1)] = 1
    stream: StreamConfig = StreamConfig()
    """Live WebSocket sessions (see :class:`StreamConfig`)."""

    @model_validator(mode="after")
    def _batch_fits_in_flight(self) -> ServingConfig:
        # A Serve batch never grows past max_ongoing_requests.
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        half = self.precision in ("fp16", "bf16")
        if half and self.device != "cuda":
            raise ValueError(f"precision {self.precision!r} needs device 'cuda' (use int8 or "
                             "fp32 on CPU)")
        return self

    @property
    def forward_threads(self) -> int:
        """Torch threads of one forward: the replica's CPUs shared among its
        ``parallel_forwards``."""
        return max(1, math.ceil(self.cpus_per_replica / self.parallel_forwards))

    @property
    def replica_gpus(self) -> float:
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1.0 if self.device == "cuda" else 0.0
